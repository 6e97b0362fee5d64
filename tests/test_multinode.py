"""Multi-node training (job.nodes > 1) through the real program under the mock engine: one cache
claim per worker, launch env, one zone, both engines, the queue label, the policy pack, mlcache diff
and mlcache verify's run report."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest

from mlcache.cluster.diagnosis import FAIL, OK, Expectation, RunExpectation
from mlcache.cluster.workers import WorkerLocation, diagnose_run
from mlcache.preview.diff import DATA_LOSS, plan, report
from mlcache.preview.mock_engine import ProgramRun, run_program
from mlcache.preview.render import as_json, documents
from mlcache.preview.stack_config import load_stack_config
from mlcache.preview.validate import validation_errors
from mlcache.program.names import MULTINODE_RUN_LABEL, WORKER_LABEL
from mlcache.program.settings import ConfigError
from tests.conftest import env_of, rendered
from tests.test_policy import stack_args, violations

RUN = "sft-qwen3vl-fire-4gpu"
JOBSET = "kubernetes:jobset.x-k8s.io/v1alpha2:JobSet"

import policies  # noqa: E402  (tests.test_policy put policy/ on sys.path)


def workers(run) -> list[dict]:
    """Each worker's pod template, by worker index, whichever engine."""
    jobsets = [r for r in run.kubernetes_objects() if r.type == JOBSET]
    if jobsets:
        return [j["template"]["spec"]["template"] for j in jobsets[0].inputs["spec"]["replicatedJobs"]]
    jobs = [r for r in run.find("Job") if r.inputs["spec"]["template"]["metadata"]["labels"].get("app") == "ms-swift"]
    return [j.inputs["spec"]["template"] for j in sorted(jobs, key=lambda j: j.object_name)]


def claim_of(template: dict) -> str:
    return next(v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v)


def sft_env(template: dict) -> dict[str, str]:
    return env_of(next(c for c in template["spec"]["containers"] if c["name"] == "sft"))


# --- one node: nothing changes


def test_one_node_has_no_worker_objects(stack):
    run = rendered(stack)
    assert run.find("Service") == [] and [r for r in run.kubernetes_objects() if r.type == JOBSET] == []
    assert len(run.find("PersistentVolumeClaim")) == 1
    assert MULTINODE_RUN_LABEL not in run.find("Job")[0].inputs["spec"]["template"]["metadata"]["labels"]
    assert run.outputs["run"]["nodes"] == 1 and run.outputs["run"]["cacheClaims"] == ["ms-swift-cache-pvc"]


# --- the caches


def test_one_claim_per_worker_named_from_the_cache_name_with_the_single_cache_options():
    run = rendered("prod", "job.nodes=3")
    pvcs = sorted(run.find("PersistentVolumeClaim"), key=lambda r: r.object_name)
    assert [p.object_name for p in pvcs] == ["ms-swift-cache-pvc", "ms-swift-cache-pvc-1", "ms-swift-cache-pvc-2"]
    (storage_class,) = run.find("StorageClass")
    for index, pvc in enumerate(pvcs):
        assert pvc.inputs["metadata"]["labels"][WORKER_LABEL] == str(index)
        assert pvc.inputs["spec"]["resources"] == {"requests": {"storage": "500Gi"}}
        assert pvc.protect is True, "prod protects every worker's cache"
        assert pvc.delete_before_replace and pvc.replace_on_changes == ["spec.volumeMode"]
        # The class as a plain dependency, never through its outputs (no cascade into a replace).
        assert storage_class.urn in pvc.dependencies
        assert all(storage_class.urn not in deps for deps in pvc.property_dependencies.values())
    assert run.outputs["run"]["cacheClaims"] == [p.object_name for p in pvcs]


def test_claims_do_not_depend_on_the_run_id():
    first, second = rendered("dev", "job.nodes=2"), rendered("dev", "job.nodes=2", "job.runId=r2")
    names = {r.object_name for r in first.find("PersistentVolumeClaim")}
    assert names == {r.object_name for r in second.find("PersistentVolumeClaim")}


def test_raising_nodes_keeps_worker_zeros_cache_resource():
    one, two = rendered("prod"), rendered("prod", "job.nodes=2")
    assert one.find("PersistentVolumeClaim")[0].urn in {r.urn for r in two.find("PersistentVolumeClaim")}


# --- the workers (engine jobs)


@pytest.mark.parametrize("nodes", [2, 3])
def test_each_worker_mounts_its_own_claim_with_the_static_launch_env(nodes):
    run = rendered("dev", f"job.nodes={nodes}", "job.gpus=8")
    templates = workers(run)
    assert [claim_of(t) for t in templates] == run.outputs["run"]["cacheClaims"]
    assert len(set(run.outputs["run"]["cacheClaims"])) == nodes
    for index, template in enumerate(templates):
        env = sft_env(template)
        assert env["NNODES"] == str(nodes) and env["NODE_RANK"] == str(index)
        assert env["MASTER_ADDR"] == f"{RUN}-worker-0.{RUN}" and env["MASTER_PORT"] == "29500"
        assert env["NPROC_PER_NODE"] == "8"
        assert (template["spec"]["hostname"], template["spec"]["subdomain"]) == (f"{RUN}-worker-{index}", RUN)
        assert template["metadata"]["labels"][WORKER_LABEL] == str(index)


def test_the_headless_service_resolves_the_training_workers_before_they_are_ready():
    run = rendered("dev", "job.nodes=2")
    (service,) = run.find("Service")
    assert service.object_name == RUN
    assert service.inputs["spec"]["clusterIP"] == "None" and service.inputs["spec"]["publishNotReadyAddresses"] is True
    for template in workers(run):
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service.inputs["spec"]["selector"].items())


def test_worker_jobs_fail_at_the_first_failed_pod():
    jobs = rendered("dev", "job.nodes=2").find("Job")
    assert sorted(j.object_name for j in jobs) == [f"{RUN}-worker-0", f"{RUN}-worker-1"]
    assert {j.inputs["spec"]["backoffLimit"] for j in jobs} == {0}


def test_unpinned_workers_share_one_zone_chosen_by_whichever_lands_first():
    for index, template in enumerate(workers(rendered("dev", "job.nodes=3"))):
        affinity = template["spec"]["affinity"]
        (zone,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert zone["topologyKey"] == "topology.kubernetes.io/zone"
        assert zone["labelSelector"] == {"matchLabels": {MULTINODE_RUN_LABEL: RUN}}
        (host,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert host["topologyKey"] == "kubernetes.io/hostname"
        assert host["labelSelector"]["matchExpressions"][0]["values"] == [str(index)]


def test_pinned_workers_carry_the_zone_node_affinity_and_one_node_each():
    for template in workers(rendered("prod", "job.nodes=2")):
        affinity = template["spec"]["affinity"]
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["ucsd"]} in terms[0]["matchExpressions"]
        assert "podAffinity" not in affinity and "podAntiAffinity" in affinity


def test_workers_reach_each_other_and_nothing_else_does():
    run = rendered("dev", "job.nodes=2")
    peers = next(p for p in run.find("NetworkPolicy") if p.object_name == "mlcache-workers").inputs["spec"]
    workers_only = {"matchExpressions": [{"key": MULTINODE_RUN_LABEL, "operator": "Exists"}]}
    assert peers["podSelector"] == workers_only and peers["ingress"] == [{"from": [{"podSelector": workers_only}]}]
    assert any(p.object_name == "mlcache-deny-ingress" for p in run.find("NetworkPolicy"))


def test_warm_up_and_run_once_marker_work_per_worker_on_its_own_cache():
    run = rendered("dev", "job.nodes=2", 'cache.prefetch=["Qwen/Qwen3-VL-8B-Instruct"]')
    for template in workers(run):
        (init,) = template["spec"]["initContainers"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert mounts["cache"] == "/cache"
        assert sft_env(template)["MLCACHE_RUN_MARKER"].startswith("/cache/.mlcache/runs/")
    # A run on two nodes is another run than on one: another marker.
    assert rendered("dev").outputs["runMarker"] != run.outputs["runMarker"]


def test_every_worker_has_its_own_benchmark_placed_as_that_worker():
    run = rendered("dev", "job.nodes=2", "benchmark.enabled=true", "benchmark.fioImage=fio:3.38")
    benches = sorted(
        (r for r in run.find("Job") if r.inputs["metadata"]["labels"].get("app") == "mlcache-benchmark"),
        key=lambda r: r.object_name,
    )
    assert [b.object_name for b in benches] == [f"{RUN}-storage-bench", f"{RUN}-storage-bench-1"]
    for index, bench in enumerate(benches):
        template = bench.inputs["spec"]["template"]
        assert claim_of(template) == run.outputs["run"]["cacheClaims"][index]
        assert template["metadata"]["labels"][WORKER_LABEL] == str(index)
        assert "podAffinity" in template["spec"]["affinity"]


# --- engine jobset


def test_jobset_engine_is_one_jobset_with_one_single_replica_job_per_worker():
    run = rendered("prod", "job.nodes=3", "job.engine=jobset")
    (jobset,) = [r for r in run.kubernetes_objects() if r.type == JOBSET]
    assert run.find("Job") == [] and run.find("Service") == [], "JobSet makes the Jobs and the headless Service"
    spec = jobset.inputs["spec"]
    assert [r["replicas"] for r in spec["replicatedJobs"]] == [1, 1, 1]
    assert spec["failurePolicy"] == {"maxRestarts": 2} and spec["successPolicy"] == {"operator": "All"}
    assert spec["network"]["publishNotReadyAddresses"] is True
    templates = workers(run)
    assert [claim_of(t) for t in templates] == ["ms-swift-cache-pvc", "ms-swift-cache-pvc-1", "ms-swift-cache-pvc-2"]
    assert sft_env(templates[2])["MASTER_ADDR"] == f"{RUN}-worker-0-0-0.{RUN}"
    assert "hostname" not in templates[0]["spec"]
    # JobSet refuses most spec updates: a changed run is replaced, never patched.
    assert jobset.replace_on_changes == ["spec"] and jobset.delete_before_replace
    assert jobset.inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}


def test_jobset_engine_waits_for_completed_when_asked():
    run = rendered("prod", "job.nodes=2", "job.engine=jobset", "job.waitForCompletion=true")
    (jobset,) = [r for r in run.kubernetes_objects() if r.type == JOBSET]
    assert jobset.inputs["metadata"]["annotations"] == {"pulumi.com/waitFor": "condition=Completed"}


def test_jobset_pod_templates_are_valid_jobs_for_kubernetes():
    objects = documents(rendered("prod", "job.nodes=2", "job.engine=jobset"))
    assert validation_errors(objects) == []
    assert any(d["kind"] == "JobSet" for d in objects)


# --- Kueue


@pytest.mark.parametrize(("engine", "kinds"), [("jobs", {"Job"}), ("jobset", {"JobSet"})])
def test_queue_label_goes_on_what_kueue_admits(engine, kinds):
    run = rendered("dev", "job.nodes=2", f"job.engine={engine}", "job.queue=team-a")
    labelled = {
        r.kind for r in run.kubernetes_objects() if r.inputs["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name")
    }
    assert labelled == kinds
    assert all("kueue.x-k8s.io/queue-name" not in t["metadata"]["labels"] for t in workers(run))


def test_no_queue_label_by_default():
    run = rendered("dev", "job.nodes=2")
    assert all("kueue.x-k8s.io/queue-name" not in r.inputs["metadata"].get("labels", {}) for r in run.kubernetes_objects())


# --- policy pack


@pytest.mark.parametrize(("stack", "engine"), [("dev", "jobs"), ("prod", "jobs"), ("dev", "jobset"), ("prod", "jobset")])
def test_policies_pass_on_multinode_runs(stack, engine):
    args = stack_args(rendered(stack, "job.nodes=3", f"job.engine={engine}"))
    assert violations(policies.validate_workers_in_one_zone, args) == []
    assert violations(policies.validate_one_claim_per_worker, args) == []
    assert violations(policies.validate_zone_matches_storage, args) == []


def _worker_template(kind: str, props: dict, index: str) -> dict | None:
    if kind == "Job" and props["spec"]["template"]["metadata"]["labels"].get(WORKER_LABEL) == index:
        return props["spec"]["template"]
    return None


def test_policy_flags_a_worker_let_out_of_the_zone():
    def edit(kind, props):
        template = _worker_template(kind, props, "1")
        if template is not None:
            del template["spec"]["affinity"]["podAffinity"]

    found = violations(policies.validate_workers_in_one_zone, stack_args(rendered("dev", "job.nodes=2"), edit))
    assert len(found) == 1 and "workers 1 carry no required pod affinity" in found[0][0]


def test_policy_flags_pinned_workers_in_two_zones():
    def edit(kind, props):
        template = _worker_template(kind, props, "1")
        if template is not None:
            terms = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = ["sdsu"]

    found = violations(policies.validate_workers_in_one_zone, stack_args(rendered("prod", "job.nodes=2"), edit))
    assert len(found) == 1 and "sdsu" in found[0][0] and "ucsd" in found[0][0]


def test_policy_flags_two_workers_on_one_claim():
    def edit(kind, props):
        template = _worker_template(kind, props, "1")
        if template is not None:
            claim = next(v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v)
            claim["persistentVolumeClaim"]["claimName"] = "ms-swift-cache-pvc"

    found = violations(policies.validate_one_claim_per_worker, stack_args(rendered("dev", "job.nodes=2"), edit))
    assert len(found) == 1 and "both mount claim ms-swift-cache-pvc" in found[0][0]


# --- mlcache diff


def _plan(base: tuple[str, ...], head: tuple[str, ...], stack: str = "dev"):
    return plan(as_json(rendered(stack, *base)), as_json(rendered(stack, *head)))


def test_lowering_nodes_deletes_caches_data_loss_named_per_worker():
    changes = _plan(("job.nodes=3",), ("job.nodes=1",))
    deleted = {c.label: c for c in changes if c.action == "delete" and c.label.startswith("PersistentVolumeClaim")}
    assert set(deleted) == {"PersistentVolumeClaim/ms-swift-cache-pvc-1", "PersistentVolumeClaim/ms-swift-cache-pvc-2"}
    for index, label in enumerate(sorted(deleted), 1):
        assert deleted[label].data_loss
        assert f"worker {index}'s cache" in deleted[label].warnings[0] and deleted[label].warnings[0].startswith(DATA_LOSS)
    kept = next(c for c in changes if c.label == "PersistentVolumeClaim/ms-swift-cache-pvc")
    assert kept.action == "update" and not kept.data_loss


def test_raising_nodes_adds_empty_caches_said_not_flagged():
    changes = _plan((), ("job.nodes=2",))
    created = next(c for c in changes if c.label == "PersistentVolumeClaim/ms-swift-cache-pvc-1")
    assert created.action == "create" and not created.data_loss and created.warnings == []
    assert created.notes == ["a new, empty cache for worker 1: its first run downloads the models again"]
    assert not any(c.data_loss for c in changes)
    assert "-- a new, empty cache for worker 1" in report("dev", changes)


# --- mlcache verify: the run report (pure, on API-shaped objects)


def _node(name: str, zone: str, gpus: int = 8, product: str = "NVIDIA-A100-SXM4-80GB") -> dict:
    labels = {"topology.kubernetes.io/zone": zone, "kubernetes.io/hostname": name, "nvidia.com/gpu.product": product}
    return {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}


def _busy(node: str, gpus: int) -> dict:
    container = {"resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}
    return {
        "metadata": {"name": f"other-{node}", "labels": {}},
        "spec": {"nodeName": node, "containers": [container]},
        "status": {},
    }


def _expect(zone: str | None, nodes: int = 2) -> Expectation:
    claims = tuple(["cache"] + [f"cache-{i}" for i in range(1, nodes)])
    run = RunExpectation(name=RUN, claims=claims, gpu_product="NVIDIA-A100-SXM4-80GB", gpu_resource="nvidia.com/gpu", gpus=4)
    return Expectation(pvc="cache", namespace="ml", storage_class="c", backend="linstor", zone=zone, job=None, run=run)


def _placed(worker: int, node: str, zone: str) -> WorkerLocation:
    return WorkerLocation(worker, f"cache-{worker}", f"pod-{worker}", node, zone, (node,), (zone,), None)


def test_run_report_all_workers_with_their_caches_in_one_zone():
    findings = diagnose_run([_placed(0, "a1", "ucsd"), _placed(1, "a2", "ucsd")], _expect(None), {}, [])
    assert [f.level for f in findings] == [OK, OK, OK]
    assert findings[-1].message == "all 2 workers and their caches in zone ucsd"


def test_run_report_flags_workers_in_two_zones_and_two_workers_on_one_node():
    spread = diagnose_run([_placed(0, "a1", "ucsd"), _placed(1, "b1", "sdsu")], _expect(None), {}, [])
    assert any(f.level == FAIL and f.check == "one zone" and "sdsu, ucsd" in f.message for f in spread)
    shared = diagnose_run([_placed(0, "a1", "ucsd"), _placed(1, "a1", "ucsd")], _expect(None), {}, [])
    assert any(f.level == FAIL and f.check == "one node per worker" for f in shared)


def test_run_report_says_why_a_worker_is_pending_and_that_another_zone_would_fit():
    nodes = {
        n["metadata"]["name"]: n for n in (_node("a1", "ucsd"), _node("a2", "ucsd"), _node("b1", "sdsu"), _node("b2", "sdsu"))
    }
    pending = WorkerLocation(1, "cache-1", "pod-1", None, None, (), (), "0/4 nodes are available: ...")
    findings = diagnose_run([_placed(0, "a1", "ucsd"), pending], _expect(None), nodes, [_busy("a2", 8)])
    (capacity,) = [f for f in findings if f.check == "capacity"]
    assert capacity.level == FAIL
    assert "1 of 2 workers Pending: zone ucsd has 1 node(s) where a worker fits" in capacity.message
    assert "another zone would fit: sdsu (2 free nodes)" in capacity.remedy
    assert "delete cache-0 (DATA LOSS)" in capacity.remedy
    assert any(f.check == "worker 1" and f.level == FAIL and "0/4 nodes are available" in f.message for f in findings)


def test_run_report_pinned_says_to_free_nodes_or_pin_a_zone_with_room():
    nodes = {n["metadata"]["name"]: n for n in (_node("a1", "ucsd"), _node("b1", "sdsu"), _node("b2", "sdsu"))}
    pending = WorkerLocation(1, "cache-1", "pod-1", None, None, (), (), "0/3 nodes are available")
    findings = diagnose_run([_placed(0, "a1", "ucsd"), pending], _expect("ucsd"), nodes, [])
    (capacity,) = [f for f in findings if f.check == "capacity"]
    assert capacity.remedy == (
        "free NVIDIA-A100-SXM4-80GB nodes in ucsd, or lower job.nodes, or pin a zone with room for all 2: sdsu (2 free nodes)"
    )


# --- engine jobs: a failed worker ends the others (the wrapper, run for real with /bin/sh)


def _run_worker(template: dict, tmp_path, trainer_exit: int):
    """The worker's rendered wrapper with its env, the trainer replaced by `exit N` and python3
    by a recorder of its arguments and script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "python3"
    # Only the peer stop reads its script from stdin (python3 - JOB...); the prewarm is left alone.
    recorder.write_text(f'#!/bin/sh\n[ "$1" = - ] || exit 0\necho "$@" > {tmp_path}/argv\ncat > {tmp_path}/script\n')
    recorder.chmod(0o755)
    container = next(c for c in template["spec"]["containers"] if c["name"] == "sft")
    env = {
        **os.environ,
        **{k: v for k, v in sft_env(template).items() if v is not None},
        "MLCACHE_RUN_MARKER": str(tmp_path / "marker"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    command = [*container["command"][:4], "sh", "-c", f"exit {trainer_exit}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def test_a_failed_worker_ends_the_other_workers_jobs(tmp_path):
    template = workers(rendered("dev", "job.nodes=3"))[1]
    result = _run_worker(template, tmp_path, trainer_exit=3)
    assert result.returncode == 3, "the worker still fails with its trainer's status"
    assert (tmp_path / "argv").read_text().split() == ["-", f"{RUN}-worker-0", f"{RUN}-worker-2"]
    script = (tmp_path / "script").read_text()
    assert '{"spec": {"activeDeadlineSeconds": 1}}' in script and "application/merge-patch+json" in script
    assert "ending the run's other workers" in result.stdout


def test_a_worker_that_succeeds_ends_nobody(tmp_path):
    template = workers(rendered("dev", "job.nodes=2"))[0]
    result = _run_worker(template, tmp_path, trainer_exit=0)
    assert result.returncode == 0 and not (tmp_path / "argv").exists()


def test_the_workers_may_patch_exactly_their_runs_jobs_and_nothing_else():
    run = rendered("prod", "job.nodes=3")
    (role,) = run.find("Role")
    (rule,) = role.inputs["rules"]
    assert rule == {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "resourceNames": [f"{RUN}-worker-{i}" for i in range(3)],
        "verbs": ["get", "patch"],
    }
    (binding,) = run.find("RoleBinding")
    assert binding.inputs["subjects"] == [{"kind": "ServiceAccount", "name": f"{RUN}-workers", "namespace": "ml-training"}]
    (account,) = run.find("ServiceAccount")
    assert account.inputs["automountServiceAccountToken"] is False
    for template in workers(run):
        assert template["spec"]["serviceAccountName"] == f"{RUN}-workers"
        assert template["spec"]["automountServiceAccountToken"] is True


def test_jobset_workers_have_no_api_access_jobset_restarts_them():
    run = rendered("prod", "job.nodes=2", "job.engine=jobset")
    assert run.find("Role") == [] and run.find("ServiceAccount") == []
    for template in workers(run):
        assert template["spec"]["automountServiceAccountToken"] is False
        assert "MLCACHE_PEER_JOBS" not in sft_env(template)


# --- settings


@pytest.mark.parametrize(
    ("job", "key", "says"),
    [
        # A Service name (engine jobs) and JobSet's names must start with a letter.
        ({"nodes": 2, "name": "1st-run"}, "job.name", "a run name starting with a letter"),
        ({"nodes": 3, "name": "x" * 55}, "job.name", f"the longest, {'x' * 55}-worker-2, has 64"),
        ({"nodes": 2, "engine": "jobset", "name": "x" * 45}, "job.name", "-worker-1-0-0-abcde, has 64"),
        ({"nodes": 2, "engine": "jobset", "name": "sft", "runId": "r" * 41}, "job.runId", "fit 63 characters"),
        ({"nodes": 2, "env": {"NODE_RANK": "1"}}, "job.env.NODE_RANK", "a name mlcache does not set itself"),
    ],
)
def test_names_kubernetes_would_refuse_are_refused_up_front(job, key, says):
    from mlcache.program.settings import ConfigError, parse_settings  # noqa: PLC0415

    with pytest.raises(ConfigError) as err:
        parse_settings({"job": job})
    assert err.value.key == f"mlcache:{key}" and says in str(err.value)


def test_the_longest_names_that_fit_are_accepted():
    from mlcache.program.settings import parse_settings  # noqa: PLC0415

    assert parse_settings({"job": {"nodes": 3, "name": "x" * 54}}).job.nodes == 3
    assert parse_settings({"job": {"nodes": 2, "engine": "jobset", "name": "x" * 44}}).job.engine == "jobset"


# --- mlcache rehearse: the placement report of a multi-node run (recorded API objects)


def _rehearse_view(placed: dict[int, str | None]):
    """Two workers (sdsu has two A100 nodes in the test fleet); `placed` maps a worker to its node."""
    from tests import test_rehearse as r  # noqa: PLC0415

    pods, claims, volumes = [], [], []
    for worker, node_name in placed.items():
        claim_name = "ms-swift-cache-pvc" if worker == 0 else f"ms-swift-cache-pvc-{worker}"
        p = r.pod(
            f"{RUN}-worker-{worker}-abc",
            node_name,
            job=f"{RUN}-worker-{worker}",
            zone=None,
            claim=claim_name,
            unschedulable=None if node_name else "0/5 nodes are available: 1 node(s) didn't match pod anti-affinity rules",
        )
        p["metadata"]["labels"].update({"mlcache/job": RUN, WORKER_LABEL: str(worker), MULTINODE_RUN_LABEL: RUN})
        pods.append(p)
        c = r.claim("Bound" if node_name else "Pending", volume=f"pv-{worker}" if node_name else None)
        c["metadata"]["name"] = claim_name
        claims.append(c)
        if node_name:
            volumes.append(r.volume(node_name, name=f"pv-{worker}"))
    return r.view(pods, claims, volumes)


def _run_expect(zone: str | None = None) -> Expectation:
    run = RunExpectation(
        name=RUN,
        claims=("ms-swift-cache-pvc", "ms-swift-cache-pvc-1"),
        gpu_product="NVIDIA-A100-SXM4-80GB",
        gpu_resource="nvidia.com/gpu",
        gpus=4,
        jobs=(f"{RUN}-worker-0", f"{RUN}-worker-1"),
    )
    return Expectation("ms-swift-cache-pvc", "ml-training", "linstor-fast-cache", "linstor", zone, f"{RUN}-worker-0", run)


def test_rehearse_reports_every_worker_with_its_cache_and_one_zone():
    from mlcache.rehearsal.report import build_report, render_report  # noqa: PLC0415

    report = build_report(_rehearse_view({0: "a100-sdsu-1", 1: "a100-sdsu-2"}), _run_expect(), "dev")
    assert [p.role for p in report.pods] == ["worker 0", "worker 1"]
    assert all(p.with_cache for p in report.pods) and report.exit_code == 0, report.problems
    text = render_report(report)
    assert f"worker 0: {RUN}-worker-0-abc on a100-sdsu-1 (zone sdsu); cache ms-swift-cache-pvc on a100-sdsu-1: with it" in text
    assert f"worker 1: {RUN}-worker-1-abc on a100-sdsu-2 (zone sdsu); cache ms-swift-cache-pvc-1 on a100-sdsu-2: with it" in text
    assert "All workers in one zone: yes (sdsu), each on its own node with its cache" in text
    assert "claim ml-training/ms-swift-cache-pvc-1: Bound -> pv-1" in text


def test_rehearse_reports_a_pending_worker_with_the_schedulers_reason_and_fails():
    from mlcache.rehearsal.report import build_report, render_report  # noqa: PLC0415

    report = build_report(_rehearse_view({0: "a100-ucsd-1", 1: None}), _run_expect(), "dev")
    assert report.exit_code == 1
    text = render_report(report)
    assert "worker 1: " in text and "not placed (0/5 nodes are available: 1 node(s) didn't match pod anti-affinity rules)" in text
    assert "All workers in one zone: not yet (1 not placed)" in text
    # ucsd has one A100 node; sdsu has two: the run report says another zone would fit.
    assert "another zone would fit: sdsu (2 free nodes)" in text
    # ... and so does the Problems section, for the worker the run's own affinity holds back
    # (the scheduler's reason has no fix of its own: it said `kubectl describe pod`).
    (problem,) = [p for p in report.problems if "worker-1" in p.subject]
    assert "another zone would fit: sdsu (2 free nodes)" in problem.fix and "kubectl describe pod" not in problem.fix


def test_an_unpinned_multinode_run_warns_that_its_first_worker_chooses_the_zone():
    (warning,) = [w for w in rendered("dev", "job.nodes=3").warnings if "chooses the zone" in w]
    assert "fewer than 3 free NVIDIA-A100-SXM4-80GB nodes" in warning and "Pin mlcache:zone" in warning
    assert not [w for w in rendered("prod", "job.nodes=3").warnings if "chooses the zone" in w]


@pytest.mark.parametrize("engine", ["jobs", "jobset"])
def test_a_secret_under_job_stays_secret_in_every_worker_object(engine):
    from mlcache.preview import render  # noqa: PLC0415
    from tests.test_secrets import assert_kept_secret  # noqa: PLC0415

    run, _ = render.render("dev", ["job.nodes=2", f"job.engine={engine}"], ["job.image=example.org/hidden77/sft:1.0"])
    assert_kept_secret(run, "hidden77")
    # Only a secret value is hidden in the warnings: the counts under the secret key stay readable.
    assert any("fewer than 2 free NVIDIA-A100-SXM4-80GB nodes" in w for w in run.warnings)


@pytest.mark.parametrize("engine", ["jobs", "jobset"])
def test_the_verify_commands_of_a_run_cover_every_workers_claim_and_select_every_training_pod(engine):
    """`pulumi stack output verifyCommands` of a multi-node run: each check names every worker's
    claim, and the pod checks select by a label every training pod carries (a JobSet's pods carry
    job-name of the child Jobs, not the JobSet's name)."""
    run = rendered("prod", "job.nodes=3", f"job.engine={engine}")
    commands = run.outputs["verifyCommands"]
    claims = run.outputs["run"]["cacheClaims"]
    assert len(claims) == 3
    for key in ("pvcBinding", "pvcUsage", "pvNodeAffinity", "linstorResources"):
        assert all(claim in commands[key].split() or f"{claim} " in commands[key] for claim in claims), key
    label, value = commands["podNode"].split(" -l ")[1].split()[0].split("=")
    templates = []
    for obj in documents(run):
        if obj["kind"] == "JobSet":
            templates += [r["template"]["spec"]["template"] for r in obj["spec"]["replicatedJobs"]]
        elif obj["kind"] == "Job" and obj["metadata"]["labels"].get("app") == "ms-swift":
            templates.append(obj["spec"]["template"])
    training = [t for t in templates if WORKER_LABEL in t["metadata"]["labels"] and "fio" not in str(t["spec"]["containers"])]
    assert len(training) == 3 and all(t["metadata"]["labels"].get(label) == value for t in training)
    assert f"-l {label}={value}" in commands["podZone"]
    # No training Job, no pods to check (as with one node).
    idle = rendered("prod", "job.nodes=3", f"job.engine={engine}", "job.enabled=false").outputs["verifyCommands"]
    assert "podNode" not in idle and "podZone" not in idle and claims[2] in idle["pvcBinding"]


@pytest.mark.parametrize("nodes", [2, 12])
def test_a_cache_name_that_leaves_no_room_for_the_workers_claims_is_refused_before_anything_is_registered(nodes):
    """Each worker's claim is cache.name-N: the last must fit a name the API server takes (253)."""
    suffix = len(f"-{nodes - 1}")
    fits = "c" * (253 - suffix)
    assert rendered("dev", f"cache.name={fits}", f"job.nodes={nodes}").outputs["run"]["cacheClaims"][-1] == f"{fits}-{nodes - 1}"
    longer = fits + "c"
    run = ProgramRun()
    with pytest.raises(ConfigError) as refused:
        run_program(load_stack_config("dev", [f"cache.name={longer}", f"job.nodes={nodes}"]).engine_config(), [], "dev", run)
    assert refused.value.key == "mlcache:cache.name" and refused.value.value == longer
    assert f"at most {253 - suffix} characters with job.nodes {nodes} (each worker's claim" in str(refused.value)
    assert run.registrations == []


def test_a_worker_cache_on_network_storage_is_said_to_be_reachable_from_any_node_not_on_no_node_yet():
    """Rook-Ceph: a bound volume with no node affinity is on no particular node (the rehearsal's
    Workers section and verify's run report said "on no node yet")."""
    from mlcache.cluster.diagnosis import Snapshot  # noqa: PLC0415
    from mlcache.cluster.workers import worker_location  # noqa: PLC0415

    node = {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "ucsd"}}}
    pod = {"metadata": {"name": "w1"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    bound = Snapshot(
        pvc={"spec": {"volumeName": "pv-1"}}, pv={"metadata": {"name": "pv-1"}, "spec": {}}, pods=[pod], nodes={"n1": node}
    )
    assert worker_location(1, "cache-1", bound).cache_text() == "cache cache-1 on any node (network storage)"
    unbound = Snapshot(pvc={"spec": {}}, pods=[pod], nodes={"n1": node})
    assert worker_location(1, "cache-1", unbound).cache_text() == "cache cache-1 on no node yet"


def test_a_lost_worker_node_is_flagged_and_its_remedy_is_one_heal_can_carry_out():
    """mlcache heal re-creates worker 0's claim only: a lost worker 1 is told the steps for its own
    claim, never a heal that refuses; and its pod on the dead node is no longer `ok`."""
    from mlcache.cluster.diagnosis import Snapshot, node_loss_finding  # noqa: PLC0415

    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    dead = {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "t"}]}}
    nodes = {"a1": {"metadata": {"name": "a1"}, **ready}, "a2": {"metadata": {"name": "a2"}, **dead}}
    findings = diagnose_run([_placed(0, "a1", "ucsd"), _placed(1, "a2", "ucsd")], _expect(None), nodes, [])
    (flagged,) = [f for f in findings if f.check == "worker 1"]
    assert flagged.level == FAIL and "a2 (zone ucsd), which is not Ready" in flagged.message
    expect = dataclasses.replace(_expect(None), stack="prod")
    pv = {"metadata": {"name": "pv-1"}}
    worker_1 = node_loss_finding(Snapshot(pvc={}, pv=pv), dataclasses.replace(expect, pvc="cache-1"), ("a2", "gone"))
    assert "mlcache heal" not in worker_1.remedy.replace("mlcache heal re-creates worker 0's claim only", "")
    assert "`kubectl delete pvc -n ml cache-1`, then `pulumi up --refresh --stack prod`" in worker_1.remedy
    worker_0 = node_loss_finding(Snapshot(pvc={}, pv=pv), expect, ("a1", "gone"))
    assert "`mlcache heal --stack prod`" in worker_0.remedy
