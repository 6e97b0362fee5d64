"""mlcache rehearse's decisions as pure functions (mlcache.rehearsal.report, mlcache verify's reasons) on API
objects shaped as the API server returns them, and its usage and set-up errors. What the
scheduler really does with a stack is tests/integration/test_placement.py's job."""

from __future__ import annotations

import stat
import subprocess
import tempfile
from datetime import datetime, timedelta

import pytest
from kubernetes import client

from mlcache.cli import rehearse as rehearse_command
from mlcache.cluster.diagnosis import FAIL, Expectation, diagnose
from mlcache.preview.stack_config import load_stack_config
from mlcache.rehearsal import cluster as rehearse
from mlcache.rehearsal.report import (
    ClusterView,
    build_report,
    latest_verdicts,
    render_report,
    still_moving,
    storage_rechecks,
)
from tests.conftest import ROOT

API = client.ApiClient()
NS = "ml-training"
A100 = "NVIDIA-A100-SXM4-80GB"
EXPECT = Expectation("ms-swift-cache-pvc", NS, "linstor-fast-cache", "linstor", "ucsd", "sft-qwen3vl-fire-4gpu")
DEV = Expectation("ms-swift-cache-pvc", NS, "linstor-fast-cache", "linstor", None, "sft-qwen3vl-fire-4gpu")
# As kube-scheduler 1.34 words it in the rehearsal cluster (older releases: "volume node affinity conflict").
SCHEDULER_CONFLICT = (
    "0/4 nodes are available: 2 node(s) didn't match PersistentVolume's node affinity, 2 node(s) didn't match Pod's node "
    "affinity/selector. no new claims to deallocate, preemption: 0/4 nodes are available: 4 Preemption is not helpful for "
    "scheduling."
)
SCHEDULER_NO_GPUS = (
    "0/5 nodes are available: 1 Insufficient nvidia.com/gpu, 4 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/5 nodes are available: 1 No preemption victims found for incoming pod."
)


def as_api(obj) -> dict:
    return API.sanitize_for_serialization(obj)


def node(name: str, zone: str, product: str | None = None, gpus: int = 0) -> dict:
    labels = {"kubernetes.io/hostname": name, "linbit.com/hostname": name, "topology.kubernetes.io/zone": zone}
    allocatable = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    if product:
        labels["nvidia.com/gpu.product"] = product
        allocatable["nvidia.com/gpu"] = str(gpus)
    return as_api(
        client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels), status=client.V1NodeStatus(allocatable=allocatable))
    )


FLEET = {
    n["metadata"]["name"]: n
    for n in (
        node("a100-ucsd-1", "ucsd", A100, 4),
        node("a100-sdsu-1", "sdsu", A100, 8),
        node("a100-sdsu-2", "sdsu", A100, 8),
        node("cpu-ucsd-1", "ucsd"),
        node("l40-chico-1", "chico", "NVIDIA-L40", 4),
    )
}


def affinity(product: str | None, zone: str | None):
    expressions = []
    if zone:
        expressions.append(client.V1NodeSelectorRequirement(key="topology.kubernetes.io/zone", operator="In", values=[zone]))
    if product:
        expressions.append(client.V1NodeSelectorRequirement(key="nvidia.com/gpu.product", operator="In", values=[product]))
    if not expressions:
        return None
    term = client.V1NodeSelectorTerm(match_expressions=expressions)
    return client.V1Affinity(
        node_affinity=client.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=client.V1NodeSelector(node_selector_terms=[term])
        )
    )


def pod(
    name: str,
    node_name: str | None = None,
    *,
    job: str | None = "sft-qwen3vl-fire-4gpu",
    gpus: int = 4,
    zone: str | None = "ucsd",
    claim: str | None = "ms-swift-cache-pvc",
    phase: str | None = None,
    unschedulable: str | None = None,
    created: str = "2026-11-28T22:00:00Z",
) -> dict:
    requests = {"cpu": "16", "memory": "128Gi"}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
    volumes = None
    if claim:
        source = client.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        volumes = [client.V1Volume(name="cache", persistent_volume_claim=source)]
    conditions = None
    if unschedulable:
        conditions = [client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)]
    return as_api(
        client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=NS,
                uid=f"uid-{name}",
                labels={"job-name": job} if job else {},
                creation_timestamp=created,
            ),
            spec=client.V1PodSpec(
                node_name=node_name,
                affinity=affinity(A100 if gpus else None, zone if gpus else None),
                containers=[
                    client.V1Container(
                        name="main", image="img:1", resources=client.V1ResourceRequirements(requests=requests, limits=requests)
                    )
                ],
                volumes=volumes,
            ),
            status=client.V1PodStatus(
                phase=phase or ("Running" if node_name else "Pending"),
                conditions=conditions,
            ),
        )
    )


def claim(
    phase="Bound", volume: str | None = "pvc-0a1b", selected: str | None = None, storage_class="linstor-fast-cache"
) -> dict:
    annotations = {"volume.kubernetes.io/selected-node": selected} if selected else None
    return as_api(
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="ms-swift-cache-pvc", namespace=NS, uid="uid-claim", annotations=annotations),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name=storage_class,
                volume_name=volume if phase == "Bound" else None,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "500Gi"}),
            ),
            status=client.V1PersistentVolumeClaimStatus(phase=phase),
        )
    )


def volume(*nodes: str, mode: str = "Filesystem", name: str = "pvc-0a1b") -> dict:
    """A PV as linstor-csi writes it with allowRemoteVolumeAccess false: one term per replica node."""
    node_affinity = None
    if nodes:
        terms = [
            client.V1NodeSelectorTerm(
                match_expressions=[client.V1NodeSelectorRequirement(key="linbit.com/hostname", operator="In", values=[n])]
            )
            for n in nodes
        ]
        node_affinity = client.V1VolumeNodeAffinity(required=client.V1NodeSelector(node_selector_terms=terms))
    return as_api(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeSpec(capacity={"storage": "500Gi"}, volume_mode=mode, node_affinity=node_affinity),
        )
    )


def storage_class(name="linstor-fast-cache", mode="WaitForFirstConsumer") -> dict:
    return as_api(client.V1StorageClass(metadata=client.V1ObjectMeta(name=name), provisioner="x", volume_binding_mode=mode))


def event(about: dict, reason: str, message: str, at: str = "2026-11-28T22:00:05Z", kind: str = "Pod") -> dict:
    meta = about["metadata"]
    return as_api(
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{meta['name']}.{reason}", namespace=NS),
            involved_object=client.V1ObjectReference(kind=kind, name=meta["name"], namespace=NS, uid=meta.get("uid")),
            reason=reason,
            message=message,
            last_timestamp=at,
        )
    )


def view(pods=(), claims=(), volumes=(), events=(), classes=None) -> ClusterView:
    classes = classes or [storage_class()]
    return ClusterView(
        nodes=FLEET,
        pods=list(pods),
        claims=list(claims),
        volumes={v["metadata"]["name"]: v for v in volumes},
        classes={c["metadata"]["name"]: c for c in classes},
        events=list(events),
    )


TRAINING = "sft-qwen3vl-fire-4gpu"


# --- settling: what the watcher waits for -------------------------------------------------


def test_a_job_without_pods_and_a_bound_pod_not_yet_running_are_still_moving():
    assert still_moving(view(), NS, [TRAINING]) == [f"Job {NS}/{TRAINING}: no pod yet (job controller)"]
    starting = pod("sft-1", "a100-ucsd-1", phase="Pending")
    assert still_moving(view([starting], [claim()], [volume("a100-ucsd-1")]), NS, [TRAINING]) == [
        f"pod {NS}/sft-1: bound to a100-ucsd-1, starting"
    ]


def test_placed_pods_and_a_bound_claim_are_settled():
    settled = view([pod("sft-1", "a100-ucsd-1")], [claim()], [volume("a100-ucsd-1")])
    assert still_moving(settled, NS, [TRAINING]) == []


def test_a_claim_being_provisioned_is_moving_and_names_the_provisioner_error():
    pending = claim("Pending", selected="a100-ucsd-1")
    failed = event(pending, "ProvisioningFailed", "no storage pool on a100-ucsd-1 has 500Gi free", kind="PersistentVolumeClaim")
    moving = still_moving(view([pod("sft-1")], [pending], events=[failed]), NS, [TRAINING])
    assert f"claim {NS}/ms-swift-cache-pvc: volume being provisioned on node a100-ucsd-1; last provisioner error: " in moving[0]
    assert "500Gi free" in moving[0]
    assert moving[1] == f"pod {NS}/sft-1: waiting for the scheduler (volume binding)"


def test_wait_for_first_consumer_claim_without_consumer_is_settled_but_immediate_binding_is_not():
    assert still_moving(view(claims=[claim("Pending")]), NS, []) == []
    rook = claim("Pending", storage_class="rook-ceph-block")
    moving = still_moving(view(claims=[rook], classes=[storage_class("rook-ceph-block", "Immediate")]), NS, [])
    assert moving == [f"claim {NS}/ms-swift-cache-pvc: waiting for the provisioner (Immediate binding)"]


def test_the_schedulers_final_verdict_settles_a_pending_pod_but_a_transient_one_or_a_recheck_does_not():
    final = pod("sft-1", unschedulable=SCHEDULER_NO_GPUS)
    assert still_moving(view([final], [claim("Pending")]), NS, [TRAINING]) == []
    transient = pod("sft-1", unschedulable="0/5 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
    assert "scheduler retrying" in still_moving(view([transient], [claim("Pending")]), NS, [TRAINING])[0]
    assert still_moving(view([final], [claim("Pending")]), NS, [TRAINING], rechecking={"sft-1"}) == [
        f"pod {NS}/sft-1: scheduler re-checking after a volume or the storage capacity changed"
    ]


def capacity(created: str, updated: str | None = None) -> dict:
    fields = [{"manager": "mlcache-provisioner", "operation": "Update", "time": updated}] if updated else []
    return {
        "metadata": {
            "name": "csisc-linstor-a100-ucsd-1",
            "namespace": "kube-system",
            "creationTimestamp": created,
            "managedFields": fields,
        },
        "storageClassName": "linstor-fast-cache",
    }


def test_a_verdict_no_newer_than_the_last_storage_change_is_rechecked_for_the_schedulers_backoff():
    rejected = pod("sft-1", unschedulable="0/11 nodes are available: 1 node(s) did not have enough free storage.")
    verdict = event(rejected, "FailedScheduling", "0/11 nodes are available: 1 node(s) did not have enough free storage.")
    at = datetime.fromisoformat("2026-11-28T22:00:05Z")

    def rechecks(*capacities, volumes=(), seconds_after: float = 1.0):
        moment = view([rejected], [claim("Pending")], volumes, events=[verdict])
        moment.capacities = list(capacities)
        return storage_rechecks(moment, latest_verdicts(moment, NS), at + timedelta(seconds=seconds_after), 10.0)

    # Capacity published in the verdict's second or later: the scheduler re-tries within its backoff.
    assert rechecks(capacity("2026-11-28T22:00:05Z")) == ({"sft-1"}, 9.0)
    assert rechecks(capacity("2026-11-28T21:00:00Z", updated="2026-11-28T22:00:07Z")) == ({"sft-1"}, 11.0)
    # So does a volume provisioned after the verdict (the scheduler's next try selected a node).
    provisioned = volume("a100-ucsd-1")
    provisioned["metadata"]["creationTimestamp"] = "2026-11-28T22:00:06Z"
    assert rechecks(volumes=[provisioned]) == ({"sft-1"}, 10.0)
    # The backoff has passed, the verdict came after the change, or nothing changed: final.
    assert rechecks(capacity("2026-11-28T22:00:05Z"), seconds_after=10.5) == (set(), 0.0)
    assert rechecks(capacity("2026-11-28T22:00:04Z")) == (set(), 0.0)
    assert rechecks() == (set(), 0.0)


# --- the report ------------------------------------------------------------------------------


def test_training_pod_with_its_volume_passes_and_says_so():
    report = build_report(view([pod("sft-1", "a100-ucsd-1")], [claim()], [volume("a100-ucsd-1")]), EXPECT, "prod")
    assert report.exit_code == 0 and not report.problems
    text = render_report(report)
    assert "claim ml-training/ms-swift-cache-pvc: Bound -> pvc-0a1b (Filesystem, 500Gi), class linstor-fast-cache" in text
    assert "on a100-ucsd-1 (zone ucsd)" in text
    assert f"{NS}/sft-1 [training] Running  node a100-ucsd-1 zone ucsd  cache: with it" in text
    assert f"Training pod and cache: {NS}/sft-1 shares node a100-ucsd-1 and zone ucsd with its cache: yes" in text
    assert "(exit 0)" in text


def test_a_pod_on_another_node_than_its_volume_fails_with_a_fix():
    report = build_report(view([pod("sft-1", "a100-sdsu-1", zone=None)], [claim()], [volume("a100-ucsd-1")]), DEV, "dev")
    (problem,) = report.problems
    assert "runs on a100-sdsu-1 (zone sdsu) but its volume is on a100-ucsd-1 (zone ucsd)" in problem.what
    assert "delete the PVC" in problem.fix
    assert report.exit_code == 1 and "shares node and zone with its cache: NO" in render_report(report)


def test_two_replicas_list_both_nodes_and_either_one_is_with_the_cache():
    for chosen in ("a100-sdsu-1", "a100-sdsu-2"):
        report = build_report(
            view([pod("sft-1", chosen, zone=None)], [claim()], [volume("a100-sdsu-1", "a100-sdsu-2")]), DEV, "dev"
        )
        assert report.volume.nodes == ["a100-sdsu-1", "a100-sdsu-2"] and report.volume.zones == ["sdsu"]
        assert report.pods[0].with_cache is True and report.exit_code == 0


def test_rook_ceph_volume_has_no_node_affinity_and_is_reachable_from_the_pod():
    expect = Expectation("ms-swift-cache-pvc", NS, "rook-ceph-block", "rook-ceph", None, TRAINING)
    rook = [storage_class("rook-ceph-block", "Immediate")]
    report = build_report(
        view([pod("sft-1", "a100-sdsu-1", zone=None)], [claim(storage_class="rook-ceph-block")], [volume()], classes=rook),
        expect,
        "dev",
    )
    assert report.volume.nodes is None and report.exit_code == 0
    text = render_report(report)
    assert "on any node (no node affinity: network storage)" in text and "the cache is network storage" in text


def test_block_volume_mode_is_reported():
    report = build_report(view([pod("sft-1", "a100-ucsd-1")], [claim()], [volume("a100-ucsd-1", mode="Block")]), EXPECT, "prod")
    assert report.volume.volume_mode == "Block" and "(Block, 500Gi)" in render_report(report)


def test_pinned_zone_full_names_the_holder_the_schedulers_reason_and_zones_with_room():
    blocker = pod("other-team", "a100-ucsd-1", job=None, claim=None, created="2026-11-28T21:00:00Z")
    training = pod("sft-1", unschedulable="stale condition")
    verdict = event(training, "FailedScheduling", SCHEDULER_NO_GPUS)
    report = build_report(view([blocker, training], [claim("Pending")], events=[verdict]), EXPECT, "prod")
    assert report.pods[1].reason == SCHEDULER_NO_GPUS  # the scheduler's own words, from its event
    (problem,) = report.problems
    assert "zone ucsd's NVIDIA-A100-SXM4-80GB nvidia.com/gpu capacity is taken" in problem.what
    assert "a100-ucsd-1 0/4 free (held by ml-training/other-team 4)" in problem.what
    assert "mlcache:zone=sdsu (a100-sdsu-1: 8 free)" in problem.fix and "unset mlcache:zone" in problem.fix
    text = render_report(report)
    assert f"Pending (the scheduler's reason)\n  {NS}/sft-1: {SCHEDULER_NO_GPUS}" in text
    assert report.exit_code == 1
    # mlcache verify says the same, from the same objects.
    (finding,) = [f for f in report.findings if f.level == FAIL]
    assert finding.check == "pod scheduling" and "a100-ucsd-1 0/4 free" in finding.message and "sdsu" in finding.remedy


def test_a_partly_free_zone_suggests_fewer_gpus():
    holder = pod("other-team", "a100-ucsd-1", job=None, claim=None, gpus=2)
    training = pod("sft-1", unschedulable=SCHEDULER_NO_GPUS)
    report = build_report(view([holder, training], [claim("Pending")]), EXPECT, "prod")
    assert "lower job.gpus to 2 (the most free on one node)" in report.problems[0].fix


def test_first_consumer_trap_fio_pod_stranded_the_volume_on_a_gpu_less_node():
    fio = pod("fio", "cpu-ucsd-1", job="storage-benchmark", gpus=0, created="2026-11-28T21:00:00Z")
    training = pod("sft-1", unschedulable=SCHEDULER_CONFLICT)
    report = build_report(view([fio, training], [claim()], [volume("cpu-ucsd-1")]), EXPECT, "prod")
    fio_row = next(p for p in report.pods if p.pod.endswith("/fio"))
    assert fio_row.with_cache is True and fio_row.role == "other"
    (problem,) = report.problems
    assert "the volume is on cpu-ucsd-1 (zone ucsd), where its consumer ml-training/fio runs (no GPU request" in problem.what
    assert "cpu-ucsd-1 does not match the pod's node affinity (nvidia.com/gpu.product=none)" in problem.what
    assert "Delete the PVC" in problem.fix and "benchmark.enabled: true" in problem.fix
    assert report.exit_code == 1


def test_benchmark_pod_is_named_and_placed_with_the_cache():
    bench = pod("bench-1", "a100-sdsu-1", job="sft-qwen3vl-fire-4gpu-bench", zone=None)
    training = pod("sft-1", "a100-sdsu-1", zone=None)
    report = build_report(view([bench, training], [claim()], [volume("a100-sdsu-1")]), DEV, "dev", "sft-qwen3vl-fire-4gpu-bench")
    assert [p.role for p in report.pods] == ["benchmark", "training"] and report.exit_code == 0


def test_what_was_still_moving_fails_the_rehearsal_and_is_listed():
    moving = ["claim ml-training/ms-swift-cache-pvc: volume being provisioned on node a100-ucsd-1"]
    report = build_report(view([pod("sft-1")], [claim("Pending", selected="a100-ucsd-1")]), EXPECT, "prod", moving=moving)
    assert report.exit_code == 1
    assert "Still moving when the wait ended\n  claim ml-training/ms-swift-cache-pvc: volume being provisioned" in render_report(
        report
    )


def test_verify_without_events_or_allocatable_keeps_its_generic_remedy():
    from mlcache.cluster.diagnosis import Snapshot  # noqa: PLC0415

    bare = {n: {"metadata": v["metadata"]} for n, v in FLEET.items()}
    findings = diagnose(Snapshot(pvc=claim("Pending"), pods=[pod("sft-1", unschedulable=SCHEDULER_NO_GPUS)], nodes=bare), EXPECT)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert failure.remedy.startswith("too few free GPUs of job.gpuProduct, cpu or memory: lower job.gpus")
    # a100-ucsd-1 is of the placement: the 4 nodes the affinity ruled out are left out as asked, no fix.
    assert "no node with job.gpuProduct in the zone" not in failure.remedy
    elsewhere = Expectation(**{**EXPECT.__dict__, "zone": "chico"})
    findings = diagnose(
        Snapshot(pvc=claim("Pending"), pods=[pod("sft-1", zone="chico", unschedulable=SCHEDULER_NO_GPUS)], nodes=bare), elsewhere
    )
    (failure,) = [f for f in findings if f.level == FAIL]
    assert "; no node with job.gpuProduct in the zone: change job.gpuProduct or mlcache:zone" in failure.remedy


@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        ("2 node(s) had untolerated taint(s)", "nodes with taints the pod does not tolerate: add the taint to job.tolerations"),
        ("1 node(s) did not have enough free storage", "less free space than cache.size: lower cache.size or free space"),
    ],
)
def test_each_reason_of_the_scheduler_gets_its_own_fix(reason, fix):
    from mlcache.cluster.diagnosis import Snapshot  # noqa: PLC0415

    bare = {n: {"metadata": v["metadata"]} for n, v in FLEET.items()}
    message = f"0/5 nodes are available: {reason}. preemption: not helpful."
    findings = diagnose(Snapshot(pvc=claim("Pending"), pods=[pod("sft-1", unschedulable=message)], nodes=bare), EXPECT)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert fix in failure.remedy and "GPUs" not in failure.remedy


def test_after_a_node_loss_the_remedy_names_the_dead_nodes_taint_and_the_nodes_short_of_storage():
    """A healed cache whose pod waits: the lost node is tainted unreachable (NoSchedule and NoExecute,
    as the node lifecycle controller does) and the node of the placement that is up lacks storage.
    The pod carries the API server's default tolerations of those keys (NoExecute, 300 s), which
    do not tolerate the NoSchedule one. Tolerating the dead node's taint is no remedy; the nodes
    short of storage are named."""
    from mlcache.cluster.diagnosis import Snapshot  # noqa: PLC0415

    unreachable = "node.kubernetes.io/unreachable"
    bare = {n: {"metadata": v["metadata"]} for n, v in FLEET.items()}
    dead = {
        **bare["a100-ucsd-1"],
        "spec": {"taints": [{"key": unreachable, "effect": "NoSchedule"}, {"key": unreachable, "effect": "NoExecute"}]},
    }
    up = {**bare["a100-sdsu-1"], "metadata": {**bare["a100-sdsu-1"]["metadata"], "name": "a100-ucsd-2"}}
    up["metadata"]["labels"] = {**up["metadata"]["labels"], "topology.kubernetes.io/zone": "ucsd"}
    nodes = {**bare, "a100-ucsd-1": dead, "a100-ucsd-2": up}
    message = (
        "0/6 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 1 node(s) did not "
        "have enough free storage, 4 node(s) didn't match Pod's node affinity/selector. preemption: not helpful."
    )
    waiting = pod("sft-1", unschedulable=message)
    waiting["spec"]["tolerations"] = [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        for key in (unreachable, "node.kubernetes.io/not-ready")
    ]

    def remedy(nodes: dict) -> str:
        findings = diagnose(Snapshot(pvc=claim("Pending"), pods=[waiting], nodes=nodes), EXPECT)
        (failure,) = [f for f in findings if f.level == FAIL]
        return failure.remedy

    said = remedy(nodes)
    assert "job.tolerations" not in said and f"the nodes of the placement tainted {unreachable} are down" in said
    assert "the storage pool of the nodes that fit (a100-ucsd-2) has less free space" in said
    assert "no node with job.gpuProduct" not in said
    # A taint outside the placement is none of its business; another taint on a node of it keeps the tolerations fix.
    nodes["cpu-ucsd-1"] = {**bare["cpu-ucsd-1"], "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}
    assert "job.tolerations" not in remedy(nodes)
    nodes["a100-ucsd-2"] = {**up, "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}
    assert "add the taint to job.tolerations" in remedy(nodes)
    # Every node of the placement down: changing the placement is the way out, and said.
    alone = {name: node for name, node in nodes.items() if name != "a100-ucsd-2"}
    said = remedy(alone)
    assert (
        "none of them is up" in said and "no node with job.gpuProduct in the zone: change job.gpuProduct or mlcache:zone" in said
    )


# --- set-up: toolchain, config, program copy, usage errors -------------------------------------


def test_missing_toolchain_is_one_line_naming_the_build_script(tmp_path):
    with pytest.raises(rehearse.SetupError) as raised:
        rehearse.find_toolchain(cache=tmp_path, path=str(tmp_path))
    message = str(raised.value)
    assert "\n" not in message and "scripts/build-engine" in message and "kube-scheduler" in message and "kwok" in message


def test_toolchain_prefers_path_then_the_newest_cached_build(tmp_path):
    cache, on_path = tmp_path / "cache", tmp_path / "path"
    on_path.mkdir()
    for binary, step in rehearse.TOOLCHAIN.items():
        for version in ("v1", "v2"):
            built = cache / f"{step}-{version}" / binary
            built.parent.mkdir(parents=True, exist_ok=True)
            built.write_text("")
            built.chmod(0o755)
    (cache / "kwok-v2" / "stages").mkdir()
    (on_path / "pulumi").write_text("")
    (on_path / "pulumi").chmod(0o755)
    found = rehearse.find_toolchain(cache=cache, path=str(on_path))
    assert found["pulumi"] == on_path / "pulumi"
    assert found["kube-scheduler"] == cache / "apiserver-v2" / "kube-scheduler"
    assert found["stages"] == cache / "kwok-v2" / "stages"
    bin_dir = rehearse.link_toolchain(found, tmp_path / "bin")
    assert (bin_dir / "pulumi").resolve() == on_path / "pulumi"
    assert (bin_dir / "stages").resolve() == cache / "kwok-v2" / "stages"
    assert (bin_dir / "kube-apiserver").resolve() == cache / "apiserver-v2" / "kube-apiserver"


def test_rehearsal_config_points_at_the_rehearsal_cluster_and_keeps_secure_values_secret(tmp_path):
    config = load_stack_config("prod", ["job.gpus=8", "kubernetes:context=prod-cluster"])
    config.values["mlcache:hfToken"] = "offline-placeholder-for-a-secure-value"
    config.secret_keys.add("mlcache:hfToken")
    plain, secret = rehearse.rehearsal_config(config, tmp_path / "kubeconfig", "rehearsal")
    assert plain["kubernetes:kubeconfig"] == str(tmp_path / "kubeconfig") and plain["kubernetes:context"] == "rehearsal"
    assert str(plain["mlcache:job"]["gpus"]) == "8" and plain["mlcache:zone"] == "ucsd"
    assert "mlcache:hfToken" not in plain and secret == {"mlcache:hfToken": "offline-placeholder-for-a-secure-value"}


def test_the_program_copy_has_no_stack_files_and_the_projects_virtualenv(tmp_path):
    copy = rehearse.copy_program(tmp_path / "project")
    assert (copy / "__main__.py").is_file() and (copy / "Pulumi.yaml").is_file()
    assert not list(copy.glob("Pulumi.*.yaml")) and not (copy / "tests").exists()
    assert (copy / "venv").is_symlink() and (copy / "venv" / "bin" / "python").exists()
    assert not [p.name for p in copy.iterdir() if p.name.endswith("_cache") or p.name == ".hypothesis"]  # tools' caches


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--stack", "nope"], "error: no stack file Pulumi.nope.yaml"),
        (["--stack", "prod", "--config", "job.gpus=0"], "mlcache:job.gpus"),
        (["--stack", "prod", "--fleet", "/no/such/fleet.yaml"], "error: fleet /no/such/fleet.yaml: cannot read it"),
        (["--stack", "prod", "--fleet", "Pulumi.yaml"], "neither a fleet description"),
        (["--stack", "prod", "--timeout", "0"], "error: --timeout 0: must be a positive number of seconds"),
        # A deadline no clock can hold crashed the waits once the cluster was up (exit 70).
        (["--stack", "prod", "--timeout", "inf"], "error: --timeout inf: must be a positive number of seconds, at most 86400"),
        (["--stack", "prod", "--timeout", "1e12"], "error: --timeout 1e+12: must be a positive number of seconds, at most"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_anything_starts(capsys, argv, expected):
    assert rehearse_command.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and expected in err


def test_missing_toolchain_exits_2_with_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(rehearse, "TOOLCHAIN_CACHE", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert rehearse_command.main(["--stack", "dev"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "scripts/build-engine" in err
    assert list(temporary.iterdir()) == []  # no work directory left behind


def test_a_rehearsal_of_a_move_by_copy_says_it_has_no_cache_to_move(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(rehearse, "TOOLCHAIN_CACHE", tmp_path)  # stops right after, as a missing toolchain does
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rehearse_command.main(["--stack", "prod", "--config", "zone=sdsu", "--config", "cache.relocate=copy"]) == 2
    said = capsys.readouterr().err.splitlines()
    assert said[0] == (
        "rehearse: cache.relocate is copy, but a rehearsal starts from an empty cluster: there is no cache to move, so this "
        "shows where a first deploy of these settings lands (`mlcache diff` previews the move itself)"
    )
    assert "scripts/build-engine" in said[1]


def test_a_kept_rehearsals_environment_file_is_owner_only_and_gives_back_its_values(tmp_path):
    """What `--keep` prints for drift and heal: a shell file that sets the rehearsal's Pulumi
    environment (the state's passphrase included, so nobody else may read it)."""
    rehearsal = rehearse.Rehearsal(toolchain={}, work=tmp_path)
    rehearsal.env = {"PULUMI_CONFIG_PASSPHRASE": "a b'c$d", "PATH": "/x:/y", "KUBECONFIG": str(tmp_path / "k")}
    path = rehearsal.write_env()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = subprocess.run(
        ["sh", "-c", f'. {path} && printf "%s\\n" "$PULUMI_CONFIG_PASSPHRASE" "$PATH" "$KUBECONFIG"'],
        capture_output=True,
        text=True,
        check=True,
        env={},
    ).stdout.splitlines()
    assert shown == ["a b'c$d", "/x:/y", str(tmp_path / "k")]


@pytest.mark.parametrize("action", [["stop"], ["kill-node", "ucsd-a100-1"]])
def test_local_cluster_on_a_directory_with_no_cluster_is_bad_input_exit_2(tmp_path, action):
    done = subprocess.run(
        [str(ROOT / "scripts" / "local-cluster"), action[0], str(tmp_path / "none"), *action[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"local-cluster: no cluster in {tmp_path / 'none'}\n"


def test_a_workers_storage_shortage_names_only_the_nodes_its_run_leaves_it():
    """A multi-node run's worker may not share a node with another of its run: the nodes the storage
    fix names are the placement's nodes no other worker holds (it named the peers' nodes too)."""
    from mlcache.cluster.diagnosis import Snapshot  # noqa: PLC0415
    from mlcache.program.names import MULTINODE_RUN_LABEL  # noqa: PLC0415

    bare = {n: {"metadata": v["metadata"]} for n, v in FLEET.items()}
    small = {**bare["a100-sdsu-1"], "metadata": {**bare["a100-sdsu-1"]["metadata"], "name": "a100-ucsd-small"}}
    small["metadata"]["labels"] = {**small["metadata"]["labels"], "topology.kubernetes.io/zone": "ucsd"}
    nodes = {**bare, "a100-ucsd-small": small}
    message = (
        "0/6 nodes are available: 1 node(s) did not have enough free storage, 1 node(s) didn't match pod anti-affinity "
        "rules, 4 node(s) didn't match Pod's node affinity/selector. preemption: not helpful."
    )
    waiting = pod("sft-1", unschedulable=message)
    peer = pod("sft-0", "a100-ucsd-1")
    for member in (waiting, peer):
        member["metadata"]["labels"] = {**(member["metadata"].get("labels") or {}), MULTINODE_RUN_LABEL: "sft"}
    snapshot = Snapshot(pvc=claim("Pending"), pods=[waiting], nodes=nodes, bound_pods=[peer])
    (failure,) = [f for f in diagnose(snapshot, EXPECT) if f.level == FAIL]
    assert "the storage pool of the nodes that fit (a100-ucsd-small) has less free space" in failure.remedy
