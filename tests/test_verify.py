"""mlcache verify's decisions on API objects shaped as the API server returns them (the client's
models serialised with ApiClient.sanitize_for_serialization), for every runbook failure mode."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from kubernetes import client

from mlcache.cluster.diagnosis import (
    FAIL,
    INFO,
    OK,
    Expectation,
    Finding,
    RunExpectation,
    Snapshot,
    diagnose,
    expectation_from,
    render_findings,
)
from mlcache.preview.render import render_or_refuse
from tests.api_objects import claim, volume
from tests.api_objects import node as api_node
from tests.api_objects import pod as api_pod

API = client.ApiClient()
EXPECT = Expectation("ms-swift-cache-pvc", "ml-training", "linstor-fast-cache", "linstor", "ucsd", "sft-qwen3vl-fire-4gpu")


def as_api(obj) -> dict:
    return API.sanitize_for_serialization(obj)


def pvc(phase="Bound", volume="pvc-0a1b", storage_class="linstor-fast-cache") -> dict:
    return as_api(
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="ms-swift-cache-pvc", namespace="ml-training"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name=storage_class,
                volume_name=volume if phase == "Bound" else None,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "500Gi"}),
            ),
            status=client.V1PersistentVolumeClaimStatus(phase=phase),
        )
    )


def pv(node="gpu-ucsd-1", zone=None) -> dict:
    expressions = [client.V1NodeSelectorRequirement(key="kubernetes.io/hostname", operator="In", values=[node])]
    if zone:
        expressions.append(client.V1NodeSelectorRequirement(key="topology.kubernetes.io/zone", operator="In", values=[zone]))
    return as_api(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name="pvc-0a1b"),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "500Gi"},
                storage_class_name="linstor-fast-cache",
                node_affinity=client.V1VolumeNodeAffinity(
                    required=client.V1NodeSelector(node_selector_terms=[client.V1NodeSelectorTerm(match_expressions=expressions)])
                ),
            ),
        )
    )


def node(name: str, zone: str) -> dict:
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone, "nvidia.com/gpu.product": "NVIDIA-A100"}
    return as_api(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))


NODES = {n["metadata"]["name"]: n for n in (node("gpu-ucsd-1", "ucsd"), node("gpu-ucsd-2", "ucsd"), node("gpu-sdsu-1", "sdsu"))}


def pod(node_name=None, unschedulable=None) -> dict:
    conditions = None
    if unschedulable:
        conditions = [client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)]
    return as_api(
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="sft-qwen3vl-fire-4gpu-x7k2p", labels={"job-name": "sft-qwen3vl-fire-4gpu"}),
            spec=client.V1PodSpec(node_name=node_name, containers=[client.V1Container(name="sft", image="img:1")]),
            status=client.V1PodStatus(phase="Running" if node_name else "Pending", conditions=conditions),
        )
    )


def levels(findings, check: str) -> list[str]:
    return [f.level for f in findings if f.check == check]


def test_pending_pvc_without_consumer_is_expected():
    findings = diagnose(Snapshot(pvc=pvc("Pending"), nodes=NODES), EXPECT)
    assert levels(findings, "pvc") == [OK] and "WaitForFirstConsumer" in findings[1].message
    assert not any(f.level == FAIL for f in findings)


def test_bound_volume_and_pod_on_the_same_node_pass():
    findings = diagnose(Snapshot(pvc=pvc(), pv=pv("gpu-ucsd-1"), pods=[pod("gpu-ucsd-1")], nodes=NODES), EXPECT)
    assert levels(findings, "locality") == [OK] and not any(f.level == FAIL for f in findings)
    assert any("linstor resource list -r pvc-0a1b" in f.message for f in findings)


def test_pvc_bound_elsewhere_is_a_locality_failure():
    findings = diagnose(Snapshot(pvc=pvc(), pv=pv("gpu-ucsd-2"), pods=[pod("gpu-ucsd-1")], nodes=NODES), EXPECT)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert failure.check == "locality" and "gpu-ucsd-2" in failure.message and failure.remedy


def test_pod_pending_on_volume_node_affinity_conflict_names_the_remedy():
    message = "0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 Insufficient nvidia.com/gpu."
    findings = diagnose(Snapshot(pvc=pvc(), pv=pv("gpu-sdsu-1"), pods=[pod(unschedulable=message)], nodes=NODES), EXPECT)
    failures = [f for f in findings if f.level == FAIL]
    # The volume names its node only (as a single-replica LINSTOR volume does): its zone is its node's.
    assert [f.check for f in failures] == ["volume zone", "pod scheduling"]
    assert failures[0].message == "the volume is in ['sdsu'], the stack pins ucsd" and "copy" in failures[0].remedy
    assert "PVC bound elsewhere" in failures[1].remedy and "Delete the PVC" in failures[1].remedy


def _gpu_node(name: str, cordoned: bool = False, ready: str = "True") -> dict:
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "ucsd", "nvidia.com/gpu.product": "NVIDIA-A100"}
    condition = client.V1NodeCondition(type="Ready", status=ready, last_transition_time="2026-11-28T23:00:00Z")
    return as_api(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1NodeSpec(unschedulable=cordoned or None),
            status=client.V1NodeStatus(
                allocatable={"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi"}, conditions=[condition]
            ),
        )
    )


def _gpu_pod(name: str, gpus: str, node_name: str | None = None, unschedulable: str | None = None) -> dict:
    pending = pod(unschedulable=unschedulable)
    container = client.V1Container(
        name="sft", image="img:1", resources=client.V1ResourceRequirements(requests={"nvidia.com/gpu": gpus})
    )
    return {
        **pending,
        "metadata": {**pending["metadata"], "name": name, "namespace": "other" if node_name else "ml-training"},
        "spec": {**as_api(client.V1PodSpec(containers=[container])), "nodeName": node_name},
        "status": {**pending["status"], "phase": "Running" if node_name else "Pending"},
    }


@pytest.mark.parametrize("cause", ["cordoned", "gpus-held"])
def test_a_volume_on_a_node_the_pod_cannot_use_for_now_is_never_answered_with_deleting_the_cache(cause):
    """The volume's node suits the pod but is cordoned, or its GPUs are taken: the cache is intact,
    and the remedy is the node's (uncordon; free the GPUs, naming who holds them), not a new PVC."""
    message = "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had volume node affinity conflict."
    pending = _gpu_pod("sft-qwen3vl-fire-4gpu-x7k2p", "4", unschedulable=message)
    nodes = {n: _gpu_node(n, cordoned=cause == "cordoned" and n == "gpu-ucsd-1") for n in ("gpu-ucsd-1", "gpu-ucsd-2")}
    holding = [] if cause == "cordoned" else [_gpu_pod("someone-else", "8", node_name="gpu-ucsd-1")]
    snapshot = Snapshot(pvc=pvc(), pv=pv("gpu-ucsd-1"), pods=[pending], nodes=nodes, bound_pods=holding)
    findings = diagnose(snapshot, EXPECT)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert "Delete the PVC" not in failure.remedy and failure.remedy.startswith("the cache is intact on its node: ")
    if cause == "cordoned":
        assert "gpu-ucsd-1 is cordoned" in failure.message and "`kubectl uncordon gpu-ucsd-1`" in failure.remedy
        (said,) = [f for f in findings if f.check == "volume node"]  # said also while nothing is pending
        assert said.level == INFO and said.message.startswith("the volume's node gpu-ucsd-1 is cordoned")
    else:
        assert "gpu-ucsd-1 has 0 of 4 nvidia.com/gpu free" in failure.message
        assert "free nvidia.com/gpu on gpu-ucsd-1 (held by other/someone-else), or wait for it" in failure.remedy


def test_the_cache_is_not_said_intact_where_waiting_cannot_help():
    """A pod that asks more GPUs than the volume's node has at all, or a volume on nodes that are not
    Ready: no "free them, or wait" (the default answer stands; node loss is heal's)."""
    message = "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had volume node affinity conflict."
    nodes = {n: _gpu_node(n) for n in ("gpu-ucsd-1", "gpu-ucsd-2")}
    too_big = Snapshot(pvc=pvc(), pv=pv("gpu-ucsd-1"), pods=[_gpu_pod("p", "16", unschedulable=message)], nodes=nodes)
    (failure,) = [f for f in diagnose(too_big, EXPECT) if f.level == FAIL]
    assert "intact" not in failure.remedy and "gpu-ucsd-1 has 8 nvidia.com/gpu in all, the pod asks 16" in failure.message
    down = {n: _gpu_node(n, cordoned=True, ready="Unknown") for n in ("gpu-ucsd-1", "gpu-ucsd-2")}
    two_replicas = pv("gpu-ucsd-1")
    two_replicas["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = list(down)
    stranded = Snapshot(pvc=pvc(), pv=two_replicas, pods=[_gpu_pod("p", "4", unschedulable=message)], nodes=down)
    failures = [f for f in diagnose(stranded, EXPECT) if f.level == FAIL]
    assert failures and not any("intact" in f.remedy for f in failures)
    assert any("gpu-ucsd-1 is not Ready" in f.message for f in failures)


def test_a_volume_on_a_lost_node_gets_no_move_remedy_only_node_loss():
    """Its zone read from its node, a hostname-only volume in another zone would be answered with a
    move by copy: not when that node is lost, where there is nothing left to copy from."""
    lost = api_node("gpu-sdsu-1", "sdsu", ready="Unknown")
    findings = diagnose(Snapshot(pvc=claim(), pv=volume("gpu-sdsu-1"), nodes={**NODES, "gpu-sdsu-1": lost}), EXPECT)
    checks = [f.check for f in findings if f.level == FAIL]
    assert "node loss" in checks and "volume zone" not in checks


def test_no_nodes_in_zone():
    expect = Expectation(**{**EXPECT.__dict__, "zone": "udel"})
    message = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    findings = diagnose(Snapshot(pvc=pvc("Pending"), pods=[pod(unschedulable=message)], nodes=NODES), expect)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert "no node is in zone udel" in failure.message and "no nodes in the requested zone" in failure.remedy


def test_insufficient_gpus_in_the_zone():
    message = "0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node affinity/selector."
    findings = diagnose(Snapshot(pvc=pvc("Pending"), pods=[pod(unschedulable=message)], nodes=NODES), EXPECT)
    (failure,) = [f for f in findings if f.level == FAIL]
    assert "too few free GPUs of job.gpuProduct" in failure.remedy


def test_pod_in_the_wrong_zone_and_volume_in_the_wrong_zone():
    findings = diagnose(Snapshot(pvc=pvc(), pv=pv("gpu-sdsu-1", "sdsu"), pods=[pod("gpu-sdsu-1")], nodes=NODES), EXPECT)
    assert {f.check for f in findings if f.level == FAIL} == {"pod zone", "volume zone"}
    # The way out keeps the cached models: a move by copy, never "recreate it".
    (volume,) = [f for f in findings if f.check == "volume zone"]
    assert "mlcache:cache.relocate copy" in volume.remedy and "data loss" not in volume.remedy.lower()


def test_wrong_class_and_missing_pvc():
    findings = diagnose(Snapshot(pvc=pvc(storage_class="rook-ceph-block"), nodes=NODES), EXPECT)
    assert levels(findings, "storage class") == [FAIL]
    # A claim on the other backend (a switch not yet applied, or the kept claim heal restores from
    # after a protected move) is moved by copy, the models kept, as for a volume in the wrong zone.
    (wrong_class,) = [f for f in findings if f.check == "storage class"]
    assert "mlcache:cache.relocate copy" in wrong_class.remedy and "heal" in wrong_class.remedy
    assert "job.nodes 1" not in wrong_class.remedy


def test_the_way_out_of_a_misplaced_cache_is_one_the_guard_allows():
    """A move by copy where the guard starts one; a Block-mode cache, which it refuses to copy, is
    put back or re-created empty (said as data loss); a multi-node run goes to one node first."""

    def block(storage_class: str) -> dict:
        claim = pvc(storage_class=storage_class)
        return claim | {"spec": claim["spec"] | {"volumeMode": "Block"}}

    wrong_class = Snapshot(pvc=block("rook-ceph-block"), nodes=NODES)
    wrong_zone = Snapshot(pvc=block("linstor-fast-cache"), pv=pv("gpu-sdsu-1", "sdsu"), nodes=NODES)
    for snapshot in (wrong_class, wrong_zone):
        (misplaced,) = [f for f in diagnose(snapshot, EXPECT) if f.level == FAIL]
        assert "relocate copy" not in misplaced.remedy
        assert "Block-mode cache holds no files to copy" in misplaced.remedy and "relocate fresh" in misplaced.remedy
        assert "DATA LOSS" in misplaced.remedy and "cache.protect false" in misplaced.remedy
    run = RunExpectation("sft", ("ms-swift-cache-pvc", "ms-swift-cache-pvc-w1"), "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu", 4)
    multinode = Expectation(**{**EXPECT.__dict__, "run": run})
    findings = diagnose(Snapshot(pvc=pvc(storage_class="rook-ceph-block"), pv=pv("gpu-sdsu-1", "sdsu"), nodes=NODES), multinode)
    for check in ("storage class", "volume zone"):
        (misplaced,) = [f for f in findings if f.check == check]
        assert "set job.enabled false and job.nodes 1 (a move copies a single-node cache" in misplaced.remedy
    (missing,) = diagnose(Snapshot(pvc=None), EXPECT)
    assert missing.level == FAIL and "not found" in missing.message
    # A cache.name too long to name the copy's objects after (settings refuse copy for it): no move by copy.
    long_name = "c" * 45
    named = Expectation(**{**EXPECT.__dict__, "pvc": long_name})
    claim = pvc(storage_class="rook-ceph-block")
    snapshot = Snapshot(pvc=claim | {"metadata": claim["metadata"] | {"name": long_name}}, nodes=NODES)
    (misplaced,) = [f for f in diagnose(snapshot, named) if f.check == "storage class"]
    assert "relocate copy" not in misplaced.remedy and "relocate fresh" in misplaced.remedy
    assert "copy's objects are named after cache.name" in misplaced.remedy and "DATA LOSS" in misplaced.remedy


def test_rook_ceph_reports_network_storage_not_a_failure():
    expect = Expectation(**{**EXPECT.__dict__, "backend": "rook-ceph", "storage_class": "rook-ceph-block", "zone": None})
    rook_pv = as_api(client.V1PersistentVolume(metadata=client.V1ObjectMeta(name="pvc-9"), spec=client.V1PersistentVolumeSpec()))
    findings = diagnose(
        Snapshot(pvc=pvc(storage_class="rook-ceph-block", volume="pvc-9"), pv=rook_pv, pods=[pod("gpu-ucsd-1")], nodes=NODES),
        expect,
    )
    assert not any(f.level == FAIL for f in findings) and levels(findings, "locality") == [INFO]


def test_findings_render_with_remedies():
    text = render_findings(diagnose(Snapshot(pvc=pvc(), pv=pv("gpu-ucsd-2"), pods=[pod("gpu-ucsd-1")], nodes=NODES), EXPECT))
    assert "[FAIL] locality" in text and "remedy:" in text


@pytest.mark.parametrize(("stack", "namespace", "zone"), [("dev", "team-ns", None), ("prod", "ml-training", "ucsd")])
def test_expectation_comes_from_the_stacks_outputs(stack, namespace, zone):
    expect = expectation_from(*render_or_refuse(stack, [], []), kube_namespace="team-ns", stack=stack)
    assert expect.pvc == "ms-swift-cache-pvc" and expect.namespace == namespace and expect.zone == zone
    assert expect.storage_class == "linstor-fast-cache" and expect.job == "sft-qwen3vl-fire-4gpu" and expect.stack == stack


def test_node_loss_names_the_lost_node_what_is_lost_and_the_heal_command():
    expect = Expectation(**{**EXPECT.__dict__, "stack": "prod"})
    dead = api_node("gpu-ucsd-1", "ucsd", ready="Unknown")
    message = "0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 node(s) had untolerated taint."
    for nodes in ({"gpu-ucsd-1": dead}, {}):
        findings = diagnose(
            Snapshot(pvc=claim(), pv=volume("gpu-ucsd-1"), pods=[api_pod(unschedulable=message)], nodes=nodes), expect
        )
        (loss,) = [f for f in findings if f.level == FAIL]
        assert loss.check == "node loss" and "gpu-ucsd-1" in loss.message and "cannot be placed" in loss.message
        assert "only cache data" in loss.remedy and "`mlcache heal --stack prod` (a dry run" in loss.remedy
    # A protected cache (prod's) is healed only with --allow-protected: the command says so.
    protected = diagnose(Snapshot(pvc=claim(), pv=volume("gpu-ucsd-1"), nodes={}), replace(expect, protected=True))
    (loss,) = [f for f in protected if f.level == FAIL]
    assert "`mlcache heal --stack prod --allow-protected` (a dry run" in loss.remedy
    assert expectation_from(*render_or_refuse("prod", [], []), "x", "prod").protected  # read from the render
    bare = diagnose(Snapshot(pvc=claim(), pv=volume("gpu-ucsd-1"), nodes={"gpu-ucsd-1": dead}), expect)
    assert any(f.check == "node loss" and "NotReady (Ready=Unknown" in f.message for f in bare)


def test_a_pod_still_bound_to_the_lost_node_is_not_said_to_run_there():
    dead = api_node("gpu-ucsd-1", "ucsd", ready="Unknown")
    stuck = pod("gpu-ucsd-1")
    findings = diagnose(Snapshot(pvc=claim(), pv=volume("gpu-ucsd-1"), pods=[stuck], nodes={"gpu-ucsd-1": dead}), EXPECT)
    assert [f.level for f in findings if f.check == "training pod"] == [INFO]
    assert not [f for f in findings if f.level == OK and f.check in ("training pod", "locality")]
    assert any(f.check == "node loss" and f.level == FAIL for f in findings)


def test_a_ready_node_or_a_second_replica_is_no_node_loss():
    live = {"gpu-ucsd-1": api_node("gpu-ucsd-1", "ucsd"), "gpu-ucsd-2": api_node("gpu-ucsd-2", "ucsd", ready="Unknown")}
    for pv in (volume("gpu-ucsd-1"), volume("gpu-ucsd-1", "gpu-ucsd-2")):
        assert not [f for f in diagnose(Snapshot(pvc=claim(), pv=pv, nodes=live), EXPECT) if f.check == "node loss"]


def test_verify_as_json_carries_every_finding_and_the_verdict(monkeypatch, capsys):
    from mlcache.cli import verify as verify_command  # noqa: PLC0415

    failing = [Finding(OK, "storage class", "PVC uses linstor-fast-cache"), Finding(FAIL, "locality", "elsewhere", "move it")]

    def read_cluster(expect_for, provider, flag):
        return expect_for("team-ns"), failing, "https://10.0.0.1:6443"

    monkeypatch.setattr(verify_command, "read_cluster", read_cluster)
    code = verify_command.main(["--stack", "prod", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1 and document["ok"] is False and document["pvc"] == "ms-swift-cache-pvc"
    assert document["zone"] == "ucsd" and document["namespace"] == "ml-training"
    assert document["server"] == "https://10.0.0.1:6443"  # which cluster was read
    assert document["findings"][1] == {"level": "FAIL", "check": "locality", "message": "elsewhere", "remedy": "move it"}
    monkeypatch.setattr(verify_command, "read_cluster", lambda expect_for, provider, flag: (expect_for("x"), failing[:1], "h"))
    assert verify_command.main(["--stack", "prod", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert verify_command.main(["--stack", "prod"]) == 0
    assert capsys.readouterr().out.startswith(
        "stack prod: PVC ml-training/ms-swift-cache-pvc, class linstor-fast-cache, zone ucsd; read from h\n"
    )


def test_an_unreachable_api_server_is_named_with_the_cause_in_its_own_words():
    """Not urllib3's retry wrapper, URL and connection object: the server, and what went wrong."""
    from urllib3.connection import HTTPSConnection  # noqa: PLC0415
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError  # noqa: PLC0415

    from mlcache.cluster.kube import Kube  # noqa: PLC0415
    from mlcache.cluster.live import cluster_errors  # noqa: PLC0415
    from mlcache.errors import Unreachable  # noqa: PLC0415

    api = client.ApiClient(client.Configuration(host="https://10.0.0.1:6443"))
    connection = HTTPSConnection("10.0.0.1", 6443)
    for cause, words in [
        (
            ConnectTimeoutError(connection, "Connection to 10.0.0.1 timed out. (connect timeout=5)"),
            "Connection to 10.0.0.1 timed",
        ),
        (NewConnectionError(connection, "Failed to establish a new connection: [Errno 111] Connection refused"), "Failed to"),
    ]:
        with pytest.raises(Unreachable) as raised, cluster_errors(Kube(api)):
            raise MaxRetryError(None, "/api/v1/nodes", cause)
        assert str(raised.value).startswith(f"the API server at https://10.0.0.1:6443 cannot be reached: {words}")
