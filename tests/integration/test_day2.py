"""Day-2 hazards, observed on the rehearsal cluster (issue: day-2 hazards of a zone-local cache).

Every stack goes up through mlcache rehearse (the real `pulumi up`); the real kube-scheduler, volume
binder, job and node-lifecycle controllers place things and notice a dead node; the LINSTOR
provisioner stand-in pins each volume to its node. The tests read UIDs, nodes and zones back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlcache.preview.stack_config import load_stack_config
from mlcache.rehearsal.cluster import UpFailed
from tests.integration.conftest import ROOT, wait_for

SETTLE = 120.0
CLAIM = "ms-swift-cache-pvc"
JOB = "sft-qwen3vl-fire-4gpu"
OUT_OF_SERVICE = client.V1Taint(key="node.kubernetes.io/out-of-service", value="nodeshutdown", effect="NoExecute")


def training(report):
    (pod,) = [p for p in report.pods if p.role == "training"]
    return pod


def uids(rehearsal, namespace: str) -> dict[str, str]:
    """Kind/name -> UID of every object the stack manages, and the cache's PV."""
    view = rehearsal.view(namespace)
    found = {f"Job/{j['metadata']['name']}": j["metadata"]["uid"] for j in view.jobs}
    found.update({f"PersistentVolumeClaim/{c['metadata']['name']}": c["metadata"]["uid"] for c in view.claims})
    found.update({f"StorageClass/{n}": c["metadata"]["uid"] for n, c in view.classes.items() if n.startswith("linstor")})
    for claim in view.claims:
        if claim["spec"].get("volumeName"):
            found["PersistentVolume"] = claim["spec"]["volumeName"]
    for kind, listing in (
        ("ConfigMap", client.CoreV1Api(rehearsal.api).list_namespaced_config_map(namespace).items),
        ("NetworkPolicy", client.NetworkingV1Api(rehearsal.api).list_namespaced_network_policy(namespace).items),
    ):
        found.update({f"{kind}/{o.metadata.name}": o.metadata.uid for o in listing if o.metadata.name.startswith("mlcache")})
    return found


def tool(rehearsal, command: str, *args: str) -> subprocess.CompletedProcess:
    """`mlcache COMMAND` run as users run it: in the rehearsal's project, against the rehearsal cluster."""
    return subprocess.run(
        [sys.executable, "-m", "mlcache", command, *args],
        cwd=rehearsal.project,
        env={**os.environ, **rehearsal.env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def kill_node(rehearsal, name: str) -> None:
    """The node stops: its kubelet no longer reports (scripts/local-cluster kill-node)."""
    killed = subprocess.run(
        [str(ROOT / "scripts" / "local-cluster"), "kill-node", str(rehearsal.cluster), name],
        env={**os.environ, **rehearsal.env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == 0, killed.stderr


def healed_report(rehearsal, outputs):
    """The report once the healed training pod is placed. After a heal the Job controller makes a new
    pod; until it is scheduled there is nothing "moving" to wait for, so a report taken too early
    (seen under load) shows the pod unplaced or no pod."""

    def placed():
        report = rehearsal.report("prod", outputs, SETTLE)
        pods = [p for p in report.pods if p.role == "training"]
        return report if len(pods) == 1 and pods[0].node else None

    return wait_for(placed, SETTLE, "the healed training pod placed")


def test_zone_change_is_refused_with_nothing_changed_and_relocate_moves_the_cache(rehearsal):
    outputs = rehearsal.up("prod")
    namespace = outputs["namespace"]
    report = rehearsal.report("prod", outputs, SETTLE)
    bound = training(report)
    assert bound.zone == "ucsd" and report.volume.zones == ["ucsd"] and report.volume.nodes == [bound.node], bound.reason
    before = uids(rehearsal, namespace)

    with pytest.raises(UpFailed) as refused:
        rehearsal.up("prod", ["zone=sdsu"])
    message = str(refused.value)
    assert "bound-cache guard" in message and f"node {bound.node} (zone ucsd" in message
    assert "configured placement (zone sdsu" in message and "Nothing was changed" in message
    assert "mlcache:zone ucsd or unset" in message and "mlcache:cache.relocate copy" in message
    assert "mlcache:cache.relocate fresh" in message
    assert uids(rehearsal, namespace) == before

    outputs = rehearsal.up("prod", ["zone=sdsu", "cache.relocate=true", "cache.protect=false"])
    report = rehearsal.report("prod", outputs, SETTLE)
    moved = training(report)
    assert moved.zone == "sdsu" and report.volume.zones == ["sdsu"] and report.volume.nodes == [moved.node], moved.reason
    assert moved.with_cache is True and report.exit_code == 0, report.problems
    after = uids(rehearsal, namespace)
    assert after["PersistentVolume"] != before["PersistentVolume"]
    assert after[f"PersistentVolumeClaim/{CLAIM}"] != before[f"PersistentVolumeClaim/{CLAIM}"]
    assert after["StorageClass/linstor-fast-cache"] == before["StorageClass/linstor-fast-cache"]

    # Set back (relocate off, protected again): nothing is replaced.
    rehearsal.up("prod", ["zone=sdsu"])
    assert uids(rehearsal, namespace) == after


def test_node_loss_verify_diagnoses_heal_recreates_the_claim_and_training_lands_in_the_same_zone(rehearsal):
    outputs = rehearsal.up("prod")
    namespace = outputs["namespace"]
    report = rehearsal.report("prod", outputs, SETTLE)
    first = training(report)
    assert first.zone == "ucsd" and report.volume.nodes == [first.node], first.reason
    before = uids(rehearsal, namespace)

    kill_node(rehearsal, first.node)

    verify = tool(rehearsal, "verify", "--stack", "prod")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "[FAIL] node loss" in verify.stdout and first.node in verify.stdout
    assert "only cache data" in verify.stdout and "mlcache heal --stack prod" in verify.stdout
    as_json = json.loads(tool(rehearsal, "verify", "--stack", "prod", "--json").stdout)
    assert as_json["ok"] is False and as_json["pvc"] == CLAIM
    assert any(f["level"] == "FAIL" and f["check"] == "node loss" and first.node in f["message"] for f in as_json["findings"])

    # Not yet proven gone (it only stopped reporting), and prod protects its cache.
    unproven = tool(rehearsal, "heal", "--stack", "prod", "--apply", "--allow-protected")
    assert unproven.returncode == 1 and f"cannot prove node {first.node} is gone" in unproven.stdout
    # The operator checks the machine is off and says so the Kubernetes way (non-graceful shutdown).
    taints = rehearsal.core.read_node(first.node).spec.taints or []
    rehearsal.core.patch_node(first.node, {"spec": {"taints": [t.to_dict() for t in taints] + [OUT_OF_SERVICE.to_dict()]}})
    protected = tool(rehearsal, "heal", "--stack", "prod", "--apply")
    assert protected.returncode == 1 and "--allow-protected" in protected.stdout
    dry = tool(rehearsal, "heal", "--stack", "prod")
    assert dry.returncode == 1 and "--allow-protected" in dry.stdout
    assert "with --allow-protected it would:" in dry.stdout and f"delete claim {namespace}/{CLAIM}" in dry.stdout
    dry_json = tool(rehearsal, "heal", "--stack", "prod", "--allow-protected", "--json")
    plan = json.loads(dry_json.stdout)
    assert dry_json.returncode == 0 and plan["applied"] is False and plan["plan"]["dead_node"] == first.node
    assert plan["plan"]["refusal"] is None and plan["claim"] == CLAIM
    assert uids(rehearsal, namespace)[f"PersistentVolumeClaim/{CLAIM}"] == before[f"PersistentVolumeClaim/{CLAIM}"]

    # A setting changed since the last up (not applied yet): heal's up re-creates the claim alone
    # (--target), so it does not replace the training Job with 2 GPUs behind the user's back.
    rehearsal.configure("prod", load_stack_config("prod", ["job.gpus=2"]))
    healed = tool(rehearsal, "heal", "--stack", "prod", "--apply", "--allow-protected")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "node loss proven" in healed.stdout and "out-of-service" in healed.stdout
    assert f"healed: claim {namespace}/{CLAIM} re-created" in healed.stdout
    assert "--target 'urn:pulumi:prod::mlcache::" in healed.stderr  # quoted: a URN holds `$`

    report = healed_report(rehearsal, outputs)
    again = training(report)
    assert again.node != first.node and again.zone == "ucsd" and report.volume.nodes == [again.node], again.reason
    assert again.with_cache is True
    after = uids(rehearsal, namespace)
    assert after["PersistentVolume"] != before["PersistentVolume"]
    assert after[f"PersistentVolumeClaim/{CLAIM}"] != before[f"PersistentVolumeClaim/{CLAIM}"]
    unchanged = {k: v for k, v in before.items() if not k.startswith(("PersistentVolume",))}
    assert {k: after[k] for k in unchanged} == unchanged  # the Job, the class and the rest were not replaced


def test_drift_check_passes_untouched_and_names_an_object_edited_through_the_api(rehearsal):
    outputs = rehearsal.up("prod")
    namespace = outputs["namespace"]
    rehearsal.report("prod", outputs, SETTLE)
    clean = tool(rehearsal, "drift", "--stack", "prod")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no drift" in clean.stdout

    core, batch = rehearsal.core, client.BatchV1Api(rehearsal.api)
    # A started Job's pod template (its affinity) is immutable: the API server refuses the edit.
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    with pytest.raises(ApiException) as immutable:
        batch.patch_namespaced_job(JOB, namespace, {"spec": {"template": {"spec": {"affinity": affinity}}}})
    assert immutable.value.status == 422 and "immutable" in immutable.value.body
    # Its labels are not: an edit of one the stack sets is drift.
    batch.patch_namespaced_job(JOB, namespace, {"metadata": {"labels": {"app.kubernetes.io/managed-by": "kubectl"}}})
    job_drift = tool(rehearsal, "drift", "--stack", "prod")
    assert job_drift.returncode == 1, job_drift.stdout + job_drift.stderr
    assert f"Job/{JOB}" in job_drift.stdout and "app.kubernetes.io/managed-by" in job_drift.stdout

    # So is one of the PVC's labels; the PVC's ownership conflict does not hide the Job's drift.
    core.patch_namespaced_persistent_volume_claim(
        CLAIM, namespace, {"metadata": {"labels": {"app.kubernetes.io/part-of": "someone-else"}}}
    )
    both = tool(rehearsal, "drift", "--stack", "prod")
    assert both.returncode == 1, both.stdout + both.stderr
    assert f"PersistentVolumeClaim/{CLAIM}" in both.stdout and f"Job/{JOB}" in both.stdout and "DRIFT in 2" in both.stdout

    # The remedy it prints puts the stack's values back (--yes etc.: as a script runs it, unprompted).
    remedy = "PULUMI_K8S_ENABLE_PATCH_FORCE=true pulumi up --refresh --stack prod"
    assert f"`{remedy}`" in both.stdout
    restored = subprocess.run(
        [str(rehearsal.bin_dir / "pulumi"), "up", "--refresh", "--stack", "prod", "--yes", "--skip-preview", "--non-interactive"],
        cwd=rehearsal.project,
        env={**os.environ, **rehearsal.env, "PULUMI_K8S_ENABLE_PATCH_FORCE": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    clean_again = tool(rehearsal, "drift", "--stack", "prod")
    assert clean_again.returncode == 0, clean_again.stdout + clean_again.stderr
    labels = batch.read_namespaced_job(JOB, namespace).metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "pulumi"


DURABLE = f"{CLAIM}-durable"
REFRESH = f"{CLAIM}-durable-refresh"


@pytest.mark.parametrize("rehearsal", [{"complete_copies": True}], indirect=True)
def test_node_loss_with_a_durable_copy_heal_restores_from_it_on_a_healthy_node(rehearsal):
    """cache.durableCopy: the refresh runs beside the bound cache (kwok completes only copy pods, as a
    verified refresh would; training keeps running), then the node dies and heal re-creates the
    claim: the new training pod restores from the durable copy, which survived with its UID."""
    settings = ["cache.durableCopy=true", "cache.prefetch=[Qwen/Qwen3-VL-8B-Instruct]"]
    outputs = rehearsal.up("prod", settings)
    namespace = outputs["namespace"]
    assert outputs["durableCopy"]["claim"] == DURABLE
    report = rehearsal.report("prod", outputs, SETTLE)
    first = training(report)
    assert first.zone == "ucsd" and report.volume.nodes == [first.node], first.reason
    # The next up reads the cache bound and adds the refresh beside it; training is not replaced.
    job_uid = uids(rehearsal, namespace)[f"Job/{JOB}"]
    outputs = rehearsal.up("prod", settings)

    def refreshed():
        jobs = {j["metadata"]["name"]: j for j in rehearsal.view(namespace).jobs}
        conditions = (jobs.get(REFRESH) or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)

    wait_for(refreshed, SETTLE, "the durable refresh completes")
    view = rehearsal.view(namespace)
    (refresh_pod,) = [p for p in view.pods if p["metadata"].get("labels", {}).get("job-name") == REFRESH]
    assert refresh_pod["spec"]["nodeName"] == first.node  # beside the cache volume
    assert uids(rehearsal, namespace)[f"Job/{JOB}"] == job_uid
    verify = json.loads(tool(rehearsal, "verify", "--stack", "prod", "--json").stdout)
    (durable,) = [f for f in verify["findings"] if f["check"] == "durable copy"]
    assert durable["level"] == "ok" and "node loss restores from it" in durable["message"]
    before = uids(rehearsal, namespace)

    kill_node(rehearsal, first.node)
    taints = rehearsal.core.read_node(first.node).spec.taints or []
    rehearsal.core.patch_node(first.node, {"spec": {"taints": [t.to_dict() for t in taints] + [OUT_OF_SERVICE.to_dict()]}})
    dry = json.loads(tool(rehearsal, "heal", "--stack", "prod", "--allow-protected", "--json").stdout)
    assert dry["plan"]["restores_from"] == DURABLE
    healed = tool(rehearsal, "heal", "--stack", "prod", "--apply", "--allow-protected")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert f"copies the durable copy {DURABLE} (refreshed " in healed.stdout
    assert f"restores the durable copy {DURABLE}" in healed.stdout

    report = healed_report(rehearsal, outputs)
    again = training(report)
    assert again.node != first.node and again.zone == "ucsd" and report.volume.nodes == [again.node], again.reason
    pod = next(p for p in rehearsal.view(namespace).pods if f"{namespace}/{p['metadata']['name']}" == again.pod)
    assert [c["name"] for c in pod["spec"]["initContainers"]][:2] == ["restore", "prefetch"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if v.get("persistentVolumeClaim")}
    assert claims == {CLAIM, DURABLE}
    after = uids(rehearsal, namespace)
    assert after[f"PersistentVolumeClaim/{DURABLE}"] == before[f"PersistentVolumeClaim/{DURABLE}"]  # the copy survived
    assert after[f"PersistentVolumeClaim/{CLAIM}"] != before[f"PersistentVolumeClaim/{CLAIM}"]
    assert after[f"Job/{JOB}"] == before[f"Job/{JOB}"]
