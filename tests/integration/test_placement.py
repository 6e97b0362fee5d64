"""Placement, observed: every stack goes up through mlcache rehearse (the real `pulumi up` against the
rehearsal cluster), the real kube-scheduler, volume binder and job controller place it, the
provisioner stand-ins create the volumes, and the tests read where things landed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from mlcache.cluster.objects import selector_matches
from mlcache.program.names import GPU_PRODUCT_LABEL, ZONE_LABEL
from mlcache.rehearsal.cluster import UpFailed
from mlcache.rehearsal.report import ClusterView, Report
from tests.integration.conftest import ROOT

A100 = "NVIDIA-A100-SXM4-80GB"
FLEETS = ROOT / "tests" / "data" / "fleets"
SETTLE = 120.0
GPU_TOLERATION = "job.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]"
# The runbook's benchmark Job, exactly as its "Benchmarking" section applies it.
RUNBOOK_FIO_JOB = """
apiVersion: batch/v1
kind: Job
metadata:
  name: storage-benchmark
spec:
  template:
    spec:
      containers:
      - name: fio
        image: dmonakhov/alpine-fio
        command: [fio, --name=seqread, --rw=read, --bs=4M, --size=10G, --numjobs=1, --directory=/cache, --output-format=json]
        volumeMounts:
        - name: cache
          mountPath: /cache
      restartPolicy: Never
      volumes:
      - name: cache
        persistentVolumeClaim:
          claimName: ms-swift-cache-pvc
"""


def training(report: Report):
    (pod,) = [p for p in report.pods if p.role == "training"]
    return pod


def gpus(node: dict) -> int:
    return int((node["status"].get("allocatable") or {}).get("nvidia.com/gpu", 0))


def the_volume(view: ClusterView, report: Report) -> dict:
    return view.volumes[report.volume.volume]


def test_dev_option_a_training_lands_on_an_a100_node_of_the_schedulers_choosing_with_its_volume(rehearsal):
    outputs = rehearsal.up("dev")
    # The provider's temp copy of the kubeconfig (a bearer token) stays in the rehearsal's directory.
    assert list((rehearsal.work / "tmp").glob("kubeconfig*"))
    report = rehearsal.report("dev", outputs, SETTLE)
    view = rehearsal.view(outputs["namespace"])
    pod = training(report)
    node = view.nodes[pod.node]
    assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == A100 and gpus(node) >= 4
    # The scheduler's choice, written on the claim; the provisioner created the volume there.
    claim = view.claims[0]
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == pod.node
    assert report.volume.nodes == [pod.node] and report.volume.zones == [pod.zone]
    assert the_volume(view, report)["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert pod.with_cache is True and report.exit_code == 0, report.problems


def test_prod_option_b_pod_and_volume_land_in_the_pinned_zone(rehearsal):
    outputs = rehearsal.up("prod")
    report = rehearsal.report("prod", outputs, SETTLE)
    pod = training(report)
    assert pod.zone == "ucsd" and report.volume.zones == ["ucsd"] and report.volume.nodes == [pod.node], pod.reason
    assert report.exit_code == 0, report.problems


def test_prod_with_the_pinned_zones_a100s_taken_training_stays_pending_with_the_schedulers_reason_and_fix(rehearsal):
    core = rehearsal.core
    selector = f"{ZONE_LABEL}=ucsd,{GPU_PRODUCT_LABEL}={A100}"
    taken = core.list_node(label_selector=selector).items
    assert taken, "the runbook fleet has A100 nodes in ucsd"
    rehearsal.ensure_namespace("other-team")
    for node in taken:
        count = node.status.allocatable["nvidia.com/gpu"]
        requests = {"nvidia.com/gpu": count, "cpu": "1", "memory": "1Gi"}
        core.create_namespaced_pod(
            "other-team",
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"holds-{node.metadata.name}"),
                spec=client.V1PodSpec(
                    node_selector={"kubernetes.io/hostname": node.metadata.name},
                    containers=[
                        client.V1Container(
                            name="train",
                            image="example/train:1",
                            resources=client.V1ResourceRequirements(requests=requests, limits=requests),
                        )
                    ],
                ),
            ),
        )
    _, moving = rehearsal.settle("other-team", [], SETTLE)
    assert moving == []
    outputs = rehearsal.up("prod")
    report = rehearsal.report("prod", outputs, SETTLE)
    pod = training(report)
    assert pod.node is None and report.exit_code == 1
    assert "Insufficient nvidia.com/gpu" in pod.reason  # the scheduler's own words (its FailedScheduling event)
    (problem,) = report.problems
    assert f"other-team/holds-{taken[0].metadata.name}" in problem.what
    assert "mlcache:zone=" in problem.fix and "unset mlcache:zone" in problem.fix
    # mlcache verify, run as users run it, against the same cluster, says the same.
    verify = subprocess.run(
        [sys.executable, "-m", "mlcache", "verify", "--stack", "prod"],
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": str(rehearsal.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "Insufficient nvidia.com/gpu" in verify.stdout and "capacity is taken" in verify.stdout
    assert "remedy:" in verify.stdout and "mlcache:zone=" in verify.stdout


@pytest.mark.parametrize("rehearsal", [{"complete_jobs": True}], indirect=True)
def test_first_consumer_benchmark_binds_the_volume_where_training_fits_and_training_lands_with_it(rehearsal):
    bench = ["benchmark.enabled=true", "benchmark.fioImage=docker.io/library/fio:3.38"]
    outputs = rehearsal.up("dev", ["job.enabled=false", *bench])
    report = rehearsal.report("dev", outputs, SETTLE)
    (benchmark,) = [p for p in report.pods if p.role == "benchmark"]
    view = rehearsal.view(outputs["namespace"])
    node = view.nodes[benchmark.node]
    # The benchmark was the first (and only) consumer: it decided where the volume lives...
    assert report.volume.nodes == [benchmark.node]
    # ... on a node where the training pod fits: the A100 product, enough GPUs.
    assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == A100 and gpus(node) >= 4
    outputs = rehearsal.up("dev", bench)
    report = rehearsal.report("dev", outputs, SETTLE)
    assert training(report).node == benchmark.node and training(report).with_cache is True
    assert report.exit_code == 0, report.problems


@pytest.mark.parametrize("rehearsal", [{"fleet": FLEETS / "tainted-gpus.yaml"}], indirect=True)
def test_first_consumer_trap_the_runbooks_fio_pod_applied_first_strands_the_volume_and_training_never_places(rehearsal):
    outputs = rehearsal.up("dev", ["job.enabled=false", GPU_TOLERATION])
    namespace = outputs["namespace"]
    client.BatchV1Api(rehearsal.api).create_namespaced_job(namespace, yaml.safe_load(RUNBOOK_FIO_JOB))
    _, moving = rehearsal.settle(namespace, ["storage-benchmark"], SETTLE)
    assert moving == []
    view = rehearsal.view(namespace)
    (fio,) = [p for p in view.pods if p["metadata"]["name"].startswith("storage-benchmark-")]
    fio_node = fio["spec"]["nodeName"]
    assert GPU_PRODUCT_LABEL not in view.nodes[fio_node]["metadata"]["labels"]  # the volume went where fio landed
    (claim,) = view.claims
    volume = view.volumes[claim["spec"]["volumeName"]]
    terms = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert [n for n, node in view.nodes.items() if selector_matches(node, terms)] == [fio_node]
    # The training pod could never be placed there: the bound-cache guard (docs/day2.md) refuses
    # the up that would create it, before anything is registered, naming the node and the way out.
    with pytest.raises(UpFailed) as refused:
        rehearsal.up("dev", [GPU_TOLERATION])
    message = str(refused.value)
    assert "bound-cache guard" in message and f"node {fio_node}" in message and "GPU product none" in message
    assert "would stay Pending for ever" in message and "mlcache:cache.relocate copy" in message
    assert "mlcache:cache.relocate fresh" in message
    assert [j["metadata"]["name"] for j in rehearsal.view(namespace).jobs] == ["storage-benchmark"]


@pytest.mark.parametrize("rehearsal", [{"fleet": FLEETS / "two-a100-satellites.yaml"}], indirect=True)
def test_two_replicas_pin_the_volume_to_both_replica_nodes_and_training_can_use_either(rehearsal):
    outputs = rehearsal.up("dev", ["linstor.replicas=2"])
    report = rehearsal.report("dev", outputs, SETTLE)
    first = training(report)
    assert report.volume.nodes == ["a100-ucsd-1", "a100-ucsd-2"] and first.node in report.volume.nodes
    assert first.with_cache is True and report.exit_code == 0
    # Take the first node away: a new run lands on the other replica, same volume.
    rehearsal.core.patch_node(first.node, {"spec": {"unschedulable": True}})
    outputs = rehearsal.up("dev", ["linstor.replicas=2", "job.runId=r2"])
    again = rehearsal.report("dev", outputs, SETTLE)
    second = training(again)
    assert second.node != first.node and second.node in report.volume.nodes
    assert again.volume.volume == report.volume.volume and second.with_cache is True and again.exit_code == 0


def test_rollback_to_rook_ceph_binds_at_once_without_topology_and_back(rehearsal):
    outputs = rehearsal.up("dev")
    linstor = rehearsal.report("dev", outputs, SETTLE)
    assert linstor.volume.nodes == [training(linstor).node]
    outputs = rehearsal.up("dev", ["backend=rook-ceph", "cache.relocate=fresh"])  # re-created empty: no copy here
    view = rehearsal.view(outputs["namespace"])  # right after `up`, before any pod is scheduled for it
    (claim,) = view.claims
    assert claim["spec"]["storageClassName"] == "rook-ceph-block" and claim["status"]["phase"] == "Bound"
    assert "volume.kubernetes.io/selected-node" not in (claim["metadata"].get("annotations") or {})
    assert view.volumes[claim["spec"]["volumeName"]]["spec"].get("nodeAffinity") is None
    rook = rehearsal.report("dev", outputs, SETTLE)
    assert rook.volume.nodes is None and training(rook).with_cache is True and rook.exit_code == 0
    outputs = rehearsal.up("dev", ["backend=linstor", "cache.relocate=fresh"])
    back = rehearsal.report("dev", outputs, SETTLE)
    assert back.volume.storage_class == "linstor-fast-cache" and back.volume.nodes == [training(back).node]
    assert back.exit_code == 0, back.problems


def test_block_mode_volume_is_a_block_device_handed_to_the_pod(rehearsal):
    outputs = rehearsal.up("dev", ["cache.volumeMode=Block"])
    report = rehearsal.report("dev", outputs, SETTLE)
    view = rehearsal.view(outputs["namespace"])
    assert the_volume(view, report)["spec"]["volumeMode"] == "Block" and report.volume.volume_mode == "Block"
    pod = training(report)
    (raw,) = [p for p in view.pods if p["metadata"]["name"] == pod.pod.split("/")[1]]
    cache_volume = next(v["name"] for v in raw["spec"]["volumes"] if v.get("persistentVolumeClaim"))
    devices = [d for c in raw["spec"]["containers"] for d in c.get("volumeDevices") or []]
    assert devices == [{"name": cache_volume, "devicePath": "/dev/cache"}]
    assert pod.with_cache is True and report.exit_code == 0, pod.reason


def _require_toolchain() -> None:
    """The command line runs the toolchain itself: skip without it (fail under CI's MLCACHE_REQUIRE_ENGINE=1)."""
    from mlcache.rehearsal.cluster import SetupError, find_toolchain  # noqa: PLC0415

    try:
        find_toolchain()
    except SetupError as err:
        if os.environ.get("MLCACHE_REQUIRE_ENGINE") == "1":
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


def test_a_term_to_the_whole_process_group_stops_the_cluster_and_removes_its_files(tmp_path):
    """A cancelled CI job or `timeout` sends TERM to the whole process group, mid `pulumi up`: the
    rehearsal stops its cluster and removes its files, as Ctrl-C does (TERM left both behind)."""
    _require_toolchain()
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where its work directories go
    process = subprocess.Popen(
        [sys.executable, "-m", "mlcache", "rehearse", "--stack", "prod"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    said = []
    for line in process.stderr:
        said.append(line)
        if "rehearse: up: " in line:  # pulumi up is running against the cluster
            break
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 130 and err.strip().endswith("error: interrupted"), "".join(said) + err
    assert list(tmp_path.iterdir()) == []
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(tmp_path).encode() in (entry / "cmdline").read_bytes():
                    left.append(entry.name)
    assert left == []


def test_the_cli_rehearses_prod_prints_the_report_and_keeps_the_cluster_for_kubectl():
    _require_toolchain()
    done = subprocess.run(
        [sys.executable, "-m", "mlcache", "rehearse", "--stack", "prod", "--keep"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    kubeconfig = next((line.split("=", 1)[1] for line in done.stdout.splitlines() if "export KUBECONFIG=" in line), None)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Training pod and cache: ml-training/sft-qwen3vl-fire-4gpu-" in done.stdout
        assert "zone ucsd with its cache: yes" in done.stdout
        assert "rehearse: settled in" in done.stderr and "rehearse: pulumi up --stack prod" in done.stderr
        nodes = client.CoreV1Api(_api(Path(kubeconfig))).list_node().items
        assert any(n.metadata.labels.get(ZONE_LABEL) == "ucsd" for n in nodes)
    finally:
        if kubeconfig:
            cluster = Path(kubeconfig).parent
            subprocess.run([str(ROOT / "scripts" / "local-cluster"), "stop", str(cluster)], check=False, timeout=120)
            shutil.rmtree(cluster.parent, ignore_errors=True)


def _api(kubeconfig: Path):
    from kubernetes import config  # noqa: PLC0415

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def test_the_pr_comment_shows_where_the_rehearsal_on_the_fleet_placed_the_cache_and_training(tmp_path):
    """#22: `mlcache rehearse --json`, as the PR workflow runs it for a stack with a fleet file, then
    `mlcache diff --markdown --placement`: the comment names the node the scheduler chose."""
    _require_toolchain()
    rehearsed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcache",
            "rehearse",
            "--stack",
            "prod",
            "--fleet",
            str(ROOT / "fleets" / "runbook.yaml"),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rehearsed.returncode == 0, rehearsed.stdout + rehearsed.stderr
    document = json.loads(rehearsed.stdout)
    (volume,) = document["volumes"]
    (pod,) = [p for p in document["pods"] if p["role"] == "training"]
    assert document["ok"] and pod["with_cache"] and volume["nodes"] == [pod["node"]] and volume["zones"] == ["ucsd"]
    placement = tmp_path / "placement"
    placement.mkdir()
    (placement / "prod.json").write_text(rehearsed.stdout)
    comment = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcache",
            "diff",
            "--base",
            "HEAD",
            "--stack",
            "prod",
            "--markdown",
            "--placement",
            str(placement),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert comment.returncode == 0, comment.stderr
    assert f"- training pod `{pod['pod']}`: on {pod['node']} (zone ucsd), with its cache" in comment.stdout
