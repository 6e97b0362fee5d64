"""Moving the cache (cache.relocate copy): what the guard decides from the live claims, and what
the program then registers, read from the requests the engine would receive."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from pulumi import RunError

from mlcache.cluster import bound_cache
from mlcache.cluster.bound_cache import COPYING, FAILED, HELD, LOCAL, STREAM, VERIFIED, LiveCache, PlacementRecord, Wanted, judge
from mlcache.cluster.diagnosis import Expectation, follow_move
from mlcache.preview.mock_engine import ProgramRun, is_secret_envelope, run_program
from mlcache.preview.render import render
from mlcache.preview.stack_config import load_stack_config
from mlcache.program.names import LABELS
from mlcache.program.schema import ConfigError
from tests.api_objects import A100, CLAIM, NAMESPACE, claim, node, storage_class, volume
from tests.conftest import only, rendered
from tests.test_bound_cache import WANTED as BOUND_CACHE_WANTED

UCSD, SDSU = node("gpu-ucsd-1", "ucsd"), node("gpu-sdsu-1", "sdsu")
NEW = f"{CLAIM}-g1"
# The prod cache bound in ucsd (tests/test_bound_cache.py), asked to move to sdsu by copy.
WANTED = dataclasses.replace(BOUND_CACHE_WANTED, placement=PlacementRecord("sdsu", A100), relocate="copy")
ROOK = "rook-ceph-block"
RUN = "sft-qwen3vl-fire-4gpu"  # prod's training Job
COPIES = (f"{CLAIM}-copy-g1", f"{CLAIM}-copy-g1-send")  # the receiver's Job and the sender's


def wanted(**changes) -> Wanted:
    return dataclasses.replace(WANTED, **changes)


def bound_in_ucsd(**claim_fields) -> LiveCache:
    return LiveCache(NAMESPACE, claim(**claim_fields), volume("gpu-ucsd-1"), [UCSD], storage_class())


def on_rook_ceph() -> LiveCache:
    """The runbook's first state: the cache on Rook-Ceph, a network volume with no node affinity."""
    return LiveCache(NAMESPACE, claim(storage_class=ROOK), volume(), [], None)


def copy_job(condition: str | None, attempt: int = 1, ready: int = 0, failed: int = 0) -> dict:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    annotations = {"mlcache/copy-attempt": str(attempt)}
    counts = {key: value for key, value in (("ready", ready), ("failed", failed)) if value}
    return {
        "metadata": {"name": f"{CLAIM}-copy-g1"},
        "spec": {"template": {"metadata": {"annotations": annotations}}},
        "status": {"conditions": conditions, **counts},
    }


def under_way(
    condition: str | None = None, attempt: int = 1, new_phase: str = "Bound", ready: int = 0, failed: int = 0
) -> LiveCache:
    """ucsd's claim (generation 0) being copied into sdsu's (generation 1)."""
    target = claim(name=NEW, placement=f"zone=sdsu gpuProduct={A100}", phase=new_phase, volume="pvc-9f8e")
    return LiveCache(
        NAMESPACE,
        target,
        volume("gpu-sdsu-1", name="pvc-9f8e"),
        [SDSU],
        storage_class(),
        1,
        bound_in_ucsd(),
        copy_job(condition, attempt, ready, failed),
    )


# --- the guard -------------------------------------------------------------------------------


def test_a_zone_the_bound_volume_cannot_reach_starts_a_streamed_move_and_keeps_training_on_the_old_claim():
    verdict = judge(WANTED, bound_in_ucsd())
    assert verdict.refusal is None and verdict.generation == 1
    move = verdict.move
    assert move.state == COPYING and move.mode == STREAM and move.generation == 1 and not move.switched
    assert move.source.name == CLAIM and move.source.nodes == ("gpu-ucsd-1",) and move.source.pinned
    assert move.source.placement == PlacementRecord("ucsd", A100) and move.source.size == "500Gi"
    (note,) = verdict.notes
    assert f"copied into the new claim {NAMESPACE}/{NEW}" in note and "training stays on" in note
    assert "pulumi up` again" in note


def test_without_copy_the_same_change_is_still_refused_and_offers_copy_first():
    refusal = judge(wanted(relocate="false"), bound_in_ucsd()).refusal
    assert "Nothing was changed" in refusal
    assert refusal.index("mlcache:cache.relocate copy") < refusal.index("mlcache:cache.relocate fresh")


def test_a_shrink_or_an_expansion_the_class_refuses_moves_but_a_growth_it_allows_expands_in_place():
    assert judge(wanted(placement=PlacementRecord("ucsd", A100), size="100Gi"), bound_in_ucsd()).move.generation == 1
    no_expansion = wanted(placement=PlacementRecord("ucsd", A100), size="1Ti", expansion_allowed=False)
    assert judge(no_expansion, bound_in_ucsd()).move is not None
    grown = judge(wanted(placement=PlacementRecord("ucsd", A100), size="1Ti"), bound_in_ucsd())
    assert grown.move is None and grown.refusal is None and grown.generation == 0


def test_the_runbook_migration_from_rook_ceph_is_one_local_pod_and_the_rollback_too():
    migration = judge(wanted(placement=PlacementRecord("ucsd", A100)), on_rook_ceph()).move
    assert migration.mode == LOCAL and not migration.source.pinned and migration.source.backend == "linstor"
    rollback = judge(wanted(storage_class=ROOK, backend="rook-ceph", placement=PlacementRecord("ucsd", A100)), bound_in_ucsd())
    assert rollback.move.mode == LOCAL and rollback.move.source.nodes == ("gpu-ucsd-1",)


@pytest.mark.parametrize(("made_class", "refused"), [("linstor-fast-cache", False), ("other-class", True), (None, True)])
def test_a_move_off_linstor_keeps_the_settings_that_make_the_old_claims_class(made_class, refused):
    """The class the stack made (its labels say so) stays while the old claim on it stays: a rename
    or manageStorageClass false in the same change would drop it, so it is refused."""
    made = {**storage_class(), "metadata": {"name": "linstor-fast-cache", "labels": dict(LABELS)}}
    live = LiveCache(NAMESPACE, claim(), volume("gpu-ucsd-1"), [UCSD], made)
    rollback = wanted(storage_class=ROOK, backend="rook-ceph", made_class=made_class)
    for current in (live, under_way_off_linstor(live)):
        verdict = judge(rollback, current)
        assert (verdict.refusal is not None) == refused
        if refused:
            assert "Keep linstor.storageClassName linstor-fast-cache and linstor.manageStorageClass true" in verdict.refusal
            assert "Nothing was changed" in verdict.refusal


def under_way_off_linstor(source: LiveCache) -> LiveCache:
    """`source` being copied into a Rook-Ceph claim of generation 1."""
    target = claim(name=NEW, storage_class=ROOK, volume="pvc-9f8e", placement=f"zone=sdsu gpuProduct={A100}")
    return LiveCache(NAMESPACE, target, volume(name="pvc-9f8e"), [], None, 1, source, copy_job(None))


def test_nothing_to_copy_is_refused_in_one_line():
    block = judge(wanted(), bound_in_ucsd(volume_mode="Block")).refusal
    assert "Block-mode volume" in block and "Nothing was changed" in block
    gone = LiveCache(NAMESPACE, claim(), volume("gpu-ucsd-1"), [], storage_class())
    refusal = judge(wanted(), gone).refusal
    assert "nothing left to copy from" in refusal and "mlcache heal --stack prod" in refusal
    # The heal command as the stack needs it: a protected cache is healed with --allow-protected.
    assert "`mlcache heal --stack prod --allow-protected`" in judge(wanted(protect=True), gone).refusal
    assert "`mlcache heal --stack prod`" in judge(wanted(protect=False), gone).refusal
    # Not bound yet: nothing is cached, so no move: the claim simply follows (as without copy).
    pending = judge(wanted(), LiveCache(NAMESPACE, claim(phase="Pending"))).move
    assert pending is None


@pytest.mark.parametrize(
    ("condition", "state", "attempt", "switched"),
    [(None, COPYING, 1, False), ("Failed", FAILED, 3, False), ("Complete", VERIFIED, 2, True)],
)
def test_a_move_under_way_waits_retries_or_switches_by_the_copy_jobs_condition(condition, state, attempt, switched):
    verdict = judge(WANTED, under_way(condition, attempt=2 if condition else 1))
    assert verdict.refusal is None and verdict.generation == 1
    move = verdict.move
    assert (move.state, move.attempt, move.switched) == (state, attempt, switched)
    assert move.copying is not switched and move.source.name == CLAIM
    if state == FAILED:
        assert "retries it as attempt 3, resuming" in verdict.notes[0]
    if state == VERIFIED:
        assert "training switches to it" in verdict.notes[0] and f"{CLAIM} is deleted" in verdict.notes[0]


def test_a_verified_move_keeps_a_protected_old_claim_until_unprotected():
    move = judge(wanted(protect=True), under_way("Complete")).move
    assert move.switched and move.keep_source and move.keeps_source and not move.copying
    assert (
        "pulumi state unprotect 'urn:pulumi:prod::mlcache::mlcache:index:CacheVolume$"
        in judge(wanted(protect=True), under_way("Complete")).notes[0]
    )


def test_putting_the_settings_back_calls_the_move_off_and_anything_else_is_refused():
    off = judge(wanted(placement=PlacementRecord("ucsd", A100)), under_way())
    assert off.move is None and off.generation == 0 and "called off" in off.notes[0]
    refusal = judge(wanted(placement=PlacementRecord("sdsc", A100)), under_way()).refusal
    assert "under way (copy copying)" in refusal and "describe neither claim" in refusal and "Nothing was changed" in refusal


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mode"), [("true", "fresh"), (True, "fresh"), ("false", "false"), (False, "false"), ("copy", "copy")]
)
def test_relocate_keeps_its_old_spellings(given, mode):
    from mlcache.program.schema import parse_section  # noqa: PLC0415
    from mlcache.program.settings import CacheSettings  # noqa: PLC0415

    assert parse_section("cache", {"relocate": given}, CacheSettings).relocate == mode


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["cache.relocate=copy", "cache.volumeMode=Block"], "cache.relocate", "false or fresh in Block mode"),
        (["cache.relocate=copy", "job.nodes=2"], "cache.relocate", "false or fresh with job.nodes 2"),
        (["cache.relocate=copy", f"cache.name={'c' * 45}"], "cache.name", "at most 44 characters"),
        (["cache.relocate=move"], "cache.relocate", "one of false, copy, fresh, true (= fresh)"),
    ],
)
def test_a_copy_that_cannot_be_made_is_refused_before_anything_is_registered(overrides, key, allowed):
    with pytest.raises(ConfigError) as refused:
        render("prod", overrides, [])
    assert f"mlcache:{key}" in str(refused.value) and allowed in str(refused.value)


# --- the program, given live claims ------------------------------------------------------------


def render_against(monkeypatch, live: LiveCache, *overrides: str):
    """The program as `pulumi up` runs it against a cluster holding `live` and, unless it says
    otherwise, prod's training Job as deployed: finished, on the claim training runs on."""
    if live.training_job is None and not live.consumers:
        live = dataclasses.replace(live, training_job=finished_on((live.older or live).claim["metadata"]["name"]))
    monkeypatch.setattr(bound_cache, "_under_mock_engine", lambda: False)
    monkeypatch.setattr(bound_cache, "read_live_cache", lambda *args, **kwargs: live)
    run, _ = render("prod", ["zone=sdsu", "cache.relocate=copy", *overrides], [])
    return run


def named(run, kind: str) -> dict:
    return {r.object_name: r for r in run.find(kind)}


def affinity_values(spec: dict) -> dict[str, list[str]]:
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}


def test_the_first_up_of_a_move_adds_the_new_claim_and_the_copy_and_leaves_the_old_claim_and_training(monkeypatch):
    run = render_against(monkeypatch, bound_in_ucsd())
    claims = named(run, "PersistentVolumeClaim")
    assert set(claims) == {CLAIM, NEW}
    old, new = claims[CLAIM], claims[NEW]
    assert old.name == "cache-pvc" and old.ignore_changes == ["metadata", "spec"] and old.protect
    assert old.inputs["metadata"]["annotations"]["mlcache/placement"] == f"zone=ucsd gpuProduct={A100}"
    assert new.name == "cache-pvc-g1" and new.inputs["metadata"]["annotations"]["mlcache/copy-from"] == CLAIM
    assert new.inputs["metadata"]["annotations"]["mlcache/placement"] == f"zone=sdsu gpuProduct={A100}"

    jobs = named(run, "Job")
    training = jobs["sft-qwen3vl-fire-4gpu"].inputs["spec"]["template"]["spec"]
    assert training["volumes"][0]["persistentVolumeClaim"]["claimName"] == CLAIM
    assert affinity_values(training)["topology.kubernetes.io/zone"] == ["ucsd"]

    sender = jobs[f"{CLAIM}-copy-g1-send"].inputs["spec"]["template"]
    receiver = jobs[f"{CLAIM}-copy-g1"].inputs["spec"]["template"]
    for pod, role in ((sender, "sender"), (receiver, "receiver")):
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "cache-copy"
        assert pod["metadata"]["labels"]["mlcache/copy-role"] == role
        assert pod["spec"]["containers"][0]["image"] == training["containers"][0]["image"]
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert affinity_values(sender["spec"]) == {"kubernetes.io/hostname": ["gpu-ucsd-1"]}
    assert sender["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == CLAIM
    assert sender["spec"]["containers"][0]["volumeMounts"][0] == {"name": "cache", "mountPath": "/cache", "readOnly": True}
    assert "nvidia.com/gpu" not in sender["spec"]["containers"][0]["resources"]["limits"]
    # The receiver asks for exactly what training asks, where training will run.
    assert affinity_values(receiver["spec"]) == affinity_values(training) | {"topology.kubernetes.io/zone": ["sdsu"]}
    assert receiver["spec"]["containers"][0]["resources"] == training["containers"][0]["resources"]
    assert receiver["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == NEW
    command = receiver["spec"]["containers"][0]["command"]
    assert command[2:7] == ["receive", "--root", "/cache", "--source", f"{CLAIM}-copy-g1:7700"]

    (policy,) = [p for p in run.find("NetworkPolicy") if p.object_name == f"{CLAIM}-copy-g1"]
    ingress = policy.inputs["spec"]["ingress"][0]
    assert policy.inputs["spec"]["podSelector"]["matchLabels"]["mlcache/copy-role"] == "sender"
    assert ingress["from"][0]["podSelector"]["matchLabels"]["mlcache/copy-role"] == "receiver"
    assert ingress["ports"] == [{"protocol": "TCP", "port": 7700}]
    (token,) = [s for s in run.find("Secret") if s.object_name == f"{CLAIM}-copy-g1-token"]
    assert token.ignore_changes == ["stringData", "data"]
    # The token travels only inside a secret envelope; its name and every other field stay visible.
    assert is_secret_envelope(token.wire["stringData"]) and len(token.inputs["stringData"]["token"]) >= 32
    assert token.wire["metadata"]["name"] == f"{CLAIM}-copy-g1-token"

    assert run.outputs["pvcName"] == CLAIM
    assert run.outputs["cacheMove"] == {
        "state": "copying",
        "from": CLAIM,
        "to": NEW,
        "copyJob": f"{CLAIM}-copy-g1",
        "mode": "stream",
        "attempt": 1,
        "oldKept": True,
    }


def test_the_up_after_the_copy_is_verified_switches_training_and_retires_the_old_claim_and_the_copy(monkeypatch):
    run = render_against(monkeypatch, under_way("Complete"), "cache.protect=false")
    assert set(named(run, "PersistentVolumeClaim")) == {NEW}
    jobs = named(run, "Job")
    assert set(jobs) == {"sft-qwen3vl-fire-4gpu"}
    training = jobs["sft-qwen3vl-fire-4gpu"].inputs["spec"]["template"]["spec"]
    assert training["volumes"][0]["persistentVolumeClaim"]["claimName"] == NEW
    assert affinity_values(training)["topology.kubernetes.io/zone"] == ["sdsu"]
    assert not [s for s in run.find("Secret") if "copy" in s.object_name]
    assert run.outputs["pvcName"] == NEW and run.outputs["run"]["cacheClaims"] == [NEW]
    assert run.outputs["cacheMove"]["state"] == "verified" and run.outputs["cacheMove"]["oldKept"] is False


def test_a_failed_copy_is_retried_as_a_new_attempt_with_the_old_claim_and_training_as_they_were(monkeypatch):
    first = render_against(monkeypatch, bound_in_ucsd())
    retry = render_against(monkeypatch, under_way("Failed"))
    assert named(retry, "PersistentVolumeClaim")[CLAIM].ignore_changes == ["metadata", "spec"]
    training = "sft-qwen3vl-fire-4gpu"
    assert named(retry, "Job")[training].inputs == named(first, "Job")[training].inputs
    receiver = named(retry, "Job")[f"{CLAIM}-copy-g1"].inputs["spec"]["template"]["metadata"]
    assert receiver["annotations"]["mlcache/copy-attempt"] == "2"


def test_the_runbook_migration_copies_in_one_pod_mounting_both_claims(monkeypatch):
    monkeypatch.setattr(bound_cache, "_under_mock_engine", lambda: False)
    live = dataclasses.replace(on_rook_ceph(), training_job=finished_on(CLAIM))
    monkeypatch.setattr(bound_cache, "read_live_cache", lambda *args, **kwargs: live)
    run, _ = render("prod", ["cache.relocate=copy"], [])
    jobs = named(run, "Job")
    assert set(jobs) == {"sft-qwen3vl-fire-4gpu", f"{CLAIM}-copy-g1"}
    pod = jobs[f"{CLAIM}-copy-g1"].inputs["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": NEW}, {"claimName": CLAIM, "readOnly": True}]
    assert pod["containers"][0]["command"][2:] == ["local", "--from", "/opt/mlcache-source", "--to", "/cache", "--streams", "4"]
    assert not run.find("Service") and not [s for s in run.find("Secret") if "copy" in s.object_name]


def test_the_rollback_off_linstor_keeps_the_class_of_the_old_claim_until_the_claim_goes(monkeypatch):
    """The old claim stays exactly as it was while it is kept: its StorageClass too (calling the move
    off finds it as it was); the switch that retires the claim retires the class."""
    as_made = only(rendered("prod"), "StorageClass").inputs  # before the live cache is faked: rendered() caches
    copying = render_against(monkeypatch, bound_in_ucsd(), "backend=rook-ceph")
    assert set(named(copying, "StorageClass")) == {"linstor-fast-cache"}
    assert named(copying, "StorageClass")["linstor-fast-cache"].inputs == as_made
    assert named(copying, "PersistentVolumeClaim")[NEW].inputs["spec"]["storageClassName"] == ROOK
    # The old claim is deleted before its class when both go; the new claim, on Rook-Ceph, waits for neither.
    made = named(copying, "StorageClass")["linstor-fast-cache"].urn
    assert made in named(copying, "PersistentVolumeClaim")[CLAIM].dependencies
    assert made not in named(copying, "PersistentVolumeClaim")[NEW].dependencies
    target = claim(name=NEW, storage_class=ROOK, placement=f"zone=sdsu gpuProduct={A100}", volume="pvc-9f8e")
    done = LiveCache(NAMESPACE, target, volume(name="pvc-9f8e"), [], None, 1, bound_in_ucsd(), copy_job("Complete"))
    switched = render_against(monkeypatch, done, "backend=rook-ceph", "cache.protect=false")
    assert set(named(switched, "PersistentVolumeClaim")) == {NEW} and not switched.find("StorageClass")
    kept = render_against(monkeypatch, done, "backend=rook-ceph")  # prod protects the old claim: it stays, and its class
    assert set(named(kept, "PersistentVolumeClaim")) == {CLAIM, NEW} and set(named(kept, "StorageClass")) == {
        "linstor-fast-cache"
    }


# --- verify follows the claim training mounts ---------------------------------------------------


def expectation() -> Expectation:
    return Expectation(
        pvc=CLAIM, namespace=NAMESPACE, storage_class="linstor-fast-cache", backend="linstor", zone="sdsu", job="sft"
    )


def test_verify_follows_the_newest_generation_once_the_old_claim_is_gone():
    expect, findings = follow_move(expectation(), [claim(name=NEW, placement=f"zone=sdsu gpuProduct={A100}")], None, None, None)
    assert expect.pvc == NEW and findings == []


def test_verify_checks_the_old_claim_where_it_was_made_while_the_copy_runs_and_shows_its_progress():
    live = [claim(storage_class=ROOK, placement=f"zone=ucsd gpuProduct={A100}"), claim(name=NEW)]
    progress = "12.0 of 40.0 GB (30%), 410 MB/s, ETA 68 s; sent 12.0 GB, kept 0.0 GB already there"
    expect, (finding,) = follow_move(expectation(), live, copy_job(None), CLAIM, progress)
    assert (expect.pvc, expect.storage_class, expect.zone) == (CLAIM, ROOK, "ucsd")
    assert finding.level == "info" and progress in finding.message and f"training stays on {CLAIM}" in finding.message


def test_verify_says_a_verified_copy_waits_for_the_switch_and_a_failed_one_is_a_failure():
    live = [claim(), claim(name=NEW)]
    expect, (verified,) = follow_move(expectation(), live, copy_job("Complete"), CLAIM, None)
    assert expect.pvc == CLAIM and "is verified" in verified.message and "pulumi up" in verified.remedy
    expect, (kept,) = follow_move(expectation(), live, copy_job("Complete"), NEW, None)
    assert expect.pvc == NEW and "kept while cache.protect is true" in kept.message
    # No training Job (job.enabled false, as heal's restore from a kept claim asks): verified, not switched.
    expect, (off,) = follow_move(expectation(), live, copy_job("Complete"), None, None)
    assert expect.pvc == NEW and f"the copy ml-training/{CLAIM} -> ml-training/{NEW} is verified" in off.message
    assert "switch training" in off.remedy
    _, (failed,) = follow_move(expectation(), live, copy_job("Failed", attempt=2), CLAIM, None)
    assert failed.level == "FAIL" and "attempt 2" in failed.message and f"job/{CLAIM}-copy-g1" in failed.remedy


def test_a_verified_copy_does_not_switch_while_training_still_runs_on_the_old_claim():
    running = {"metadata": {"name": RUN}, "status": {"active": 1}}
    live = dataclasses.replace(under_way("Complete"), training_job=running)
    verdict = judge(WANTED, live)
    assert verdict.move.state == HELD and not verdict.move.switched and verdict.move.copying
    assert "still runs on" in verdict.notes[0] and "once it has finished" in verdict.notes[0]
    done = {"metadata": {"name": RUN}, "status": {"active": 0, "conditions": [{"type": "Complete", "status": "True"}]}}
    assert judge(WANTED, dataclasses.replace(live, training_job=done)).move.switched


def training_on(claim_name: str, active: int = 1, name: str = RUN) -> dict:
    volume = {"name": "cache", "persistentVolumeClaim": {"claimName": claim_name}}
    return {"metadata": {"name": name}, "spec": {"template": {"spec": {"volumes": [volume]}}}, "status": {"active": active}}


def finished_on(claim_name: str, name: str = RUN) -> dict:
    return training_on(claim_name, active=0, name=name) | {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}


def test_once_training_runs_on_the_new_claim_it_never_goes_back_whatever_became_of_the_copy_job():
    # cache.protect kept the old claim; a TTL controller then removed the finished copy Job.
    live = dataclasses.replace(under_way(), copy_job=None, training_job=training_on(NEW))
    move = judge(wanted(protect=True), live).move
    assert move.switched and move.keeps_source and not move.copying


def test_a_copy_job_gone_before_the_switch_is_registered_again_and_a_source_node_lost_mid_move_is_refused():
    gone = judge(WANTED, dataclasses.replace(under_way(), copy_job=None, training_job=finished_on(CLAIM)))
    assert gone.refusal is None and gone.move.state == COPYING and gone.move.copying  # the copy's objects again
    assert "is gone" in gone.notes[0] and "pulumi up --refresh" in gone.notes[0]
    lost = dataclasses.replace(under_way(), older=dataclasses.replace(bound_in_ucsd(), nodes=[]))
    refusal = judge(WANTED, lost).refusal
    assert "gone in the middle of the move" in refusal and "mlcache heal --stack prod" in refusal


def test_calling_off_a_protected_move_says_how_to_unprotect_the_new_claim():
    refusal = judge(wanted(placement=PlacementRecord("ucsd", A100), protect=True), under_way()).refusal
    assert "Nothing was changed" in refusal and "PersistentVolumeClaim::cache-pvc-g1'" in refusal


def test_a_real_up_that_cannot_read_the_claims_is_refused_before_anything_is_registered(monkeypatch):
    monkeypatch.setattr(bound_cache, "_under_mock_engine", lambda: False)
    monkeypatch.setattr(bound_cache, "read_live_cache", lambda *args, **kwargs: bound_cache.Unread("no cluster to read (x)"))
    run = ProgramRun()
    with pytest.raises(RunError) as refused:
        run_program(load_stack_config("prod").engine_config(), [], "prod", run)
    assert "cannot read the cache's claims: no cluster to read (x)" in str(refused.value)
    assert run.registrations == []


def test_a_move_does_not_start_while_training_runs_on_the_cache():
    live = dataclasses.replace(bound_in_ucsd(), training_job=training_on(CLAIM))
    refusal = judge(WANTED, live).refusal
    assert f"Job {RUN} still runs on the cache" in refusal and "Nothing was changed" in refusal
    assert judge(WANTED, dataclasses.replace(live, training_job=finished_on(CLAIM))).move is not None


# --- runs and the switch: what the guard reads of every Job on the cache ---------------------------


def switched_mark(live: LiveCache) -> LiveCache:
    """`live` after the up that switched training to its newest claim (the program's mark on it)."""
    annotations = {**live.claim["metadata"]["annotations"], "mlcache/switched-from": CLAIM}
    return dataclasses.replace(live, claim={**live.claim, "metadata": {**live.claim["metadata"], "annotations": annotations}})


def test_any_job_running_on_the_cache_holds_a_move_whatever_run_the_settings_name():
    """Run A still trains; the settings name run B: the move must wait for A, not replace it."""
    live = dataclasses.replace(bound_in_ucsd(), consumers=(training_on(CLAIM, name="sft-a"),))
    refusal = judge(wanted(run="sft-b"), live).refusal
    assert "Job sft-a still runs on the cache" in refusal and "Nothing was changed" in refusal


def test_a_new_run_waits_until_training_has_switched_to_the_new_claim():
    """Its outputs and completion marker would land on the old claim after the copy read it."""
    start = judge(wanted(run="sft-b"), dataclasses.replace(bound_in_ucsd(), consumers=(finished_on(CLAIM, "sft-a"),)))
    assert start.refusal.startswith("bound-cache guard: this up would start a move of the cache")
    assert "create the Job sft-b there, which is not in the cluster (a new job.runId" in start.refusal
    assert "Set job.enabled false" in start.refusal and "finds its completion marker" in start.refusal
    # An offline preview whose base hides its Jobs (a secret) cannot tell: it does not refuse.
    unknown = dataclasses.replace(bound_in_ucsd(), consumers=None)
    assert judge(wanted(run="sft-b"), unknown).move.state == COPYING
    copying = dataclasses.replace(under_way(), consumers=(finished_on(CLAIM, "sft-a"),))
    refusal = judge(wanted(run="sft-b"), copying).refusal
    assert "go on with the move into" in refusal and "Nothing was changed" in refusal
    assert judge(wanted(run="sft-a"), copying).move.state == COPYING  # the same run: the move goes on
    assert judge(wanted(run=None), copying).move.state == COPYING  # no training Job at all
    verified = dataclasses.replace(copying, copy_job=copy_job("Complete"))
    assert judge(wanted(run="sft-b"), verified).move.switched  # the switching up starts it on the new claim


def test_after_the_switch_the_mark_not_the_training_job_says_where_training_runs():
    """prod keeps the old claim; the finished Job was deleted (or job.runId changed) and the switch
    deleted the copy Job: the mark on the new claim still says the move is over."""
    after = switched_mark(dataclasses.replace(under_way(), copy_job=None))
    move = judge(wanted(protect=True, run="sft-next"), after).move
    assert move.switched and move.keeps_source
    grown = judge(wanted(protect=True, size="600Gi"), dataclasses.replace(after, storage_class=storage_class()))
    assert grown.refusal is None and grown.move.switched  # grown in place, the old claim still kept
    expect, (finding,) = follow_move(expectation(), [after.older.claim, after.claim], None, None, None)
    assert expect.pvc == NEW and "training runs on" in finding.message
    # Kept, the note is said on every up; unprotected, this up deletes the old claim: a move's step (for drift).
    assert judge(wanted(protect=True), after).notes[-1].startswith("bound-cache guard: training runs on")
    assert judge(wanted(protect=False), after).notes[-1].startswith("bound-cache guard: move: training runs on")


def test_after_the_switch_settings_back_to_the_old_claim_never_put_training_back_on_it():
    after = switched_mark(under_way("Complete"))
    refusal = judge(wanted(placement=PlacementRecord("ucsd", A100), protect=True), after).refusal
    assert f"training runs on {NAMESPACE}/{NEW} since the move from {NAMESPACE}/{CLAIM} switched to it" in refusal
    assert "holds the cache as it was before that move" in refusal and "PersistentVolumeClaim::cache-pvc'" in refusal
    again = judge(wanted(placement=PlacementRecord("ucsd", "NVIDIA-H100-80GB-HBM3"), protect=True), after).refusal
    assert "moves the cache on" in again and "A move keeps one old claim at a time" in again


def test_the_switching_up_marks_the_new_claim_and_later_ups_keep_the_mark(monkeypatch):
    done = dataclasses.replace(under_way("Complete"))
    switching = named(render_against(monkeypatch, done, "cache.protect=false"), "PersistentVolumeClaim")
    assert switching[NEW].inputs["metadata"]["annotations"]["mlcache/switched-from"] == CLAIM
    copying = named(render_against(monkeypatch, under_way()), "PersistentVolumeClaim")
    assert "mlcache/switched-from" not in copying[NEW].inputs["metadata"]["annotations"]
    alone = dataclasses.replace(switched_mark(done), older=None, copy_job=None, training_job=finished_on(NEW))
    later = named(render_against(monkeypatch, alone), "PersistentVolumeClaim")
    assert set(later) == {NEW} and later[NEW].inputs["metadata"]["annotations"]["mlcache/switched-from"] == CLAIM


def test_a_claim_deleted_after_node_loss_comes_back_as_the_generation_its_job_mounts():
    sender = training_on(f"{CLAIM}-g2", name="copy")
    sender["spec"]["template"]["metadata"] = {"labels": {"mlcache/copy": f"{CLAIM}-copy-g2"}}
    jobs = [training_on(NEW), training_on("other-claim", name="other"), sender]
    users = bound_cache.mounting_jobs(jobs, CLAIM)
    assert users == [jobs[0]]  # neither another claim's Job nor a copy's
    assert bound_cache.mounted_generation(CLAIM, users) == 1 and bound_cache.mounted_generation(CLAIM, []) == 0
    healed = LiveCache(NAMESPACE, None, consumers=tuple(users), generation=1)
    assert judge(WANTED, healed).generation == 1


def test_training_stays_exactly_as_it_is_until_the_switch_whatever_else_the_up_changes(monkeypatch):
    """A new image in the same up as the move (or during it) would replace the Job: a run again on
    the old claim. The engine is told to leave the Job's spec as it is until the switch."""
    assert not named(rendered("prod"), "Job")[RUN].ignore_changes  # no move: a new image replaces it
    image = "job.image=nvcr.io/nvidia/pytorch:25.01-py3"
    for live in (bound_in_ucsd(), under_way(), dataclasses.replace(under_way("Complete"), training_job=training_on(CLAIM))):
        job = named(render_against(monkeypatch, live, image), "Job")[RUN]
        assert job.ignore_changes == ["spec"]
    switching = named(render_against(monkeypatch, under_way("Complete"), image), "Job")[RUN]
    assert not switching.ignore_changes  # the switch replaces it onto the new claim
    # The benchmark on the cache likewise (the one already in the cluster: a new one waits for the switch).
    bench = ("benchmark.enabled=true", "benchmark.fioImage=docker.io/dmonakhov/alpine-fio:3.35")
    deployed = (finished_on(CLAIM), finished_on(CLAIM, name=f"{RUN}-storage-bench"))
    benchmark = named(render_against(monkeypatch, dataclasses.replace(under_way(), consumers=deployed), *bench), "Job")
    assert [j.ignore_changes for n, j in benchmark.items() if "bench" in n] == [["spec"]]


def test_the_copy_jobs_stay_as_the_cluster_has_them_while_a_copy_pod_works_and_once_verified(monkeypatch):
    """A new image (or GPU count) during a move would replace a running copy Job (also one between
    retries, whose next pod resumes), or re-run a verified one held by training, whose receiver
    would then wait for training's GPUs."""
    image = "job.image=nvcr.io/nvidia/pytorch:25.01-py3"
    copies = (f"{CLAIM}-copy-g1", f"{CLAIM}-copy-g1-send")
    held_by_training = dataclasses.replace(under_way("Complete"), training_job=training_on(CLAIM))
    # At work, between retries after a pod failed (no pod Ready in the Job's backoff), or verified.
    for live in (under_way(ready=1), under_way(failed=1), held_by_training):
        jobs = named(render_against(monkeypatch, live, image, "job.gpus=2"), "Job")
        assert [jobs[name].ignore_changes for name in copies] == [["spec"], ["spec"]]
    # Not at work yet (pending, its image not pulled: the change may be the fix; also a next try's
    # pod that finds no room), a retry (a new attempt), the first up: the Jobs take what the settings say now.
    next_try_pending = under_way(failed=1)
    next_try_pending.copy_job["status"].update(active=1, ready=0)  # ready counted: none Ready
    for live in (under_way(), next_try_pending, under_way("Failed"), bound_in_ucsd()):
        jobs = named(render_against(monkeypatch, live, image), "Job")
        assert [jobs[name].ignore_changes for name in copies] == [[], []]
        assert jobs[copies[0]].inputs["spec"]["template"]["spec"]["containers"][0]["image"] == image.partition("=")[2]


def test_a_multi_node_run_waits_until_training_has_switched_to_the_new_claim():
    """Its first worker would train on the old claim after the copy read it (relocate turned off and
    job.nodes raised in the middle of a move: copy itself refuses job.nodes above 1)."""
    multi = wanted(relocate="false", run=None, nodes=2)
    refusal = judge(multi, under_way()).refusal
    assert "start a run on job.nodes 2 workers" in refusal and "Set job.nodes 1 until `mlcache verify" in refusal
    assert judge(wanted(relocate="false", run=None, nodes=2, dropped=RUN), under_way()).refusal is None
    # Nor a multi-node benchmark: its worker 0 would write on the old claim in the middle of the copy.
    bench = wanted(relocate="false", run=None, nodes=2, dropped=RUN, benchmark=f"{RUN}-storage-bench")
    assert "benchmark.enabled turned on" in judge(bench, under_way()).refusal
    assert judge(multi, under_way("Complete")).move.switched  # the switching up starts them on the new claim


def test_the_program_refuses_a_multi_node_benchmark_in_the_middle_of_a_move(monkeypatch):
    bench = ("benchmark.enabled=true", "benchmark.fioImage=docker.io/dmonakhov/alpine-fio:3.35")
    with pytest.raises(RunError, match=r"benchmark\.enabled turned on"):
        render_against(monkeypatch, under_way(), "cache.relocate=false", "job.enabled=false", "job.nodes=2", *bench)


def test_adopt_left_on_imports_nothing_into_a_moves_new_claim(monkeypatch):
    """The runbook's claim is the one adopt imports; the new claim of a move is made (importing the
    old claim's id under the new name would fail the up half-way)."""
    assert named(rendered("prod", "adopt=true"), "PersistentVolumeClaim")[CLAIM].import_id == f"ml-training/{CLAIM}"
    for live in (bound_in_ucsd(), under_way(), under_way("Complete")):
        claims = named(render_against(monkeypatch, live, "adopt=true", "cache.protect=false"), "PersistentVolumeClaim")
        assert claims[NEW].import_id == ""


def test_the_pods_beside_the_old_volume_go_to_its_node_even_cordoned_and_those_placed_like_training_do_not(monkeypatch):
    """A cordon is often why the cache moves off a node, and only its node can read the volume."""
    cordon = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
    jobs = named(render_against(monkeypatch, bound_in_ucsd()), "Job")
    sender, receiver = (jobs[name].inputs["spec"]["template"]["spec"] for name in (f"{CLAIM}-copy-g1-send", f"{CLAIM}-copy-g1"))
    assert cordon in sender["tolerations"] and affinity_values(sender) == {"kubernetes.io/hostname": ["gpu-ucsd-1"]}
    assert cordon not in receiver.get("tolerations", []) and cordon not in jobs[RUN].inputs["spec"]["template"]["spec"].get(
        "tolerations", []
    )


def with_uids(live: LiveCache, claim_uid: str, copied_into: str | None) -> LiveCache:
    """`live` with the new claim's UID and the UID the copy Job says it filled."""
    new_claim = {**live.claim, "metadata": {**live.claim["metadata"], "uid": claim_uid}}
    job = copy.deepcopy(live.copy_job)
    if copied_into is not None:
        job["spec"]["template"]["metadata"]["annotations"]["mlcache/copy-into-uid"] = copied_into
    return dataclasses.replace(live, claim=new_claim, copy_job=job)


def test_a_verified_copy_counts_only_for_the_claim_it_filled_not_one_made_again_under_its_name(monkeypatch):
    """The new claim deleted by hand after its copy completed, and made again (empty) by the next
    up: switching training onto it would lose the cache (and delete the old claim unprotected)."""
    stale = with_uids(under_way("Complete"), "uid-made-again", copied_into="uid-filled")
    verdict = judge(WANTED, stale)
    assert verdict.move.state == COPYING and not verdict.move.switched and not verdict.move.copy_busy
    assert "has since been deleted" in verdict.notes[0] and "makes the copy again" in verdict.notes[0]
    assert judge(WANTED, with_uids(under_way("Complete"), "uid-filled", copied_into="uid-filled")).move.switched
    assert judge(WANTED, with_uids(under_way("Complete"), "uid-x", copied_into=None)).move.switched  # Jobs made before
    # The program makes both copy Jobs again for the claim there now (its UID on their pods).
    # (The claim's UID as the guard read it: the engine's state may still hold the deleted one's.)
    jobs = named(render_against(monkeypatch, stale, "cache.protect=false"), "Job")
    into = {jobs[name].inputs["spec"]["template"]["metadata"]["annotations"]["mlcache/copy-into-uid"] for name in COPIES}
    assert [jobs[name].ignore_changes for name in COPIES] == [[], []] and into == {"uid-made-again"}
    # The first up of a move: the claim is made in that up, so its UID comes from the engine.
    first = named(render_against(monkeypatch, bound_in_ucsd()), "Job")[COPIES[0]].inputs["spec"]["template"]["metadata"]
    assert first["annotations"]["mlcache/copy-into-uid"] == f"(uid of ml-training/{NEW} at up)"


def test_a_copy_pod_at_work_is_ready_or_where_the_cluster_counts_no_ready_pods_active():
    for status, busy in (
        ({"ready": 1, "active": 1}, True),
        ({"ready": 0, "active": 1}, False),
        ({"active": 1}, True),
        ({}, False),
    ):
        live = dataclasses.replace(under_way(), copy_job={**copy_job(None), "status": status})
        assert judge(WANTED, live).move.copy_busy is busy, status


def test_a_job_that_has_not_finished_holds_a_move_even_with_no_pod_at_work():
    """Suspended by Kueue or between retries: no active pod yet, but its pods may yet write to the
    old claim in the middle of the copy."""
    suspended = training_on(CLAIM, active=0) | {"spec": {"suspend": True, **training_on(CLAIM)["spec"]}}
    refusal = judge(WANTED, dataclasses.replace(bound_in_ucsd(), training_job=suspended)).refusal
    assert f"Job {RUN} still runs on the cache" in refusal and "has not finished" in refusal
    held = judge(WANTED, dataclasses.replace(under_way("Complete"), training_job=suspended))
    assert held.move.state == HELD and not held.move.switched


def test_the_way_out_of_a_held_move_works_job_enabled_false_starts_it():
    """The refusals' way out: with job.enabled false the move starts (no Job needs to reach the
    volume for a move to follow the placement asked for), and the pending or suspended Job it
    deletes in the same up holds it no longer."""
    no_job = wanted(has_consumer=False, run=None, dropped=RUN)
    assert judge(no_job, dataclasses.replace(bound_in_ucsd(), consumers=())).move.state == COPYING
    pending = training_on(CLAIM, active=1)
    assert judge(no_job, dataclasses.replace(bound_in_ucsd(), consumers=(pending,))).move.state == COPYING
    assert "still runs on the cache" in judge(WANTED, dataclasses.replace(bound_in_ucsd(), consumers=(pending,))).refusal
    # Without copy, a stack with no Job on its cache is refused nothing, as before.
    assert judge(wanted(has_consumer=False, relocate="false"), bound_in_ucsd()).refusal is None


def test_a_move_with_no_job_configured_registers_the_copy_and_no_training(monkeypatch):
    run = render_against(monkeypatch, dataclasses.replace(bound_in_ucsd(), training_job=None, consumers=()), "job.enabled=false")
    assert set(named(run, "Job")) == {f"{CLAIM}-copy-g1", f"{CLAIM}-copy-g1-send"}
    assert set(named(run, "PersistentVolumeClaim")) == {CLAIM, NEW}


def test_a_benchmark_turned_on_during_a_move_waits_for_the_switch_and_a_dropped_job_at_work_still_holds_it():
    bench = f"{RUN}-bench"
    copying = dataclasses.replace(under_way(), consumers=(finished_on(CLAIM),))
    refusal = judge(wanted(run=RUN, benchmark=bench), copying).refusal
    assert f"create the Job {bench} there" in refusal and "Set benchmark.enabled false" in refusal
    assert judge(wanted(run=RUN, benchmark=None), copying).move.state == COPYING
    # job.enabled false lets a pending Job go, never one whose pod is at work (Ready).
    at_work = training_on(CLAIM) | {"status": {"active": 1, "ready": 1}}
    refused = judge(wanted(has_consumer=False, run=None, dropped=RUN), dataclasses.replace(bound_in_ucsd(), consumers=(at_work,)))
    assert "still runs on the cache" in refused.refusal
