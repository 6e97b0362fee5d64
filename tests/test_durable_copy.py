"""The durable copy (cache.durableCopy): what the program registers, what the guard allows, what heal
plans, and the refresh and restore as real processes on real files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from pulumi_policy import ResourceValidationArgs, StackValidationPolicy
from pulumi_policy.proxy import unknown_checking_proxy

from mlcache.cluster.bound_cache import assume_live, judge, live_from_manifest
from mlcache.cluster.diagnosis import DurableState, durable_finding
from mlcache.cluster.heal import plan_heal, render_plan
from mlcache.preview.render import render, sent_documents
from mlcache.preview.validate import validation_errors
from mlcache.program.schema import ConfigError
from tests.api_objects import node, pod, volume
from tests.conftest import ROOT, rendered
from tests.test_bound_cache import WANTED
from tests.test_heal import EXPECT, snapshot
from tests.test_moves import bound_in_ucsd, training_on
from tests.test_policy import policies, policy_resource, stack_args, violations
from workloads.prefetch import warmup_id

DURABLE = ("cache.durableCopy=true", "cache.prefetch=[Qwen/Qwen3-VL-8B-Instruct]")
CLAIM, DURABLE_CLAIM, REFRESH = "ms-swift-cache-pvc", "ms-swift-cache-pvc-durable", "ms-swift-cache-pvc-durable-refresh"
SCRIPT = ROOT / "workloads" / "cache_copy.py"


def claims(run) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r for r in run.find("PersistentVolumeClaim")}


def jobs(run) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.find("Job")}


def bound_render(*overrides: str):
    """The stack rendered as `up` would run it with its cache claim live and bound on a ucsd node."""
    base = claims(rendered("prod"))[CLAIM]
    with assume_live(live_from_manifest(base.inputs)):
        run, _ = render("prod", [*DURABLE, *overrides], [])
    return run


# --- settings


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("backend=rook-ceph",), "false with backend rook-ceph: the cache is on the replicated class already"),
        (("cache.volumeMode=Block", "cache.prefetch=[]"), "false in Block mode"),
        (("job.nodes=2",), "false with job.nodes 2"),
        (("cache.prefetch=[]",), "false with an empty cache.prefetch: it keeps the models the warm-up downloads"),
    ],
)
def test_a_durable_copy_is_refused_in_one_line_where_it_cannot_work(overrides, words):
    with pytest.raises(ConfigError) as refused:
        render("prod", ["cache.durableCopy=true", *overrides], [])
    message = str(refused.value)
    assert message.startswith("invalid config mlcache:cache.durableCopy = true: expected ") and words in message
    assert "\n" not in message


def test_a_cache_name_too_long_for_the_durable_objects_is_refused():
    with pytest.raises(ConfigError) as refused:
        render("prod", [*DURABLE, f"cache.name={'c' * 45}"], [])
    assert "mlcache:cache.name" in str(refused.value) and "with cache.durableCopy" in str(refused.value)


# --- what the program registers


def test_the_durable_claim_is_on_the_rook_ceph_class_and_protected_like_the_cache():
    run = rendered("prod", *DURABLE, "cache.protect=true")
    durable = claims(run)[DURABLE_CLAIM]
    assert durable.inputs["spec"]["storageClassName"] == "rook-ceph-block"
    assert (
        durable.inputs["spec"]["resources"]["requests"]["storage"]
        == claims(run)[CLAIM].inputs["spec"]["resources"]["requests"]["storage"]
    )
    assert durable.protect and durable.type == "kubernetes:core/v1:PersistentVolumeClaim"
    assert run.outputs["durableCopy"]["claim"] == DURABLE_CLAIM and run.outputs["durableCopy"]["refreshJob"] == REFRESH
    assert rendered("prod").outputs["durableCopy"] is None and DURABLE_CLAIM not in claims(rendered("prod"))


def test_with_job_enabled_false_the_durable_copy_stays_and_no_refresh_waits_for_a_warm_up():
    """job.enabled false is the way out of a move a pending run holds: the durable copy must not
    stand in its way, nor be deleted by it."""
    run = bound_render("job.enabled=false")
    assert DURABLE_CLAIM in claims(run) and claims(run)[DURABLE_CLAIM].protect is claims(bound_render())[DURABLE_CLAIM].protect
    assert not jobs(run) and REFRESH in jobs(bound_render())


def test_the_training_pod_restores_before_its_warm_up_and_mounts_the_durable_copy_read_only():
    spec = jobs(rendered("prod", *DURABLE))["sft-qwen3vl-fire-4gpu"]["spec"]["template"]["spec"]
    restore, prefetch = spec["initContainers"]
    assert (restore["name"], prefetch["name"]) == ("restore", "prefetch")
    assert restore["command"][1:3] == ["/opt/mlcache/cache_copy.py", "restore"]
    assert {"name": "durable", "mountPath": "/opt/mlcache-durable", "readOnly": True} in restore["volumeMounts"]
    durable = next(v for v in spec["volumes"] if v["name"] == "durable")
    assert durable["persistentVolumeClaim"] == {"claimName": DURABLE_CLAIM, "readOnly": True}
    # Training itself never touches the durable copy.
    assert all(m["name"] != "durable" for m in spec["containers"][0]["volumeMounts"])
    without = jobs(rendered("prod"))["sft-qwen3vl-fire-4gpu"]["spec"]["template"]["spec"]
    assert [c["name"] for c in without["initContainers"]] == ["prefetch"]


def test_the_refresh_waits_until_the_cache_is_bound_then_runs_beside_it_after_the_warm_up():
    assert REFRESH not in jobs(rendered("prod", *DURABLE))  # offline, nothing read: no node to pin it to
    run = bound_render()
    refresh = jobs(run)[REFRESH]
    template = refresh["spec"]["template"]
    spec = template["spec"]
    (step,) = spec["containers"]
    # Pinned by hostname to the bound volume's node, no GPU, the cache read-only, the durable copy writable.
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-bound-at-up"]}]
    assert not any("gpu" in key for key in step["resources"]["requests"])
    assert {"name": "cache", "mountPath": "/cache", "readOnly": True} in step["volumeMounts"]
    assert {"name": "durable", "mountPath": "/opt/mlcache-durable", "readOnly": False} in step["volumeMounts"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "cache-copy"
    assert template["metadata"]["labels"]["mlcache/copy-role"] == "refresh"
    # It follows the warm-up of the list the ConfigMap carries, named as prefetch.py names it.
    config_map = next(r.inputs for r in run.find("ConfigMap") if r.inputs["metadata"]["name"] == "mlcache-scripts")
    current = warmup_id(config_map["data"]["prefetch.txt"])
    args = step["command"]
    assert args[args.index("--warmup") + 1] == current == template["metadata"]["annotations"]["mlcache/warmup"]
    assert args[args.index("--ready") + 1] == "/cache/.mlcache/prefetch/complete"
    assert args[args.index("--wait-limit") + 1] == "86400"  # a day, then it fails saying so: never for ever
    # A new copy script (a new record format) replaces the refresh Job, so it records again.
    script = (ROOT / "workloads" / "cache_copy.py").read_bytes()
    assert template["metadata"]["annotations"]["mlcache/copy-script"] == hashlib.sha256(script).hexdigest()[:12]
    rule = refresh["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {"containerName": "refresh", "operator": "In", "values": [4]}
    assert "cache_copy.py" in config_map["data"]
    # A new prefetch list is a new warm-up: the refresh Job is replaced (and copies again).
    other = jobs(bound_render("cache.prefetch=[Qwen/Other]"))[REFRESH]
    assert other["spec"]["template"]["metadata"]["annotations"]["mlcache/warmup"] != current


def test_the_guard_names_the_node_of_a_bound_cache_and_none_of_a_lost_one():
    assert judge(WANTED, bound_in_ucsd()).nodes == ("gpu-ucsd-1",)
    assert judge(WANTED, dataclasses.replace(bound_in_ucsd(), nodes=[])).nodes == ()


def test_turning_the_durable_copy_on_or_off_while_training_runs_is_refused():
    on = dataclasses.replace(WANTED, durable_copy=True)
    running = dataclasses.replace(bound_in_ucsd(), training_job=training_on(CLAIM))
    refusal = judge(on, running).refusal
    assert "cache.durableCopy = true: turning it on" in refusal and "Nothing was changed" in refusal
    finished = dataclasses.replace(bound_in_ucsd(), training_job=training_on(CLAIM, active=0))
    assert judge(on, finished).refusal is None
    with_durable = training_on(CLAIM)
    with_durable["spec"]["template"]["spec"]["volumes"].append(
        {"name": "durable", "persistentVolumeClaim": {"claimName": DURABLE_CLAIM}}
    )
    assert judge(on, dataclasses.replace(running, training_job=with_durable)).refusal is None
    assert "turning it off" in judge(WANTED, dataclasses.replace(running, training_job=with_durable)).refusal


def durable_live(size: str, storage_class: str = "rook-ceph-block", expands: bool = True, phase: str = "Bound"):
    claim = {
        "status": {"phase": phase},
        "metadata": {"name": DURABLE_CLAIM},
        "spec": {"storageClassName": storage_class, "resources": {"requests": {"storage": size}}},
    }
    return dataclasses.replace(bound_in_ucsd(), durable=claim, durable_class={"allowVolumeExpansion": expands})


def test_the_durable_claim_never_shrinks_never_changes_class_and_grows_only_where_it_can():
    on = dataclasses.replace(WANTED, durable_copy=True, durable_class="rook-ceph-block")
    # The cache shrinks (a move at a smaller size): the durable claim keeps its size, saying so.
    kept = judge(dataclasses.replace(on, size="300Gi", relocate="copy"), durable_live("800Gi"))
    assert kept.refusal is None and kept.durable_size == "800Gi"
    assert f"the durable copy's claim {DURABLE_CLAIM} keeps 800Gi (cache.size 300Gi" in kept.notes[-1]
    assert judge(on, durable_live("500Gi")).durable_size is None  # the same size: cache.size
    grows = judge(dataclasses.replace(on, size="1Ti"), durable_live("500Gi"))
    assert grows.refusal is None and grows.durable_size is None
    cannot_grow = judge(dataclasses.replace(on, size="1Ti"), durable_live("500Gi", expands=False)).refusal
    assert (
        cannot_grow.startswith("mlcache:cache.size = '1Ti': the durable copy's claim") and "allowVolumeExpansion" in cannot_grow
    )
    pending = judge(dataclasses.replace(on, size="1Ti"), durable_live("500Gi", phase="Pending")).refusal
    assert "is not bound yet; Kubernetes resizes only a bound claim" in pending
    absent_cache = dataclasses.replace(durable_live("500Gi"), claim=None, volume=None, nodes=[])
    assert judge(dataclasses.replace(on, durable_class="ceph-ssd"), absent_cache).refusal  # judged before the cache claim
    moved = judge(dataclasses.replace(on, durable_class="ceph-ssd"), durable_live("500Gi")).refusal
    assert moved.startswith("mlcache:rookCeph.storageClassName = 'ceph-ssd'") and "class 'rook-ceph-block'" in moved
    assert judge(WANTED, durable_live("500Gi")).refusal is None  # turning it off: the claim goes, nothing to judge


def test_the_rendered_durable_claim_asks_for_what_the_guard_decided():
    base = claims(rendered("prod"))[CLAIM]
    live = dataclasses.replace(live_from_manifest(base.inputs), durable=durable_live("2Ti").durable, durable_class={})
    with assume_live(live):
        run, _ = render("prod", [*DURABLE], [])
    assert claims(run)[DURABLE_CLAIM].inputs["spec"]["resources"]["requests"]["storage"] == "2Ti"


# --- heal


def test_heal_says_whether_the_new_claim_is_restored_or_downloaded_again():
    lost = snapshot(None, pods=[pod("sft-old", node_name="gpu-ucsd-1")])
    refreshed = DurableState(DURABLE_CLAIM, bound=True, refresh="complete", refreshed="2026-12-06T17:00:00Z")
    plan = plan_heal(lost, EXPECT, protected=False, allow_protected=False, durable=refreshed)
    assert plan.restores_from == DURABLE_CLAIM
    assert f"copies the durable copy {DURABLE_CLAIM} (refreshed 2026-12-06T17:00:00Z)" in render_plan(plan, apply=True)
    never = plan_heal(
        lost,
        EXPECT,
        protected=False,
        allow_protected=False,
        durable=dataclasses.replace(refreshed, refresh="running", refreshed=None),
    )
    # Whether an earlier refresh left a verified copy is on the durable volume: the restore step decides.
    assert never.restores_from == DURABLE_CLAIM
    assert "if an earlier refresh left a verified copy (its refresh Job is running now)" in render_plan(never, apply=False)
    unbound = dataclasses.replace(refreshed, bound=False)
    assert plan_heal(lost, EXPECT, protected=False, allow_protected=False, durable=unbound).restores_from is None
    off = plan_heal(lost, EXPECT, protected=False, allow_protected=False)
    assert off.restores_from is None and "downloads every model again (no durable copy" in render_plan(off, apply=False)


def test_verify_says_whether_node_loss_would_restore_from_the_durable_copy():
    def finding(**state):
        return durable_finding(DurableState(DURABLE_CLAIM, **{"bound": True, **state}), REFRESH, "ml-training")

    done = finding(refresh="complete", refreshed="2026-12-06T17:00:00Z")
    assert done.level == "ok" and "refreshed 2026-12-06T17:00:00Z: node loss restores from it" in done.message
    failed = finding(refresh="failed")
    assert failed.level == "FAIL" and f"job/{REFRESH}" in failed.remedy
    assert "waits for the warm-up" in finding(refresh="running").message
    absent = finding(refresh="absent")
    assert absent.level == "info" and "restores the last verified refresh" in absent.message and "pulumi up" in absent.remedy
    assert finding(bound=False, refresh="absent").level == "FAIL"


def test_heal_force_deletes_the_refresh_pod_stuck_on_the_dead_node():
    refresh_pod = pod("ms-swift-cache-pvc-durable-refresh-x1", node_name="gpu-ucsd-1")
    dead = node("gpu-ucsd-1", "ucsd", ready="Unknown", taints=("node.kubernetes.io/out-of-service",))
    plan = plan_heal(snapshot(dead, pv=volume("gpu-ucsd-1"), pods=[refresh_pod]), EXPECT, protected=False, allow_protected=False)
    assert plan.stuck_pods == ("ms-swift-cache-pvc-durable-refresh-x1",)


# --- the data path, real processes on real files


HF_MODEL, MS_MODEL = "huggingface/hub/models--org--m", "modelscope/models/Qwen/m"


def make_cache(root, warmup: str | None = "w1") -> None:
    """A warmed cache: a Hugging Face repository (blobs, relative snapshot links), a ModelScope model,
    the warm-up's markers naming them as prefetch.py records them, and what the durable copy leaves
    out (a dataset training downloads, outputs, run markers)."""
    blobs = root / HF_MODEL / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "aa11").write_bytes(os.urandom(3 << 20))
    (blobs / "bb22").write_bytes(b"{}")
    snap = root / HF_MODEL / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to("../../blobs/aa11")
    (snap / "config.json").symlink_to("../../blobs/bb22")
    (root / MS_MODEL).mkdir(parents=True)
    (root / MS_MODEL / "weights.bin").write_bytes(os.urandom(1 << 20))
    (root / MS_MODEL / "empty").touch()
    add_marker(root, "huggingface--org--m", snap)
    add_marker(root, "modelscope--Qwen--m", root / MS_MODEL)
    if warmup is not None:
        (root / ".mlcache" / "prefetch" / "complete").write_text(warmup + "\n")
    (root / "huggingface" / "datasets" / "d").mkdir(parents=True)
    (root / "huggingface" / "datasets" / "d" / "train.arrow").write_bytes(b"rows")
    (root / "output" / "run").mkdir(parents=True)
    (root / "output" / "run" / "checkpoint").write_bytes(b"x" * 100)
    (root / ".mlcache" / "runs").mkdir()


def add_marker(root, name: str, path) -> None:
    markers = root / ".mlcache" / "prefetch"
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{name}.done").write_text(json.dumps({"path": str(path), "finished": "2026-12-06T10:00:00Z"}))


def copy(command: str, cache, durable, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), command, "--cache", str(cache), "--durable", str(durable)]
    argv += ["--ready", str(cache / ".mlcache" / "prefetch" / "complete"), "--progress-every", "0.5", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def tree(root) -> dict[str, object]:
    """Every entry under root: file bytes, link targets, directories."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        found[name] = ("link", os.readlink(path)) if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return found


def record(durable) -> dict:
    return json.loads((durable / "refreshed.json").read_text())


def test_refresh_waits_for_the_warm_up_then_copies_the_models_it_names_verified(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache, warmup="old")
    durable.mkdir()
    finished: dict[str, subprocess.CompletedProcess] = {}
    worker = threading.Thread(
        target=lambda: finished.setdefault("run", copy("refresh", cache, durable, "--warmup", "w2", "--wait-every", "0.1"))
    )
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive() and not (durable / "tree").exists()  # the marker names another warm-up: it waits
    (cache / ".mlcache" / "prefetch" / "complete").write_text("w2\n")
    worker.join(30)
    result = finished["run"]
    assert result.returncode == 0, result.stderr
    assert "waiting for the warm-up w2" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["verified"] and summary["warmup"] == "w2" and summary["files"] == 4
    assert summary["parts"] == [HF_MODEL, MS_MODEL]
    for part in (HF_MODEL, MS_MODEL):
        assert tree(durable / "tree" / part) == tree(cache / part)
    # Only the models: the dataset training wrote, the outputs and run markers stay out.
    assert sorted(p.name for p in (durable / "tree").iterdir()) == ["huggingface", "modelscope"]
    assert sorted(p.name for p in (durable / "tree" / "huggingface").iterdir()) == ["hub"]
    saved = record(durable)
    assert saved["warmup"] == "w2" and saved["markers"]["complete"] == "w2\n"
    assert json.loads(saved["markers"]["huggingface--org--m.done"])["path"].endswith("snapshots/c0ffee")


def test_refresh_gives_up_after_its_wait_limit_with_a_line_saying_so(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache, warmup=None)
    durable.mkdir()
    result = copy("refresh", cache, durable, "--warmup", "w1", "--wait-every", "0.1", "--wait-limit", "0.5")
    # Its own exit status: the Job's podFailurePolicy fails at once instead of retrying for another day.
    assert result.returncode == 4 and "the warm-up w1 did not finish within 0.5 s" in result.stderr
    assert not (durable / "refreshed.json").exists()


def test_the_last_record_stays_valid_until_a_model_it_lists_changes(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    # A new list adds a model that cannot be copied (a FIFO, which no cache holds): the refresh fails,
    # and the record of w1 still describes the durable copy, untouched.
    broken = cache / "modelscope" / "models" / "Qwen" / "broken"
    broken.mkdir()
    os.mkfifo(broken / "pipe")
    add_marker(cache, "modelscope--Qwen--broken", broken)
    (cache / ".mlcache" / "prefetch" / "complete").write_text("w2\n")
    before = tree(durable / "tree" / HF_MODEL)
    failed = copy("refresh", cache, durable, "--warmup", "w2")
    assert failed.returncode == 2, failed.stderr
    assert record(durable)["warmup"] == "w1" and tree(durable / "tree" / HF_MODEL) == before
    # A model the record lists changed: its record is withdrawn before the copy touches it.
    (broken / "pipe").unlink()
    (broken / "w.bin").write_bytes(b"w")
    (cache / HF_MODEL / "blobs" / "bb22").write_bytes(b'{"changed": true}')
    changed = copy("refresh", cache, durable, "--warmup", "w2")
    assert changed.returncode == 0, changed.stderr
    assert f"{HF_MODEL} changed since the last refresh" in changed.stderr
    assert record(durable)["warmup"] == "w2" and tree(durable / "tree" / HF_MODEL) == tree(cache / HF_MODEL)
    # A model no list names any more leaves the durable copy once the new record is written.
    (cache / ".mlcache" / "prefetch" / "modelscope--Qwen--m.done").unlink()
    (cache / ".mlcache" / "prefetch" / "complete").write_text("w3\n")
    pruned = copy("refresh", cache, durable, "--warmup", "w3")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["bytesSent"] == 0  # unchanged models are checked, not copied
    assert record(durable)["parts"] == [HF_MODEL, "modelscope/models/Qwen/broken"]
    assert not (durable / "tree" / MS_MODEL).exists() and (durable / "tree" / "modelscope/models/Qwen/broken/w.bin").exists()


def test_a_changed_model_is_withdrawn_alone_so_a_cut_short_refresh_still_restores_the_others(tmp_path, monkeypatch, capsys):
    from workloads import cache_copy  # noqa: PLC0415

    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    # The Hugging Face model changed, and its copy fails (the node goes away): the refresh has
    # withdrawn that model alone from the record before touching its copy.
    (cache / HF_MODEL / "blobs" / "bb22").write_bytes(b'{"changed": true}')
    (cache / ".mlcache" / "prefetch" / "complete").write_text("w2\n")

    def copy_cut_short(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cache_copy, "copy_tree", copy_cut_short)
    argv = ["refresh", "--cache", str(cache), "--durable", str(durable), "--warmup", "w2"]
    assert cache_copy.main([*argv, "--ready", str(cache / ".mlcache" / "prefetch" / "complete")]) == 2
    assert f"{HF_MODEL}: withdrawn from the record" in capsys.readouterr().err
    monkeypatch.undo()
    left = record(durable)
    assert left["parts"] == [MS_MODEL] and sorted(left["markers"]) == ["modelscope--Qwen--m.done"]
    # Node loss now: the ModelScope model comes back verified with its marker; the cache is not warm,
    # so the warm-up downloads the withdrawn model (it has no marker).
    lost = tmp_path / "new-cache"
    lost.mkdir()
    restored = copy("restore", lost, durable)
    assert json.loads(restored.stdout)["restored"], restored.stderr
    assert tree(lost / MS_MODEL) == tree(cache / MS_MODEL) and not (lost / HF_MODEL).exists()
    assert sorted(p.name for p in (lost / ".mlcache" / "prefetch").iterdir()) == ["modelscope--Qwen--m.done"]


def test_a_restore_cut_short_leaves_its_models_staged_never_in_place_and_the_next_one_starts_clean(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    lost = tmp_path / "new-cache"
    staged = lost / ".mlcache" / "restoring" / HF_MODEL / "blobs"
    staged.mkdir(parents=True)
    (staged / "aa11").write_bytes(b"\0" * 1000)  # what a killed restore left: a partly written blob
    result = copy("restore", lost, durable)
    assert json.loads(result.stdout)["restored"], result.stderr
    assert "left by a restore that was cut short" in result.stderr
    assert not (lost / ".mlcache" / "restoring").exists() and tree(lost / HF_MODEL) == tree(cache / HF_MODEL)


def test_a_durable_copy_damaged_after_its_record_is_never_restored_as_verified(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    (durable / "tree" / MS_MODEL / "weights.bin").unlink()  # lost after the record was written
    lost = tmp_path / "new-cache"
    lost.mkdir()
    result = copy("restore", lost, durable)
    assert result.returncode == 0 and json.loads(result.stdout)["restored"] is False
    assert "not the one its refresh recorded" in result.stderr
    assert tree(lost) == {}  # no model and no marker: the warm-up downloads everything


def test_one_refresh_at_a_time_and_no_restore_from_a_copy_being_written(tmp_path):
    import fcntl  # noqa: PLC0415

    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    with open(durable / ".lock", "a") as held:  # a refresh holds it while it writes
        fcntl.flock(held, fcntl.LOCK_EX)
        lost = tmp_path / "new-cache"
        lost.mkdir()
        busy = copy("restore", lost, durable)
        assert json.loads(busy.stdout) == {"restored": False, "reason": "durable copy busy"} and tree(lost) == {}
        waiting = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "refresh",
                "--cache",
                str(cache),
                "--durable",
                str(durable),
                "--ready",
                str(cache / ".mlcache/prefetch/complete"),
                "--warmup",
                "w1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert waiting.poll() is None  # the second refresh waits for the first
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and json.loads(out)["verified"], err


def test_markers_that_name_nested_directories_copy_the_outer_one(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    add_marker(cache, "modelscope--Qwen--m-sub", cache / MS_MODEL / "sub")
    (cache / MS_MODEL / "sub").mkdir()
    durable.mkdir()
    result = copy("refresh", cache, durable, "--warmup", "w1")
    assert result.returncode == 0, result.stderr
    saved = record(durable)
    assert saved["parts"] == [HF_MODEL, MS_MODEL] and saved["owners"]["modelscope--Qwen--m-sub.done"] == MS_MODEL


def test_a_record_that_could_escape_or_overlap_is_not_trusted(tmp_path):
    from workloads.cache_copy import read_record  # noqa: PLC0415

    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    good = record(durable)
    assert read_record(durable) == good
    for bad in (
        {"parts": [*good["parts"], "modelscope/models"]},  # overlapping parts
        {"parts": ["../outside"]},
        {"markers": {**good["markers"], "../x": "{}"}},
        {"shapes": {}},
    ):
        (durable / "refreshed.json").write_text(json.dumps({**good, **bad}))
        assert read_record(durable) is None, bad


def test_the_model_a_marker_names_is_the_hugging_face_repository_or_the_model_directory(tmp_path):
    from workloads.cache_copy import CopyError, model_dir  # noqa: PLC0415

    (tmp_path / HF_MODEL / "snapshots" / "c0ffee").mkdir(parents=True)
    (tmp_path / "modelscope" / "models" / "snapshots" / "m").mkdir(parents=True)  # an org named "snapshots"
    assert model_dir(f"{tmp_path}/{HF_MODEL}/snapshots/c0ffee", tmp_path) == HF_MODEL
    assert model_dir(f"{tmp_path}/modelscope/models/snapshots/m", tmp_path) == "modelscope/models/snapshots/m"
    with pytest.raises(CopyError, match="outside the cache"):
        model_dir("/elsewhere/models--org--m/snapshots/c0ffee", tmp_path)


def test_restore_brings_an_empty_cache_back_and_leaves_a_warm_one_alone(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    lost = tmp_path / "new-cache"  # the claim re-created after node loss: empty
    lost.mkdir()
    result = copy("restore", lost, durable)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["restored"] and summary["verified"] and summary["warmup"] == "w1"
    for part in (HF_MODEL, MS_MODEL, ".mlcache/prefetch"):
        assert tree(lost / part) == tree(cache / part)
    assert (lost / HF_MODEL / "snapshots/c0ffee/model.safetensors").read_bytes() == (cache / HF_MODEL / "blobs/aa11").read_bytes()
    # Warm now (its warm-up marker came back last): a second restore changes nothing.
    (lost / MS_MODEL / "weights.bin").write_bytes(b"new")
    again = copy("restore", lost, durable)
    assert json.loads(again.stdout) == {"restored": False, "reason": "warm"}
    assert (lost / MS_MODEL / "weights.bin").read_bytes() == b"new"


def test_restore_leaves_a_cache_an_interrupted_warm_up_filled_untouched(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    # The warm-up of a new list started (it removes `complete` first) and was cut short: the cache
    # holds models and markers but is not warm. The restore must not overwrite or remove any of it.
    (cache / ".mlcache" / "prefetch" / "complete").unlink()
    (cache / MS_MODEL / "partial.bin").write_bytes(b"half")
    before = tree(cache)
    result = copy("restore", cache, durable)
    assert result.returncode == 0 and json.loads(result.stdout) == {"restored": False, "reason": "not empty"}
    assert "the warm-up resumes from it" in result.stderr and tree(cache) == before


def test_without_a_refreshed_copy_or_when_the_restore_fails_the_warm_up_downloads(tmp_path):
    cache, durable = tmp_path / "cache", tmp_path / "durable"
    (cache / "huggingface" / "hub").mkdir(parents=True)  # what the new claim held before: kept
    durable.mkdir()
    nothing = copy("restore", cache, durable)
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == {"restored": False, "reason": "no durable copy"}
    (durable / "refreshed.json").write_text("{not json")
    unreadable = copy("restore", cache, durable)
    assert unreadable.returncode == 0 and json.loads(unreadable.stdout)["reason"] == "no durable copy"
    # A durable copy that cannot be read back (here a FIFO, which no cache holds): exit 0, what it
    # wrote removed, what was there before kept.
    make_cache(tmp_path / "warm")
    assert copy("refresh", tmp_path / "warm", durable, "--warmup", "w1").returncode == 0
    os.mkfifo(durable / "tree" / MS_MODEL / "pipe")
    failed = copy("restore", cache, durable)
    assert failed.returncode == 0 and json.loads(failed.stdout)["restored"] is False
    assert "restore failed" in failed.stderr
    assert tree(cache) == {"huggingface": "dir", "huggingface/hub": "dir"}


def test_the_durable_objects_are_valid_and_pass_every_policy():
    run = bound_render()
    assert validation_errors([doc for doc, _ in sent_documents(run)]) == []
    checked = 0
    for policy in policies.POLICIES:
        if isinstance(policy, StackValidationPolicy):
            assert violations(policy.validate, stack_args(run)) == [], policy.name
            continue
        for r in run.kubernetes_objects():
            args = ResourceValidationArgs(r.type, unknown_checking_proxy(r.inputs), r.urn, r.name, policy_resource(r).opts, None)
            assert violations(policy.validate, args) == [], (policy.name, r.name)
            checked += 1
    assert checked > 20


def test_restore_copies_into_staging_and_writes_markers_only_after_every_model_is_in_place(tmp_path, monkeypatch):
    from workloads import cache_copy  # noqa: PLC0415

    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    lost = tmp_path / "new-cache"
    lost.mkdir()
    seen = []
    real_copy = cache_copy.copy_tree

    def watched(sources, root, *args, **kwargs):
        # Each model lands in the staging directory, never where the warm-up looks, and no marker exists yet.
        seen.append((root.relative_to(lost).as_posix(), (lost / ".mlcache" / "prefetch").exists()))
        return real_copy(sources, root, *args, **kwargs)

    monkeypatch.setattr(cache_copy, "copy_tree", watched)
    argv = ["restore", "--cache", str(lost), "--durable", str(durable), "--ready", str(lost / ".mlcache/prefetch/complete")]
    assert cache_copy.main(argv) == 0
    assert seen == [(f".mlcache/restoring/{HF_MODEL}", False), (f".mlcache/restoring/{MS_MODEL}", False)]
    assert (lost / ".mlcache" / "prefetch" / "complete").read_text() == "w1\n"


def test_a_refresh_removes_unlisted_models_only_after_the_new_record_is_written(tmp_path, monkeypatch):
    from workloads import cache_copy  # noqa: PLC0415

    cache, durable = tmp_path / "cache", tmp_path / "durable"
    make_cache(cache)
    durable.mkdir()
    assert copy("refresh", cache, durable, "--warmup", "w1").returncode == 0
    (cache / ".mlcache" / "prefetch" / "modelscope--Qwen--m.done").unlink()
    (cache / ".mlcache" / "prefetch" / "complete").write_text("w2\n")
    present_when_recorded = []
    real_write = cache_copy.write_atomically

    def watched(path, text):
        present_when_recorded.append((durable / "tree" / MS_MODEL / "weights.bin").exists())
        real_write(path, text)

    monkeypatch.setattr(cache_copy, "write_atomically", watched)
    argv = ["refresh", "--cache", str(cache), "--durable", str(durable), "--warmup", "w2"]
    assert cache_copy.main([*argv, "--ready", str(cache / ".mlcache/prefetch/complete")]) == 0
    assert present_when_recorded == [True] and not (durable / "tree" / MS_MODEL).exists()
    assert record(durable)["parts"] == [HF_MODEL]
