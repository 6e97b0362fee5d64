"""Moving the cache with cache.relocate copy, on the rehearsal cluster: the real engine, scheduler,
volume binder and Job controller; kwok completes every Job's pods at once (--complete-jobs), so a
copy Job completes as a verified copy would. What the copy pods do with the bytes is tested as real
processes on real files (tests/test_cache_copy.py); here, where they land, which claim each pod
mounts, and what each `up` keeps, creates and deletes, read back by UID."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from mlcache.cluster.bound_cache import mounted_claims
from mlcache.rehearsal.cluster import UpFailed
from tests.integration.conftest import ended, wait_for
from tests.integration.test_day2 import OUT_OF_SERVICE, kill_node, tool

SETTLE = 120.0
CLAIM = "ms-swift-cache-pvc"
NEW = f"{CLAIM}-g1"
COPY = f"{CLAIM}-copy-g1"
JOB = "sft-qwen3vl-fire-4gpu"
COMPLETE_JOBS = [{"complete_jobs": True}]


def training(report):
    (pod,) = [p for p in report.pods if p.role == "training"]
    return pod


def claims(rehearsal, namespace: str) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in rehearsal.view(namespace).claims}


def jobs(rehearsal, namespace: str) -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in rehearsal.view(namespace).jobs}


def copy_pods(rehearsal, namespace: str) -> dict[str, dict]:
    """role -> the copy pod of that role."""
    pods = client.CoreV1Api(rehearsal.api).list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=cache-copy")
    return {p.metadata.labels["mlcache/copy-role"]: rehearsal.api.sanitize_for_serialization(p) for p in pods.items}


def completed(rehearsal, namespace: str, name: str) -> bool:
    job = jobs(rehearsal, namespace).get(name)
    return any(c["type"] == "Complete" and c["status"] == "True" for c in (job or {}).get("status", {}).get("conditions") or [])


def zone_of(rehearsal, node: str) -> str:
    return rehearsal.view("default").nodes[node]["metadata"]["labels"]["topology.kubernetes.io/zone"]


@pytest.mark.parametrize("rehearsal", COMPLETE_JOBS, indirect=True)
def test_a_zone_move_copies_beside_the_old_volume_into_a_claim_bound_where_training_lands_then_switches(rehearsal):
    outputs = rehearsal.up("prod")
    namespace = outputs["namespace"]
    report = rehearsal.report("prod", outputs, SETTLE)
    old_node = training(report).node
    assert report.volume.zones == ["ucsd"] and report.volume.nodes == [old_node]
    before = claims(rehearsal, namespace)[CLAIM]
    training_uid = jobs(rehearsal, namespace)[JOB]["metadata"]["uid"]
    # A move starts once the run on the cache has finished (this cluster completes Job pods at once).
    wait_for(lambda: completed(rehearsal, namespace, JOB), SETTLE, "the training run completes")

    # The old volume's node cordoned, as before maintenance: only that node can read the volume, so
    # the sender still goes there (it tolerates the cordon; nothing else of the stack does).
    client.CoreV1Api(rehearsal.api).patch_node(old_node, {"spec": {"unschedulable": True}})

    # First up: the new claim and the copy; the old claim and the training Job untouched.
    outputs = rehearsal.up("prod", ["zone=sdsu", "cache.relocate=copy", "cache.protect=false"])
    assert outputs["cacheMove"]["state"] == "copying" and outputs["cacheMove"]["mode"] == "stream"
    assert outputs["pvcName"] == CLAIM
    wait_for(lambda: completed(rehearsal, namespace, COPY), SETTLE, "the copy Job completes")
    pods = copy_pods(rehearsal, namespace)
    assert pods["sender"]["spec"]["nodeName"] == old_node
    receiver_node = pods["receiver"]["spec"]["nodeName"]
    assert zone_of(rehearsal, receiver_node) == "sdsu"
    live = claims(rehearsal, namespace)
    assert live[CLAIM]["metadata"]["uid"] == before["metadata"]["uid"]
    assert live[CLAIM]["spec"]["volumeName"] == before["spec"]["volumeName"]
    assert live[NEW]["status"]["phase"] == "Bound" and live[NEW]["metadata"]["annotations"]["mlcache/copy-from"] == CLAIM
    new_volume = rehearsal.view(namespace).volumes[live[NEW]["spec"]["volumeName"]]
    pinned = new_volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert pinned == [receiver_node]
    running = jobs(rehearsal, namespace)
    assert running[JOB]["metadata"]["uid"] == training_uid and mounted_claims(running[JOB]) == [CLAIM]
    assert mounted_claims(running[f"{COPY}-send"]) == [CLAIM] and mounted_claims(running[COPY]) == [NEW]
    # The copy says which claim it filled (a claim made again under that name would be copied into again).
    assert running[COPY]["spec"]["template"]["metadata"]["annotations"]["mlcache/copy-into-uid"] == live[NEW]["metadata"]["uid"]

    # Next up, the copy verified: training on the new claim where it is bound; the old claim and the copy gone.
    outputs = rehearsal.up("prod", ["zone=sdsu", "cache.relocate=copy", "cache.protect=false"])
    assert outputs["cacheMove"]["state"] == "verified" and outputs["pvcName"] == NEW
    report = rehearsal.report("prod", outputs, SETTLE)
    moved = training(report)
    assert moved.node == receiver_node and moved.with_cache is True and report.exit_code == 0, report.problems
    assert set(claims(rehearsal, namespace)) == {NEW}
    assert claims(rehearsal, namespace)[NEW]["metadata"]["annotations"]["mlcache/switched-from"] == CLAIM  # the switch's mark
    assert set(jobs(rehearsal, namespace)) == {JOB} and mounted_claims(jobs(rehearsal, namespace)[JOB]) == [NEW]
    verify = tool(rehearsal, "verify", "--stack", "prod")
    assert verify.stdout.startswith(f"stack prod: PVC {namespace}/{NEW}, class linstor-fast-cache, zone sdsu")

    # Set back (relocate off, protected again): the move is over, nothing is replaced.
    after = claims(rehearsal, namespace)[NEW]["metadata"]["uid"]
    outputs = rehearsal.up("prod", ["zone=sdsu"])
    assert outputs.get("cacheMove") is None and claims(rehearsal, namespace)[NEW]["metadata"]["uid"] == after


@pytest.mark.parametrize("rehearsal", COMPLETE_JOBS, indirect=True)
def test_the_runbook_migration_from_rook_ceph_and_back_copies_in_one_pod_mounting_both_claims(rehearsal):
    outputs = rehearsal.up("dev", ["backend=rook-ceph"])
    namespace = outputs["namespace"]
    rook = claims(rehearsal, namespace)[CLAIM]
    assert rook["spec"]["storageClassName"] == "rook-ceph-block"

    outputs = rehearsal.up("dev", ["cache.relocate=copy"])
    assert outputs["cacheMove"]["mode"] == "local" and outputs["pvcName"] == CLAIM
    wait_for(lambda: completed(rehearsal, namespace, COPY), SETTLE, "the local copy Job completes")
    (only,) = copy_pods(rehearsal, namespace).values()
    assert only["metadata"]["labels"]["mlcache/copy-role"] == "local"
    live = claims(rehearsal, namespace)
    assert live[CLAIM]["metadata"]["uid"] == rook["metadata"]["uid"]
    # The new LINSTOR claim was bound by the copy pod (its first consumer), placed like training.
    new_volume = rehearsal.view(namespace).volumes[live[NEW]["spec"]["volumeName"]]
    assert new_volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        only["spec"]["nodeName"]
    ]

    outputs = rehearsal.up("dev", ["cache.relocate=copy"])
    report = rehearsal.report("dev", outputs, SETTLE)
    assert outputs["pvcName"] == NEW and training(report).node == only["spec"]["nodeName"] and report.exit_code == 0
    assert set(claims(rehearsal, namespace)) == {NEW}
    uids_of_classes = {name: c["metadata"]["uid"] for name, c in rehearsal.view(namespace).classes.items()}

    # And back (the rollback): the LINSTOR claim is node-local, the Rook-Ceph one attaches anywhere:
    # one pod beside the LINSTOR volume mounts both.
    linstor_node = only["spec"]["nodeName"]
    outputs = rehearsal.up("dev", ["cache.relocate=copy", "backend=rook-ceph"])
    assert outputs["cacheMove"]["mode"] == "local" and outputs["cacheMove"]["to"] == f"{CLAIM}-g2"
    wait_for(lambda: completed(rehearsal, namespace, f"{CLAIM}-copy-g2"), SETTLE, "the rollback copy completes")
    (back,) = copy_pods(rehearsal, namespace).values()
    assert back["spec"]["nodeName"] == linstor_node
    linstor_class = rehearsal.view(namespace).classes["linstor-fast-cache"]  # kept with the claim on it
    assert linstor_class["metadata"]["uid"] == uids_of_classes["linstor-fast-cache"]
    outputs = rehearsal.up("dev", ["cache.relocate=copy", "backend=rook-ceph"])
    assert outputs["pvcName"] == f"{CLAIM}-g2" and set(claims(rehearsal, namespace)) == {f"{CLAIM}-g2"}
    assert "linstor-fast-cache" not in rehearsal.view(namespace).classes  # retired with the claim
    assert claims(rehearsal, namespace)[f"{CLAIM}-g2"]["spec"]["storageClassName"] == "rook-ceph-block"


def uid(obj: dict) -> str:
    return obj["metadata"]["uid"]


def end_pods_until(rehearsal, namespace: str, job: str, phase: str, condition: str) -> None:
    """What the end of a Job's pods looks like to the Job controller (kwok runs nothing, so the test
    marks each placed pod `phase`, its containers terminated as a kubelet reports them) until the Job
    has `condition` (Complete, or Failed past backoffLimit).

    Each container reports it finished an hour ago, as a long copy does: the Job controller's retry
    backoff (10 s, doubling, counted from the last failure's finish) has then elapsed, and the
    retries follow at once instead of after 10 + 20 + 40 s."""
    core = client.CoreV1Api(rehearsal.api)
    finished = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def reached() -> bool:
        conditions = (jobs(rehearsal, namespace)[job].get("status") or {}).get("conditions") or []
        if any(c["type"] == condition and c["status"] == "True" for c in conditions):
            return True
        for pod in core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items:
            if pod.status.phase in ("Pending", "Running") and pod.spec.node_name:
                containers = [(c.name, c.image) for c in pod.spec.containers]
                core.patch_namespaced_pod_status(pod.metadata.name, namespace, ended(containers, phase, finished))
        return False

    wait_for(reached, SETTLE, f"Job {job} {condition}")


def test_a_running_copy_waits_a_failed_one_is_retried_and_putting_the_zone_back_calls_the_move_off(rehearsal):
    outputs = rehearsal.up("prod")
    namespace = outputs["namespace"]
    rehearsal.report("prod", outputs, SETTLE)
    move = ["zone=sdsu", "cache.relocate=copy", "cache.protect=false"]
    # No move starts while a run is on the cache: the copy would wait for its GPUs and race its writes.
    with pytest.raises(UpFailed) as refused:
        rehearsal.up("prod", move)
    assert f"Job {JOB} still runs on the cache" in str(refused.value)
    end_pods_until(rehearsal, namespace, JOB, "Succeeded", "Complete")
    outputs = rehearsal.up("prod", move)
    assert outputs["cacheMove"]["state"] == "copying"
    wait_for(lambda: len(copy_pods(rehearsal, namespace)) == 2, SETTLE, "both copy pods exist")
    before = {**claims(rehearsal, namespace), **jobs(rehearsal, namespace)}

    # The copy still runs: the next up changes nothing.
    outputs = rehearsal.up("prod", move)
    assert outputs["cacheMove"]["state"] == "copying" and outputs["pvcName"] == CLAIM
    now = {**claims(rehearsal, namespace), **jobs(rehearsal, namespace)}
    assert {name: uid(o) for name, o in now.items()} == {name: uid(o) for name, o in before.items()}
    # A new image in the middle of the move: the engine leaves the copy Jobs and training as they are
    # (ignore_changes until the switch, or until a failed copy is retried).
    outputs = rehearsal.up("prod", [*move, "job.image=nvcr.io/nvidia/pytorch:25.01-py3"])
    assert outputs["cacheMove"]["state"] == "copying"
    now = {**claims(rehearsal, namespace), **jobs(rehearsal, namespace)}
    assert {name: uid(o) for name, o in now.items()} == {name: uid(o) for name, o in before.items()}
    # A new run would train on the old claim after the copy read it: refused, nothing changed.
    with pytest.raises(UpFailed) as refused:
        rehearsal.up("prod", [*move, "job.runId=second-run"])
    assert "which is not in the cluster" in str(refused.value) and "Set job.enabled false until" in str(refused.value)
    now = {**claims(rehearsal, namespace), **jobs(rehearsal, namespace)}
    assert {name: uid(o) for name, o in now.items()} == {name: uid(o) for name, o in before.items()}
    # verify checks the claim training mounts, where it was made, and says what the move is doing.
    verify = tool(rehearsal, "verify", "--stack", "prod")
    assert verify.stdout.startswith(f"stack prod: PVC {namespace}/{CLAIM}, class linstor-fast-cache, zone ucsd")
    assert f"move: copying {namespace}/{CLAIM} -> {namespace}/{NEW} (Job {COPY}, attempt 1)" in verify.stdout

    # The copy fails: the next up retries it (attempt 2); the old claim and training are untouched.
    end_pods_until(rehearsal, namespace, COPY, "Failed", "Failed")
    outputs = rehearsal.up("prod", move)
    assert outputs["cacheMove"]["state"] == "failed" and outputs["cacheMove"]["attempt"] == 2
    now = {**claims(rehearsal, namespace), **jobs(rehearsal, namespace)}
    assert uid(now[CLAIM]) == uid(before[CLAIM]) and uid(now[JOB]) == uid(before[JOB]) and uid(now[NEW]) == uid(before[NEW])
    assert uid(now[COPY]) != uid(before[COPY])
    assert now[COPY]["spec"]["template"]["metadata"]["annotations"]["mlcache/copy-attempt"] == "2"

    # The zone put back: the move is called off, the new claim and the copy go, the cache stays.
    outputs = rehearsal.up("prod", ["cache.relocate=copy", "cache.protect=false"])
    assert outputs.get("cacheMove") is None and outputs["pvcName"] == CLAIM
    assert set(claims(rehearsal, namespace)) == {CLAIM} and uid(claims(rehearsal, namespace)[CLAIM]) == uid(before[CLAIM])
    assert set(jobs(rehearsal, namespace)) == {JOB} and uid(jobs(rehearsal, namespace)[JOB]) == uid(before[JOB])


@pytest.mark.parametrize("rehearsal", COMPLETE_JOBS, indirect=True)
def test_prods_protected_move_keeps_the_old_claim_refuses_a_move_back_and_retires_it_as_the_refusal_says(rehearsal):
    outputs = rehearsal.up("prod")  # prod: cache.protect true
    namespace = outputs["namespace"]
    wait_for(lambda: completed(rehearsal, namespace, JOB), SETTLE, "the training run completes")
    move = ["zone=sdsu", "cache.relocate=copy"]
    assert rehearsal.up("prod", move)["cacheMove"]["state"] == "copying"
    wait_for(lambda: completed(rehearsal, namespace, COPY), SETTLE, "the copy Job completes")

    # The switch: training on the new claim, the old one kept (protected), its copy's objects gone.
    outputs = rehearsal.up("prod", move)
    assert outputs["pvcName"] == NEW and outputs["cacheMove"]["oldKept"] is True
    kept = claims(rehearsal, namespace)
    assert set(kept) == {CLAIM, NEW} and set(jobs(rehearsal, namespace)) == {JOB}
    assert mounted_claims(jobs(rehearsal, namespace)[JOB]) == [NEW]
    uids = {name: claim["metadata"]["uid"] for name, claim in kept.items()}

    # Settings back to the old claim's: refused, nothing changed, with the way to retire the old claim.
    with pytest.raises(UpFailed) as refused:
        rehearsal.up("prod", ["cache.relocate=copy"])
    assert {n: c["metadata"]["uid"] for n, c in claims(rehearsal, namespace).items()} == uids
    (unprotect,) = re.findall(r"`(pulumi state unprotect '[^']+' --stack prod)`", str(refused.value))

    # Retired as the refusal says: unprotect it, cache.protect false for one up; the new claim stays.
    done = subprocess.run(
        [*shlex.split(unprotect), "--yes", "--non-interactive"],
        cwd=rehearsal.project,
        env={**os.environ, **rehearsal.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    outputs = rehearsal.up("prod", [*move, "cache.protect=false"])
    assert outputs["pvcName"] == NEW and outputs["cacheMove"]["oldKept"] is False
    wait_for(lambda: set(claims(rehearsal, namespace)) == {NEW}, SETTLE, "the old claim is deleted")
    assert claims(rehearsal, namespace)[NEW]["metadata"]["uid"] == uids[NEW]
    assert mounted_claims(jobs(rehearsal, namespace)[JOB]) == [NEW]


@pytest.mark.parametrize("rehearsal", COMPLETE_JOBS, indirect=True)
def test_node_loss_after_a_protected_move_restores_the_new_claim_from_the_kept_old_one_as_heal_says(rehearsal):
    """prod, first in sdsu, moves to ucsd and keeps its old claim in sdsu (cache.protect). The new
    claim's node dies: heal deletes the lost claim and the Job on it, and prints the steps that move
    the models from the kept claim into a new claim, which these ups follow: the copy runs from the
    kept claim's node into a claim bound on the other ucsd A100 node, then training switches to it;
    the kept claim keeps its UID."""
    outputs = rehearsal.up("prod", ["zone=sdsu"])
    namespace = outputs["namespace"]
    wait_for(lambda: completed(rehearsal, namespace, JOB), SETTLE, "the training run completes")
    kept_node = training(rehearsal.report("prod", outputs, SETTLE)).node
    move = ["zone=ucsd", "cache.relocate=copy"]
    rehearsal.up("prod", move)
    wait_for(lambda: completed(rehearsal, namespace, COPY), SETTLE, "the copy Job completes")
    outputs = rehearsal.up("prod", move)
    assert outputs["pvcName"] == NEW and outputs["cacheMove"]["oldKept"] is True
    wait_for(lambda: completed(rehearsal, namespace, JOB), SETTLE, "the run on the new claim completes")
    lost = claims(rehearsal, namespace)
    kept_uid = lost[CLAIM]["metadata"]["uid"]
    (dead,) = rehearsal.view(namespace).volumes[lost[NEW]["spec"]["volumeName"]]["spec"]["nodeAffinity"]["required"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]["values"]

    kill_node(rehearsal, dead)
    taints = rehearsal.core.read_node(dead).spec.taints or []
    rehearsal.core.patch_node(dead, {"spec": {"taints": [t.to_dict() for t in taints] + [OUT_OF_SERVICE.to_dict()]}})
    healed = tool(rehearsal, "heal", "--stack", "prod", "--apply", "--allow-protected")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert f"healed: claim {namespace}/{NEW} deleted; restore it from {CLAIM} with these steps:" in healed.stdout
    steps = re.findall(r"^  \d+\. (.*)$", healed.stdout.split("with these steps:")[1], re.M)
    assert len(steps) == 4 and steps[0].startswith("pulumi config set --path mlcache:job.enabled false --stack prod")
    assert set(claims(rehearsal, namespace)) == {CLAIM} and JOB not in jobs(rehearsal, namespace)

    # An up that skips the first step is refused, nothing changed: a run would bind the new claim empty.
    with pytest.raises(UpFailed, match=re.escape("Set job.enabled false until")):
        rehearsal.up("prod", move)
    assert set(claims(rehearsal, namespace)) == {CLAIM} and JOB not in jobs(rehearsal, namespace)

    # The steps: training off, the move from the kept claim, verified; then training on.
    outputs = rehearsal.up("prod", [*move, "job.enabled=false"], refresh=True)
    assert outputs["cacheMove"]["state"] == "copying" and outputs["cacheMove"]["mode"] == "stream"
    wait_for(lambda: completed(rehearsal, namespace, COPY), SETTLE, "the copy from the kept claim completes")
    pods = copy_pods(rehearsal, namespace)
    assert pods["sender"]["spec"]["nodeName"] == kept_node
    receiver_node = pods["receiver"]["spec"]["nodeName"]
    assert receiver_node != dead and zone_of(rehearsal, receiver_node) == "ucsd"
    assert mounted_claims(jobs(rehearsal, namespace)[f"{COPY}-send"]) == [CLAIM]
    outputs = rehearsal.up("prod", move)
    assert outputs["pvcName"] == NEW and outputs["cacheMove"]["oldKept"] is True
    report = rehearsal.report("prod", outputs, SETTLE)
    assert training(report).node == receiver_node and training(report).with_cache is True, report.problems
    now = claims(rehearsal, namespace)
    assert set(now) == {CLAIM, NEW} and now[CLAIM]["metadata"]["uid"] == kept_uid
    assert now[NEW]["metadata"]["uid"] != lost[NEW]["metadata"]["uid"]
    assert mounted_claims(jobs(rehearsal, namespace)[JOB]) == [NEW]
