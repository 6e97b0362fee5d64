"""Multi-node runs, observed on the rehearsal cluster: every stack goes up through mlcache rehearse,
the real kube-scheduler places the workers (pod affinity, anti-affinity, WaitForFirstConsumer),
the LINSTOR stand-in creates each worker's volume on the node the scheduler chose, and the
tests read where every worker and every volume landed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from mlcache.cluster.objects import volume_nodes
from mlcache.program.names import GPU_PRODUCT_LABEL, HOSTNAME_LABEL, ZONE_LABEL
from mlcache.rehearsal.report import ClusterView
from tests.integration.conftest import ROOT, ended

A100 = "NVIDIA-A100-SXM4-80GB"
SETTLE = 180.0
RUN = "sft-qwen3vl-fire-4gpu"
WORKER_LABEL = "mlcache/worker"


def volume_node(view: ClusterView, claim_name: str) -> str | None:
    """The one node the claim's volume is pinned to (its node affinity, as the driver wrote it)."""
    claim = next(c for c in view.claims if c["metadata"]["name"] == claim_name)
    volume = view.volumes.get(claim["spec"].get("volumeName") or "")
    if volume is None:
        return None
    (node,) = volume_nodes(volume, view.nodes)
    return node


def workers(view: ClusterView, namespace: str, run: str = RUN) -> dict[int, dict]:
    """The live training pod of each worker of `run` (the newest, if a re-run left older ones)."""
    found: dict[int, dict] = {}
    for pod in sorted(view.pods, key=lambda p: p["metadata"]["creationTimestamp"]):
        labels = pod["metadata"].get("labels") or {}
        if pod["metadata"]["namespace"] == namespace and labels.get("mlcache/job") == run and WORKER_LABEL in labels:
            found[int(labels[WORKER_LABEL])] = pod
    return found


def zone_of(view: ClusterView, node: str) -> str:
    return view.nodes[node]["metadata"]["labels"][ZONE_LABEL]


def assert_placed_in_one_zone(view: ClusterView, outputs: dict, nodes: int) -> dict[int, str]:
    """Every worker Running on its own A100 node, with its own volume on that node, one zone."""
    namespace, claims = outputs["namespace"], outputs["run"]["cacheClaims"]
    pods = workers(view, namespace, outputs["run"]["name"])
    assert sorted(pods) == list(range(nodes))
    placed = {i: p["spec"].get("nodeName") for i, p in pods.items()}
    assert all(placed.values()), {i: p["status"] for i, p in pods.items() if not p["spec"].get("nodeName")}
    assert len(set(placed.values())) == nodes, f"one worker per node: {placed}"
    assert all(view.nodes[n]["metadata"]["labels"][GPU_PRODUCT_LABEL] == A100 for n in placed.values())
    assert {zone_of(view, n) for n in placed.values()} == {zone_of(view, placed[0])}, placed
    for index, node in placed.items():
        claim = next(v for v in pods[index]["spec"]["volumes"] if v.get("persistentVolumeClaim"))
        assert claim["persistentVolumeClaim"]["claimName"] == claims[index]
        assert volume_node(view, claims[index]) == node, f"worker {index}'s volume is on its node"
    return placed


def only_ucsd_has_room(rehearsal) -> None:
    """Other teams hold the A100s of sdsu and gatech (one A100 node each). Unpinned, the scheduler
    places a run's first worker knowing nothing of the others: on this fleet it could pick a
    one-node zone, and the rest of the run would wait there (see the test below that shows it).
    With those zones full, ucsd (three A100 nodes) is where the first worker, and so the run, goes."""
    for zone in ("sdsu", "gatech"):
        hold_gpus(rehearsal, zone)


def up_and_settle(rehearsal, stack: str, overrides: list[str]):
    outputs = rehearsal.up(stack, overrides)
    view, moving = rehearsal.settle(outputs["namespace"], outputs["run"]["jobs"], SETTLE)
    return outputs, view, moving


@pytest.mark.parametrize(("nodes", "stack"), [(2, "dev"), (3, "dev"), (2, "prod")])
def test_workers_land_in_one_zone_each_on_its_own_a100_node_with_its_own_volume(rehearsal, nodes, stack):
    if stack == "dev":
        only_ucsd_has_room(rehearsal)
    outputs, view, moving = up_and_settle(rehearsal, stack, [f"job.nodes={nodes}"])
    assert moving == []
    placed = assert_placed_in_one_zone(view, outputs, nodes)
    if stack == "prod":
        assert {zone_of(view, n) for n in placed.values()} == {"ucsd"}
    report = rehearsal.report(stack, outputs, SETTLE)
    assert report.exit_code == 0, report.problems
    assert any(
        f.check == "one zone" and f.message == f"all {nodes} workers and their caches in zone {zone_of(view, placed[0])}"
        for f in report.findings
    )


def test_a_rerun_lands_every_worker_back_on_its_caches_node(rehearsal):
    only_ucsd_has_room(rehearsal)
    outputs, view, _ = up_and_settle(rehearsal, "dev", ["job.nodes=3"])
    first = assert_placed_in_one_zone(view, outputs, 3)
    old_pods = {p["metadata"]["uid"] for p in workers(view, outputs["namespace"]).values()}
    outputs, view, moving = up_and_settle(rehearsal, "dev", ["job.nodes=3", "job.runId=r2"])
    assert moving == []
    pods = workers(view, outputs["namespace"], outputs["run"]["name"])
    assert not old_pods & {p["metadata"]["uid"] for p in pods.values()}, "the workers were re-created"
    assert assert_placed_in_one_zone(view, outputs, 3) == first


def capacity_finding(report):
    (capacity,) = [f for f in report.findings if f.check == "capacity"]
    return capacity


def test_pinned_zone_with_fewer_a100_nodes_than_workers_leaves_the_rest_pending_and_says_why(rehearsal):
    # sdsu has one A100 node: one worker lands there, the other cannot be placed.
    outputs, view, _ = up_and_settle(rehearsal, "dev", ["zone=sdsu", "job.nodes=2"])
    pods = workers(view, outputs["namespace"])
    placed = [i for i, p in pods.items() if p["spec"].get("nodeName")]
    assert len(pods) == 2 and len(placed) == 1
    (pending,) = set(pods) - set(placed)
    report = rehearsal.report("dev", outputs, SETTLE)
    assert report.exit_code == 1
    capacity = capacity_finding(report)
    assert "1 of 2 workers Pending: zone sdsu has 1 node(s) where a worker fits" in capacity.message
    assert "pin a zone with room for all 2: ucsd (3 free nodes)" in capacity.remedy
    # The scheduler's own reason for the worker left out: its node is taken by the other worker.
    (worker,) = [f for f in report.findings if f.check == f"worker {pending}"]
    assert "not placed (0/11 nodes are available: 1 Insufficient nvidia.com/gpu" in worker.message


def test_unpinned_workers_stay_with_their_caches_zone_and_the_report_says_another_zone_would_fit(rehearsal):
    # ucsd's A100 nodes are taken by another team: one worker lands in a one-A100 zone (sdsu or
    # gatech), the other cannot follow it there.
    holders = hold_gpus(rehearsal, "ucsd")
    said: list[str] = []
    shown, rehearsal.progress = rehearsal.progress, said.append
    try:
        outputs, view, _ = up_and_settle(rehearsal, "dev", ["job.nodes=2"])
    finally:
        rehearsal.progress = shown
    # The program's warning reaches the rehearsal's output, as `pulumi up` shows it (and nothing of the CLI's own).
    warned = [line for line in said if line.startswith("up: warning: ")]
    assert len(warned) == 1 and "the first worker the scheduler places chooses the zone" in warned[0], said
    pods = workers(view, outputs["namespace"])
    placed = {i: p["spec"]["nodeName"] for i, p in pods.items() if p["spec"].get("nodeName")}
    assert len(pods) == 2 and len(placed) == 1
    (worker, node), zone = next(iter(placed.items())), None
    zone = zone_of(view, node)
    assert zone in ("sdsu", "gatech")
    report = rehearsal.report("dev", outputs, SETTLE)
    assert capacity_finding(report).remedy == "no zone has room for every worker: free nodes, or lower job.nodes"
    # ucsd frees up. The placed worker's cache keeps the run where it is, and the report says so.
    for name in holders:
        rehearsal.core.delete_namespaced_pod(name, "other-team", grace_period_seconds=0)
    deadline = time.monotonic() + SETTLE
    while rehearsal.core.list_namespaced_pod("other-team").items and time.monotonic() < deadline:
        time.sleep(0.5)
    report = rehearsal.report("dev", outputs, SETTLE)
    capacity = capacity_finding(report)
    assert f"zone {zone} has 1 node(s) where a worker fits" in capacity.message
    claim = outputs["run"]["cacheClaims"][worker]
    assert capacity.remedy == (
        f"another zone would fit: ucsd (3 free nodes). The run stays in {zone} while its caches are there: "
        f"delete {claim} (DATA LOSS) to move it"
    )
    # mlcache verify, run as users run it, against the same cluster, says the same.
    verify = subprocess.run(
        [str(ROOT / "venv" / "bin" / "python"), "-m", "mlcache", "verify", "--stack", "dev", "--config", "job.nodes=2"],
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": str(rehearsal.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "another zone would fit: ucsd (3 free nodes)" in verify.stdout


def hold_gpus(rehearsal, zone: str) -> list[str]:
    """Another team's pods take every GPU of the zone's A100 nodes."""
    rehearsal.ensure_namespace("other-team")
    names = []
    for node in rehearsal.core.list_node(label_selector=f"{ZONE_LABEL}={zone},{GPU_PRODUCT_LABEL}={A100}").items:
        requests = {"nvidia.com/gpu": node.status.allocatable["nvidia.com/gpu"], "cpu": "1", "memory": "1Gi"}
        name = f"holds-{node.metadata.name}"
        container = client.V1Container(
            name="train", image="example/train:1", resources=client.V1ResourceRequirements(requests=requests, limits=requests)
        )
        spec = client.V1PodSpec(node_selector={HOSTNAME_LABEL: node.metadata.name}, containers=[container])
        rehearsal.core.create_namespaced_pod("other-team", client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec))
        names.append(name)
    _, moving = rehearsal.settle("other-team", [], SETTLE)
    assert names and moving == []
    return names


@pytest.mark.parametrize("rehearsal", [{"jobset": True}], indirect=True)
def test_jobset_engine_under_the_real_jobset_controller(rehearsal):
    only_ucsd_has_room(rehearsal)
    outputs, view, moving = up_and_settle(rehearsal, "dev", ["job.nodes=2", "job.engine=jobset"])
    assert moving == []
    namespace = outputs["namespace"]
    # The controller made one Job per replicated job and the headless Service.
    jobs = client.BatchV1Api(rehearsal.api).list_namespaced_job(namespace).items
    assert sorted(j.metadata.name for j in jobs) == outputs["run"]["jobs"]
    service = client.CoreV1Api(rehearsal.api).read_namespaced_service(RUN, namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert_placed_in_one_zone(view, outputs, 2)
    pods = workers(view, namespace)
    assert [pods[i]["spec"]["hostname"] for i in range(2)] == [f"{RUN}-worker-0-0-0", f"{RUN}-worker-1-0-0"]
    assert all(p["spec"]["subdomain"] == RUN for p in pods.values())
    first = {i: p["spec"]["nodeName"] for i, p in pods.items()}
    # Worker 1 fails (its pod marked Failed, as the kubelet would): JobSet re-creates every
    # worker's Job (all or nothing), and each new worker lands back on its cache's node.
    failed = pods[1]["metadata"]["name"]
    rehearsal.core.patch_namespaced_pod_status(failed, namespace, ended([("sft", "x")], "Failed"))
    jobsets = client.CustomObjectsApi(rehearsal.api)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        restarts = jobsets.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", RUN)["status"].get(
            "restarts"
        )
        again = workers(rehearsal.view(namespace), namespace)
        fresh = {i: p for i, p in again.items() if p["metadata"]["name"] not in {q["metadata"]["name"] for q in pods.values()}}
        if restarts == 1 and len(fresh) == 2 and all(p["spec"].get("nodeName") for p in fresh.values()):
            break
        time.sleep(1)
    assert restarts == 1, "JobSet restarted the run once"
    assert {i: p["spec"]["nodeName"] for i, p in fresh.items()} == first, "every worker back on its cache's node"


def test_engine_jobs_a_failed_worker_ends_the_others_with_its_own_narrow_token(rehearsal, tmp_path):
    from mlcache.program.components.workers import STOP_PEERS_PY  # noqa: PLC0415

    only_ucsd_has_room(rehearsal)
    outputs, _, moving = up_and_settle(rehearsal, "dev", ["job.nodes=3"])
    assert moving == []
    namespace = outputs["namespace"]
    batch = client.BatchV1Api(rehearsal.api)
    # Worker 1's identity, as its pod gets it: a token of the run's ServiceAccount.
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = rehearsal.core.create_namespaced_service_account_token(f"{RUN}-workers", namespace, request).status.token
    kubeconfig = yaml.safe_load(rehearsal.kubeconfig.read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    (tmp_path / "token").write_text(token)
    (tmp_path / "namespace").write_text(namespace)
    (tmp_path / "ca.crt").write_text(Path(cluster["certificate-authority"]).read_text())
    host, port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    env = {**os.environ, "MLCACHE_SA_DIR": str(tmp_path), "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    peers = [f"{RUN}-worker-0", f"{RUN}-worker-2"]
    # What worker 1's wrapper runs when its training fails.
    ended = subprocess.run(["python3", "-", *peers], input=STOP_PEERS_PY, env=env, capture_output=True, text=True, timeout=60)
    assert ended.returncode == 0, ended.stderr
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        failed = {
            j.metadata.name: c.reason
            for j in batch.list_namespaced_job(namespace).items
            for c in j.status.conditions or []
            if c.type == "Failed" and c.status == "True"
        }
        if set(peers) <= set(failed):
            break
        time.sleep(1)
    assert {name: failed.get(name) for name in peers} == dict.fromkeys(peers, "DeadlineExceeded")
    # The job controller stopped their pods; worker 1 itself was untouched by the token.
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        live = workers(rehearsal.view(namespace), namespace)
        if all(i not in live or live[i]["status"]["phase"] in ("Failed", "Succeeded") for i in (0, 2)):
            break
        time.sleep(1)
    assert all(i not in live or live[i]["status"]["phase"] in ("Failed", "Succeeded") for i in (0, 2)), live
    assert live[1]["status"]["phase"] == "Running"
    # The token can touch nothing else: not another Job, not a pod.
    denied = subprocess.run(
        ["python3", "-", "some-other-job"], input=STOP_PEERS_PY, env=env, capture_output=True, text=True, timeout=60
    )
    assert denied.returncode != 0 and "403" in denied.stderr
