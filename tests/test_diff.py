"""mlcache diff: the engine's action for each change, and honest data-loss flags."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys

import pytest

from mlcache.cli import diff as diff_command
from mlcache.cli import render as render_command
from mlcache.cluster.bound_cache import assume_live
from mlcache.preview import diff, mock_engine
from mlcache.preview.diff import (
    DATA_LOSS,
    REFUSED,
    STRANDS,
    Change,
    StackPreview,
    base_claim,
    manifest_diff,
    markdown_report,
    plan,
    report,
    with_ignored_changes,
)
from mlcache.preview.policy_check import policy_findings
from mlcache.preview.render import RENDER_ERRORS, as_json, documents, render
from mlcache.program import names
from tests.conftest import ROOT, rendered


def _plan(base: tuple[str, ...], head: tuple[str, ...], stack: str = "dev"):
    return plan(as_json(rendered(stack, *base)), as_json(rendered(stack, *head)))


def _actions(changes):
    return {c.label.split("/")[0]: c.action for c in changes}


def test_no_change():
    assert _plan((), ()) == []
    assert report("dev", []) == "stack dev: no changes\n"


def test_volume_mode_change_replaces_the_cache_and_the_job():
    changes = _plan((), ("cache.volumeMode=Block",))
    # Block mode has no files to warm up or load: the scripts ConfigMap goes too.
    assert _actions(changes) == {"PersistentVolumeClaim": "replace", "Job": "replace", "ConfigMap": "delete"}
    pvc, job = (next(c for c in changes if c.label.startswith(kind)) for kind in ("PersistentVolumeClaim", "Job"))
    assert pvc.data_loss and "spec.volumeMode" in pvc.reasons[0]
    assert not job.data_loss and any("training run" in w for w in job.warnings)
    assert any("uses the outputs of PersistentVolumeClaim/ms-swift-cache-pvc" in r for r in job.reasons)
    assert DATA_LOSS in report("dev", changes)


def test_replica_change_replaces_only_the_class():
    changes = _plan((), ("linstor.replicas=2",))
    assert _actions(changes) == {"StorageClass": "replace"}
    text = report("dev", changes)
    assert DATA_LOSS not in text and "training run" not in text


def test_gpu_count_change_replaces_the_job_but_is_no_data_loss():
    changes = _plan((), ("job.gpus=8",))
    assert _actions(changes) == {"Job": "replace"}
    assert DATA_LOSS not in report("dev", changes)


def test_cache_growth_is_an_in_place_update():
    changes = _plan((), ("cache.size=200Gi",))
    assert _actions(changes) == {"PersistentVolumeClaim": "update"}
    assert not changes[0].data_loss


def test_backend_switch_deletes_the_class_and_replaces_the_cache():
    changes = _plan((), ("backend=rook-ceph",))
    assert _actions(changes) == {"StorageClass": "delete", "PersistentVolumeClaim": "replace", "Job": "replace"}
    assert any(c.data_loss for c in changes)


def test_reclaim_policy_change_replaces_the_class():
    assert _actions(_plan((), ("linstor.reclaimPolicy=Retain",))) == {"StorageClass": "replace"}


def test_an_immutable_field_without_replace_on_changes_is_flagged():
    old, new = as_json(rendered("dev")), as_json(rendered("dev", "cache.volumeMode=Block"))
    for obj in new["objects"]:
        obj["replaceOnChanges"] = []
    pvc = next(c for c in plan(old, new) if c.label.startswith("PersistentVolumeClaim"))
    assert pvc.action == "update" and "refuse" in pvc.warnings[0]


def test_protected_cache_blocks_the_replacement_until_unprotected():
    blocked = _plan((), ("cache.volumeMode=Block",), stack="prod")
    pvc = next(c for c in blocked if c.label.startswith("PersistentVolumeClaim"))
    assert any("BLOCKED" in w for w in pvc.warnings)
    allowed = _plan((), ("cache.volumeMode=Block", "cache.protect=false"), stack="prod")
    assert not any("BLOCKED" in w for c in allowed for w in c.warnings)
    assert next(c for c in allowed if c.label.startswith("PersistentVolumeClaim")).data_loss


def test_job_disabled_is_a_delete_that_stops_the_run():
    changes = _plan((), ("job.enabled=false",))
    assert _actions(changes) == {"Job": "delete"}
    assert "stopped" in changes[0].warnings[0]


def _warnings(changes, kind: str) -> list[str]:
    return [w for c in changes if c.label.startswith(kind) for w in c.warnings]


@pytest.mark.parametrize(
    ("stack", "change"),
    [
        ("prod", "zone=sdsu"),
        ("prod", "zone="),
        ("dev", "zone=ucsd"),
        ("dev", "job.gpuProduct=NVIDIA-H100-80GB-HBM3"),
    ],
)
def test_a_placement_change_that_keeps_the_cache_strands_it(stack, change):
    changes = _plan((), (change,), stack=stack)
    (stranded,) = [w for w in _warnings(changes, "Job") if w.startswith(STRANDS)]
    assert "cache.relocate copy" in stranded and "PersistentVolumeClaim/ms-swift-cache-pvc" in stranded
    assert next(c for c in changes if c.label.startswith("Job")).data_loss
    assert _actions(changes).get("PersistentVolumeClaim", "update") == "update"


def test_where_a_move_by_copy_is_refused_the_diff_offers_fresh_only_and_says_why():
    """Block mode and multi-node runs: cache.relocate copy is refused by the settings, so no way out
    the diff prints names it."""
    block = ("cache.volumeMode=Block",)
    cases = [
        (_plan(block, (*block, "zone=sdsu"), stack="prod"), "Job", STRANDS),
        (_plan(block, (*block, "cache.size=100Gi"), stack="prod"), "PersistentVolumeClaim", REFUSED),
        (_plan(block, ("cache.protect=false",), stack="prod"), "PersistentVolumeClaim", DATA_LOSS),  # Block -> Filesystem
    ]
    for changes, kind, flag in cases:
        (warning,) = [w for w in _warnings(changes, kind) if w.startswith(flag)]
        assert "cache.relocate copy" not in warning and "cache.relocate fresh" in warning, warning
        assert "no move by copy here: a raw device holds no files to copy and verify" in warning
    # From several nodes to one, the new settings allow the move: it is offered.
    (loss,) = [
        w
        for w in _warnings(_plan(("job.nodes=2",), ("backend=rook-ceph", "cache.protect=false"), stack="prod"), "Persistent")
        if w.startswith(f"{DATA_LOSS}: deletes and re-creates")
    ]
    assert "set cache.relocate copy" in loss and "no move by copy here" not in loss
    # A cache.name with no room for the copy's names: the settings refuse copy, so it is not offered.
    (stranded,) = [
        w
        for w in _warnings(_plan(("cache.name=ms.swift-cache",), ("cache.name=ms.swift-cache", "zone=sdsu"), stack="prod"), "Job")
        if w.startswith(STRANDS)
    ]
    assert (
        "cache.relocate copy" not in stranded
        and "Set cache.relocate fresh and cache.protect false in the same change" in stranded
    )
    assert "no move by copy here: the copy's objects are named after cache.name" in stranded
    nodes = ("job.nodes=2",)
    refused = [w for w in _warnings(_plan(nodes, (*nodes, "cache.size=100Gi"), stack="prod"), "Persistent") if REFUSED in w]
    assert len(refused) == 2  # each worker's claim
    for warning in refused:
        assert "cache.relocate copy" not in warning and "no move by copy here: a copy moves a single-node cache" in warning


def test_a_new_job_placed_away_from_where_its_kept_claim_was_placed_strands_it():
    """From several nodes to one with a zone change: the single-node Job is new (no previous Job to
    compare with), so the claim's own placement record is what it is compared with."""
    changes = _plan(("job.nodes=2",), ("zone=sdsu",), stack="prod")
    (stranded,) = [w for w in _warnings(changes, "Job/sft-qwen3vl-fire-4gpu") if w.startswith(STRANDS)]
    assert "PersistentVolumeClaim/ms-swift-cache-pvc keeps its volume where the previous placement (zone ucsd" in stranded
    assert not [w for w in _warnings(_plan(("job.nodes=2",), (), stack="prod"), "Job") if w.startswith(STRANDS)]
    assert not [w for w in _warnings(_plan((), ("job.runId=r2",), stack="prod"), "Job") if w.startswith(STRANDS)]


def test_a_jobset_moved_away_from_its_workers_claims_strands_each_of_them():
    jobset = ("job.nodes=2", "job.engine=jobset")
    stranded = [w for w in _warnings(_plan(jobset, (*jobset, "zone=sdsu"), stack="prod"), "JobSet") if w.startswith(STRANDS)]
    assert sorted(w.split(" keeps ")[0] for w in stranded) == [
        f"{STRANDS}: PersistentVolumeClaim/ms-swift-cache-pvc",
        f"{STRANDS}: PersistentVolumeClaim/ms-swift-cache-pvc-1",
    ]
    assert all("no move by copy here: a copy moves a single-node cache" in w for w in stranded)
    assert not [w for w in _warnings(_plan(jobset, (*jobset, "job.runId=r2"), stack="prod"), "JobSet") if STRANDS in w]


def test_a_placement_change_that_recreates_the_cache_does_not_strand_it():
    for head in (("zone=ucsd", "cache.volumeMode=Block"), ("zone=ucsd", "backend=rook-ceph")):
        changes = _plan((), head)
        assert not [w for w in _warnings(changes, "Job") if w.startswith(STRANDS)]
    assert not [w for w in _warnings(_plan(("backend=rook-ceph",), ("backend=rook-ceph", "zone=ucsd")), "Job") if STRANDS in w]


def test_relocate_in_the_same_change_recreates_the_cache_instead_of_stranding_it():
    changes = _plan((), ("zone=sdsu", "cache.relocate=true", "cache.protect=false"), stack="prod")
    assert _actions(changes) == {"PersistentVolumeClaim": "replace", "Job": "replace"}
    pvc = next(c for c in changes if c.label.startswith("PersistentVolumeClaim"))
    assert pvc.data_loss and "mlcache/placement" in pvc.reasons[0]
    assert not [w for c in changes for w in c.warnings if w.startswith(STRANDS)]
    blocked = _plan((), ("zone=sdsu", "cache.relocate=true"), stack="prod")
    assert any("BLOCKED" in w for w in _warnings(blocked, "PersistentVolumeClaim"))


def test_relocate_on_or_off_alone_changes_nothing_and_left_on_a_growth_recreates():
    assert _plan((), ("cache.relocate=true",)) == []
    assert _plan(("zone=ucsd", "cache.relocate=true"), ("zone=ucsd",)) == []
    grown = _plan(("cache.relocate=true",), ("cache.relocate=true", "cache.size=200Gi"))
    assert _actions(grown)["PersistentVolumeClaim"] == "replace" and any(c.data_loss for c in grown)


def test_a_growth_that_relocate_fresh_would_wipe_says_the_guard_refuses_it_and_how_to_expand():
    """The guard refuses re-creating a bound claim only to grow it where it could expand in place."""
    fresh = ("cache.relocate=fresh", "cache.protect=false")
    (loss,) = [w for w in _warnings(_plan(fresh, (*fresh, "cache.size=800Gi"), stack="prod"), "Persistent") if DATA_LOSS in w]
    assert loss.endswith(
        "cache.relocate is still fresh, and the claim can grow in place: set cache.relocate false to expand it, keeping the data"
    )
    # Re-created for another reason as well (a new zone): nothing to expand in place.
    moved = _plan(fresh, (*fresh, "cache.size=800Gi", "zone=sdsu"), stack="prod")
    assert not [w for w in _warnings(moved, "Persistent") if "grow in place" in w]
    rook = ("backend=rook-ceph", *fresh)  # a class this stack does not make: read only at up
    (grown,) = [w for w in _warnings(_plan(rook, (*rook, "cache.size=800Gi"), stack="prod"), "Persistent") if DATA_LOSS in w]
    assert "(nothing changed) if StorageClass rook-ceph-block allows expansion: cache.relocate is still fresh" in grown
    renamed = _plan(fresh, (*fresh, "cache.size=800Gi", "cache.name=other-cache"), stack="prod")
    assert not [w for w in _warnings(renamed, "Persistent") if "grow in place" in w]


def test_other_job_changes_do_not_strand_the_cache():
    assert not [w for w in _warnings(_plan((), ("job.gpus=8",)), "Job") if w.startswith(STRANDS)]


def test_a_shrink_is_flagged_as_refused_with_the_way_out():
    changes = _plan((), ("cache.size=100Gi",), stack="prod")
    (warning,) = _warnings(changes, "PersistentVolumeClaim")
    assert "refuse" in warning and "500Gi -> 100Gi" in warning and "cache.relocate copy" in warning
    assert not changes[0].data_loss
    assert changes[0].gated  # --fail-on-data-loss stops a preview whose `up` would fail


def test_growth_is_flagged_only_when_the_class_forbids_expansion():
    assert _warnings(_plan((), ("cache.size=200Gi",)), "PersistentVolumeClaim") == []
    forbidden = _plan(("linstor.allowVolumeExpansion=false",), ("linstor.allowVolumeExpansion=false", "cache.size=200Gi"))
    (warning,) = _warnings(forbidden, "PersistentVolumeClaim")
    assert "allowVolumeExpansion false" in warning and "linstor.allowVolumeExpansion true" in warning
    assert any(c.gated for c in forbidden)
    allowed_now = _plan(("linstor.allowVolumeExpansion=false",), ("cache.size=200Gi",))
    assert _warnings(allowed_now, "PersistentVolumeClaim") == []
    assert not any(c.gated for c in allowed_now)


def test_ignored_changes_keep_the_old_value_or_stay_absent():
    old = {"metadata": {"annotations": {"a/b": "1", "keep": "x"}}}
    new = {"metadata": {"annotations": {"a/b": "2", "keep": "y", "c.d/e": "3"}}}
    paths = ['metadata.annotations["a/b"]', 'metadata.annotations["c.d/e"]']
    assert with_ignored_changes(old, new, paths) == {"metadata": {"annotations": {"a/b": "1", "keep": "y"}}}


def test_the_scripts_configmap_is_diffed_by_content_and_only_its_changed_files_are_shown():
    (change,) = _plan(("cache.prefetch=[Qwen/A]",), ("cache.prefetch=[Qwen/A, Qwen/B]",))
    shown = manifest_diff(change)
    assert "-  prefetch.txt: sha256:" in shown and "+  prefetch.txt: sha256:" in shown and "(2 lines)" in shown
    assert "--- prefetch.txt\n+++ prefetch.txt\n" in shown and "\n+Qwen/B\n" in shown
    assert "def " not in shown and len(shown) < 1500  # no script body: each file is its hash and length
    block = ("cache.volumeMode=Block", "cache.prefetch=[]")
    (created,) = [c for c in _plan(block, ()) if c.label.startswith("ConfigMap")]
    assert created.action == "create" and "prewarm.py: sha256:" in manifest_diff(created) and len(manifest_diff(created)) < 2000


def test_the_pr_comment_puts_a_summary_first_with_the_risk_and_the_policy_packs_verdict():
    block = ("cache.volumeMode=Block", "cache.prefetch=[]")
    dev_new, prod_new = as_json(rendered("dev", *block)), as_json(rendered("prod"))
    # A mandatory violation the settings cannot produce (they refuse :latest), as the pack sees it.
    job = next(o for o in dev_new["objects"] if o["manifest"]["kind"] == "Job")
    job["manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "trainer:latest"
    previews = [
        StackPreview("dev", plan(as_json(rendered("dev")), dev_new), policy_findings(dev_new["objects"]), dev_new["objects"]),
        StackPreview("prod", [], policy_findings(prod_new["objects"]), prod_new["objects"]),
    ]
    comment = markdown_report("origin/main", previews)
    summary = comment.split("\n### ")[0]
    assert summary.startswith("<!-- mlcache-preview -->\n## mlcache preview against `origin/main`")
    assert "| dev | 2 to replace, 1 to delete | DATA LOSS, RUN RESTARTS | **1 mandatory violation** |" in summary
    assert "| prod | no changes | - | passes, 1 advisory |" in summary
    assert "| `PersistentVolumeClaim/ms-swift-cache-pvc` | replace | changes spec.volumeMode | DATA LOSS |" in comment
    assert "- mandatory `images-pinned` (`training-job`): container sft uses image 'trainer:latest'" in comment
    assert "- advisory `protected-cache-single-replica`" in comment
    assert "- `Job/sft-qwen3vl-fire-4gpu`: zone ucsd, GPU product NVIDIA-A100-SXM4-80GB" in comment
    assert "<details><summary>stack dev: manifest diffs</summary>" in comment and "+  volumeMode: Block" in comment
    assert "- `PersistentVolumeClaim/ms-swift-cache-pvc`: !! DATA LOSS: deletes and re-creates" in comment.split("<details>")[0]
    # Over GitHub's limit the largest diffs go first, each said to be; the tables stay.
    trimmed = markdown_report("origin/main", previews, limit=len(comment) - 100)
    assert len(trimmed) <= len(comment) - 100 and trimmed.split("\n### ")[0] == summary
    (largest,) = [
        t for t in ("delete ConfigMap/mlcache-scripts", "replace Job/sft-qwen3vl-fire-4gpu") if f"`{t}`: its diff (" in trimmed
    ]
    assert largest == "replace Job/sft-qwen3vl-fire-4gpu" and "+  volumeMode: Block" in trimmed  # the small one stays
    lines = manifest_diff(next(c for c in previews[0].changes if c.label == "Job/sft-qwen3vl-fire-4gpu")).count("\n")
    assert (
        f"`replace Job/sft-qwen3vl-fire-4gpu`: its diff ({lines} lines) is trimmed to fit the comment; "
        "`mlcache diff --base 'origin/main' --stack dev` prints it" in trimmed
    )
    assert "| `PersistentVolumeClaim/ms-swift-cache-pvc` | replace |" in trimmed
    # Still too long without any diff: whole sections are cut from the end, saying so; never the summary.
    tiny = markdown_report("origin/main", previews, limit=len(summary) + 400)
    assert len(tiny) <= len(summary) + 400 and tiny.startswith(summary)
    assert "The rest is cut to fit a comment" in tiny and "`mlcache diff --base 'origin/main'` prints everything" in tiny


# What `mlcache rehearse --stack prod --json` printed on the runbook's fleet (input to the comment).
REHEARSED = {
    "stack": "prod",
    "ok": False,
    "volumes": [
        {
            "claim": "ml-training/ms-swift-cache-pvc",
            "phase": "Bound",
            "storage_class": "linstor-fast-cache",
            "volume": "pvc-d096",
            "volume_mode": "Filesystem",
            "size": "500Gi",
            "nodes": ["ucsd-a100-1"],
            "zones": ["ucsd"],
        }
    ],
    "pods": [
        {
            "pod": "ml-training/sft-1",
            "role": "training",
            "phase": "Running",
            "node": "ucsd-a100-1",
            "zone": "ucsd",
            "mounts_cache": True,
            "with_cache": True,
            "reason": None,
        },
        {
            "pod": "ml-training/sft-2",
            "role": "training",
            "phase": "Pending",
            "node": None,
            "zone": None,
            "mounts_cache": True,
            "with_cache": None,
            "reason": "0/12 nodes are available: 1 node(s) had a volume node affinity conflict.",
        },
    ],
    "problems": [{"subject": "pod ml-training/sft-2", "what": "cannot be placed.", "fix": "free an A100 in ucsd."}],
}


def test_the_pr_comment_shows_where_the_rehearsal_placed_the_cache_and_pods_else_what_is_asked_for():
    objects = as_json(rendered("prod"))["objects"]
    rehearsed = markdown_report("main", [StackPreview("prod", [], [], objects, rehearsed=REHEARSED)])
    placement = rehearsed.split("**Placement, rehearsed on the stack's fleet:**\n")[1]
    assert placement.splitlines()[:3] == [
        "- `PersistentVolumeClaim/ml-training/ms-swift-cache-pvc`: Bound, on ucsd-a100-1 (zone ucsd)",
        "- training pod `ml-training/sft-1`: on ucsd-a100-1 (zone ucsd), with its cache",
        "- training pod `ml-training/sft-2`: **not placed**: " + REHEARSED["pods"][1]["reason"],
    ]
    assert "- !! pod ml-training/sft-2: cannot be placed. Fix: free an A100 in ucsd." in placement
    assert "Placement asked for" not in rehearsed
    unfinished = markdown_report("main", [StackPreview("prod", [], [], objects, rehearsed={})])
    assert "The rehearsal on the stack's fleet did not finish" in unfinished and "**Placement asked for:**" in unfinished
    assert "rehearsed" not in markdown_report("main", [StackPreview("prod", [], [], objects)])


def test_diff_reads_the_rehearsal_of_each_stack_from_the_placement_directory(project_copy, tmp_path):
    placement = tmp_path / "placement"
    placement.mkdir()
    (placement / "prod.json").write_text(json.dumps(REHEARSED))
    (placement / "dev.json").write_text('{"volumes": "not a list"}')  # not what rehearse prints: did not finish
    alone = _diff(project_copy, "--base", "HEAD", "--placement", str(placement))
    assert alone.returncode == 2 and "use it with --markdown" in alone.stderr
    # The real preview of prod failed (the API server refused its dry-run); dev's was not run.
    real = tmp_path / "real"
    _write_real_preview(real / "prod", 255, REFUSED_PREVIEW, 0, "stack prod: pulumi preview can dry-run every update")
    argv = ("--base", "HEAD", "--markdown", "--placement", str(placement), "--real-preview", str(real))
    result = _diff(project_copy, *argv)
    assert result.returncode == 0, result.stderr
    dev, prod = result.stdout.split("### stack dev")[1].split("### stack prod")
    assert "did not finish" in dev and "Placement asked for" in dev
    assert "on ucsd-a100-1 (zone ucsd), with its cache" in prod and "Placement asked for" not in prod
    assert "| dev | no changes | - | passes | not run |" in result.stdout and "**Real `pulumi preview`:** not run" in dev
    assert "| **fails** (exit 255) |" in result.stdout and "field can not be less than previous value" in prod
    # The gate fails with it: `pulumi up` would fail the same way.
    gated = _diff(project_copy, *argv, "--fail-on-data-loss")
    assert gated.returncode == 1 and gated.stdout == result.stdout


REFUSED_PREVIEW = (
    "error: resource ml-training/ms-swift-cache-pvc was not successfully updated: PersistentVolumeClaim "
    '"ms-swift-cache-pvc" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than previous value\n'
)


def test_a_real_preview_directory_that_is_not_one_is_refused(capsys, tmp_path):
    code = diff_command.main(["--base", "HEAD", "--markdown", "--real-preview", str(tmp_path / "typo")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--real-preview" in err and "not a directory" in err


def _write_real_preview(folder, code, output, access_code, access):
    folder.mkdir(parents=True)
    for name, text in (
        ("preview.rc", f"{code}\n"),
        ("preview.txt", output),
        ("access.rc", f"{access_code}\n"),
        ("access.txt", access),
    ):
        (folder / name).write_text(text)


def test_the_pr_comment_carries_each_real_preview_and_whether_it_could_dry_run(tmp_path):
    objects = as_json(rendered("prod"))["objects"]
    cannot = "stack prod: pulumi preview cannot dry-run on the API server with these credentials: it falls back"
    _write_real_preview(tmp_path / "passed", 0, "Previewing update (prod):\nResources:\n    9 unchanged\n", 0, "stack prod: can")
    _write_real_preview(tmp_path / "plain", 0, "Resources:\n    9 unchanged\n", 1, cannot + "\n  create, patch jobs.batch\n")
    _write_real_preview(tmp_path / "refused", 255, REFUSED_PREVIEW * 40, 0, "stack prod: can")
    (tmp_path / "cut").mkdir()  # the job stopped before it wrote its exit status

    def comment(folder, limit=diff.COMMENT_LIMIT):
        real = diff_command.real_preview(tmp_path, folder)
        return markdown_report("main", [StackPreview("prod", [], [], objects, real=real)], limit)

    assert "| prod | no changes | - | passes | passes, dry-run on the API server |" in comment("passed")
    assert "**Real `pulumi preview`:** passes.\n  - stack prod: can\n" in comment("passed")
    plain = comment("plain")
    assert "| passes, **without server-side dry-run** |" in plain
    assert f"**Real `pulumi preview`:** passes.\n  - !! {cannot}; create, patch jobs.batch\n" in plain
    refused = comment("refused")
    assert "| **fails** (exit 255) |" in refused and "`pulumi up` would fail too" in refused
    assert "<details><summary>stack prod: pulumi preview</summary>" in refused  # no manifest diff to fold beside it
    # Over the limit its output is trimmed like a diff, and the comment says where the whole of it is.
    trimmed = comment("refused", limit=len(refused) - 1000)
    assert "`pulumi preview --diff`: its output (40 lines) is trimmed to fit the comment; the pulumi-preview job's log" in trimmed
    assert trimmed.split("\n### ")[0] == refused.split("\n### ")[0]
    assert "| **did not finish** |" in comment("cut") and "| not run |" in comment("absent")
    # What it would have refused is unknown: the gate counts it as failed; a stack it never ran for, not.
    assert diff_command.real_preview(tmp_path, "cut").failed and not diff_command.real_preview(tmp_path, "absent").failed
    # `mlcache access` could not say (a cluster it could not read): neither with nor without dry-run.
    _write_real_preview(tmp_path / "unchecked", 0, "error: killed", 3, "error: cannot read the cluster")
    unchecked = comment("unchecked")
    assert "| passes (dry-run not checked) |" in unchecked
    assert "was not checked: `mlcache access` failed: error: cannot read the cluster." in unchecked
    assert "```diff\nerror: killed\n```\n" in unchecked  # output without a last newline: the fence still closes
    # A long output keeps its end, where pulumi prints what failed.
    long = "".join(f"  ~ line {n}\n" for n in range(3000)) + "error: the API server refused the dry-run\n"
    _write_real_preview(tmp_path / "long", 1, long, 0, "stack prod: can")
    tail = comment("long")
    assert "... (2601 earlier lines: the pulumi-preview job's log has them)" in tail
    assert "error: the API server refused the dry-run" in tail and "~ line 2601\n" in tail and "~ line 2600\n" not in tail
    assert diff_command.real_preview(None, "prod") is None and "real preview" not in markdown_report(
        "main", [StackPreview("prod", [], [], objects)]
    )


def test_a_failed_or_unfinished_rehearsal_is_said_never_shown_as_placed():
    objects = as_json(rendered("prod"))["objects"]

    def placement(document):
        return markdown_report("main", [StackPreview("prod", [], [], objects, rehearsed=document)])

    failed = placement({"stack": "prod", "ok": False, "error": "pulumi up failed against the rehearsal cluster:\nquota"})
    assert "- !! the rehearsal's pulumi up failed: pulumi up failed against the rehearsal cluster: quota" in failed
    moving = placement({**REHEARSED, "problems": [], "failed": ["the pod is not with its volume"], "moving": ["copy Job x"]})
    assert "- !! the pod is not with its volume\n- !! still moving: copy Job x\n" in moving
    silent = placement({**REHEARSED, "problems": [], "ok": False})
    assert "!! the rehearsal did not pass" in silent
    assert diff.valid_placement(REHEARSED) and not diff.valid_placement({"volumes": [{"claim": "x"}], "pods": [], "problems": []})


def test_the_pr_comment_survives_backticks_pipes_and_secrets():
    change = _plan((), ("cache.volumeMode=Block", "cache.prefetch=[]"))
    diffs = [c for c in change if c.label.startswith("PersistentVolumeClaim")]
    diffs[0].warnings.append("a ``` fence and a | pipe\nover two lines")
    new = as_json(rendered("dev", "job.env.X=y"))
    secret = as_json(render("dev", [], ["job.env.X=y"])[0], "k" * 32)
    comment = markdown_report("main", [StackPreview("dev", diffs, [], secret["objects"])])
    assert "!! a ``` fence and a | pipe over two lines" in comment  # one list line, the pipe as typed
    assert "````diff" in comment or "```diff" in comment
    assert "its spec is secret" in comment and "its metadata is secret" in comment
    assert "zone any" not in comment and new["objects"]


@pytest.fixture(scope="module")
def committed_checkout(tmp_path_factory):
    """This checkout's files, committed once per module in a repository of their own."""
    copy = tmp_path_factory.mktemp("committed") / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("venv*", ".git", "__pycache__", ".*cache", ".hypothesis"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=copy, check=True)
    return copy


@pytest.fixture
def project_copy(committed_checkout, tmp_path):
    """A repository of this checkout's files, one commit, clean, for the test to change."""
    copy = tmp_path / "repo"
    shutil.copytree(committed_checkout, copy, symlinks=True)
    return copy


def _diff(copy, *args):
    """mlcache diff of the working tree in `copy`, run in this process (its program is this checkout's:
    rendered here, as the command renders a same-program tree); exit status and output as a process gives them."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = diff_command.main(["--project", str(copy), *args])
    return subprocess.CompletedProcess(["mlcache", "diff", *args], returncode, stdout.getvalue(), stderr.getvalue())


def test_a_stack_whose_secure_value_its_checks_refuse_is_left_to_the_real_preview(project_copy, tmp_path):
    """A `secure:` job.image renders offline only as a placeholder, which its check refuses: the diff
    says the stack is not previewed offline (not a failed preview of every stack), and the gate passes
    it only on a real preview that passed."""
    stack_file = project_copy / "Pulumi.prod.yaml"
    text = stack_file.read_text()
    image = next(line for line in text.splitlines() if line.startswith("    image: "))
    stack_file.write_text(text.replace(image, "    image:\n      secure: v1:AAAAAAAAAAAAAAAA"))
    alone = _diff(project_copy, "--base", "HEAD", "--fail-on-data-loss")
    assert alone.returncode == 1, alone.stderr
    assert "stack dev: no changes\n" in alone.stdout
    said = "stack prod: not previewed offline: the working tree: mlcache:job.image is a `secure:` value, which the offline"
    assert said in alone.stdout
    assert "--secret" not in alone.stdout  # diff takes no values: no hint it cannot follow
    real = tmp_path / "real"
    _write_real_preview(real / "prod", 0, "Resources:\n    9 unchanged\n", 0, "stack prod: can")
    passed = _diff(project_copy, "--base", "HEAD", "--fail-on-data-loss", "--markdown", "--real-preview", str(real))
    assert passed.returncode == 0, passed.stderr
    assert "| prod | **not previewed offline** (a `secure:` value)" in passed.stdout and "| not judged offline |" in passed.stdout
    (real / "prod" / "preview.rc").write_text("1\n")
    assert _diff(project_copy, "--base", "HEAD", "--fail-on-data-loss", "--markdown", "--real-preview", str(real)).returncode == 1
    # Another failure whose line quotes the phrase in a value is a failed preview (exit 2), not this.
    quoted = text.replace(image, '    image: "bad is a `secure:` value, which the offline tools cannot read: x"')
    stack_file.write_text(quoted)
    failed = _diff(project_copy, "--base", "HEAD", "--stack", "prod")
    assert failed.returncode == 2 and "cannot render the working tree: invalid config mlcache:job.image" in failed.stderr


def test_command_line_against_a_git_revision(project_copy):
    # The command itself, once, as a process in the working tree (its project by default).
    unchanged = subprocess.run(
        [sys.executable, "-m", "mlcache", "diff", "--base", "HEAD"], cwd=project_copy, capture_output=True, text=True
    )
    assert unchanged.returncode == 0
    assert unchanged.stdout == "stack dev: no changes\nstack prod: no changes\n"
    stack_file = project_copy / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("volumeMode: Filesystem", "volumeMode: Block"))
    gated = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert gated.returncode == 1 and "stack prod" not in gated.stdout
    assert "replace  PersistentVolumeClaim/ms-swift-cache-pvc" in gated.stdout and DATA_LOSS in gated.stdout
    assert "+  volumeMode: Block" in gated.stdout
    changed = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--markdown")
    assert changed.returncode == 0
    assert (
        changed.stdout.startswith("<!-- mlcache-preview -->\n## mlcache preview against `HEAD`")
        and "| dev | 2 to replace, 1 to delete | DATA LOSS" in changed.stdout
    )
    stack_file.write_text(stack_file.read_text().replace("volumeMode: Block", "volumeMode: Filesystem"))
    prod = project_copy / "Pulumi.prod.yaml"
    prod.write_text(prod.read_text().replace("mlcache:zone: ucsd", "mlcache:zone: sdsu"))
    stranded = _diff(project_copy, "--base", "HEAD", "--stack", "prod", "--fail-on-data-loss")
    assert stranded.returncode == 1 and STRANDS in stranded.stdout and f"!! {DATA_LOSS}" not in stranded.stdout
    # The same zone change as a move by copy: the gate lets it through, and the preview says MOVE.
    prod.write_text(prod.read_text().replace("    protect: true\n", "    protect: true\n    relocate: copy\n"))
    moved = _diff(project_copy, "--base", "HEAD", "--stack", "prod", "--fail-on-data-loss")
    assert moved.returncode == 0 and "MOVE: the cache is copied from ms-swift-cache-pvc" in moved.stdout
    assert "create   PersistentVolumeClaim/ms-swift-cache-pvc-g1" in moved.stdout and STRANDS not in moved.stdout


@pytest.mark.parametrize(
    ("renamed", "claim"),
    [
        (("    name: ms-swift-cache-pvc\n", "    name: models-cache\n"), "ml-training/models-cache"),
        (("mlcache:namespace: ml-training", "mlcache:namespace: ml-other"), "ml-other/ms-swift-cache-pvc"),
    ],
    ids=["cache.name", "namespace"],
)
def test_a_move_by_copy_that_renames_the_cache_is_data_loss_not_a_move_from_a_claim_it_cannot_find(project_copy, renamed, claim):
    """At up the guard reads the cache by the new cache.name, in the new namespace: it finds none, so
    nothing is copied and the old claim is replaced. The diff said MOVE, from a claim of the new name
    that never existed, and passed the gate."""
    prod = project_copy / "Pulumi.prod.yaml"
    text = prod.read_text().replace("mlcache:zone: ucsd", "mlcache:zone: sdsu").replace(*renamed)
    prod.write_text(text.replace("    protect: true\n", "    protect: true\n    relocate: copy\n"))
    shown = _diff(project_copy, "--base", "HEAD", "--stack", "prod", "--fail-on-data-loss")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "MOVE" not in shown.stdout and DATA_LOSS in shown.stdout
    if claim.endswith("/models-cache"):  # the claim deleted is the old one, under its old name
        assert "DATA LOSS: deletes PersistentVolumeClaim/ms-swift-cache-pvc and creates PersistentVolumeClaim/models-cache" in (
            shown.stdout
        )
    assert (
        "cache.relocate copy moves the cache within its name and namespace: this change makes claim "
        f"ml-training/ms-swift-cache-pvc into {claim}, so at `pulumi up` the guard finds no cache there to copy from"
    ) in shown.stdout
    # The same move without the rename is a move.
    prod.write_text(prod.read_text().replace(*reversed(renamed)))
    moved = _diff(project_copy, "--base", "HEAD", "--stack", "prod", "--fail-on-data-loss")
    assert moved.returncode == 0 and "MOVE: the cache is copied from ms-swift-cache-pvc" in moved.stdout


def _commit(copy, message: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "commit", "-qam", message], cwd=copy, check=True)


def test_a_move_reads_the_namespace_the_provider_puts_the_cache_in_not_the_manifests(project_copy):
    """The base's claim names no namespace and the stack's kubernetes:namespace is ml; the working
    tree says mlcache:namespace ml. At up the guard reads the cache in ml, where it is: a move."""
    dev = project_copy / "Pulumi.dev.yaml"
    dev.write_text(dev.read_text() + "  kubernetes:namespace: ml\n")
    _commit(project_copy, "the provider's namespace")
    text = (
        dev.read_text().replace('mlcache:zone: ""', "mlcache:zone: sdsu").replace("    protect: false\n", "    relocate: copy\n")
    )
    dev.write_text(text + "  mlcache:namespace: ml\n")
    moved = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "MOVE: the cache is copied from ms-swift-cache-pvc into this new claim" in moved.stdout
    dev.write_text(text + "  mlcache:namespace: other\n")  # another namespace than the cache's
    renamed = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert renamed.returncode == 1 and "makes claim ml/ms-swift-cache-pvc into other/ms-swift-cache-pvc" in renamed.stdout


def test_a_cache_renamed_to_the_name_its_old_name_reads_as_a_generation_of_is_no_move(project_copy):
    """Base cache.name foo-g1, working tree foo: at up the guard would read foo-g1 as generation 1 of
    foo, a generation the state holds under another resource. A rename, shown as one (DATA LOSS)."""
    dev = project_copy / "Pulumi.dev.yaml"
    dev.write_text(dev.read_text().replace("    size: 100Gi\n", "    name: foo-g1\n    size: 100Gi\n"))
    _commit(project_copy, "a cache named like a generation")
    text = (
        dev.read_text().replace('mlcache:zone: ""', "mlcache:zone: sdsu").replace("    protect: false\n", "    relocate: copy\n")
    )
    dev.write_text(text.replace("    name: foo-g1\n", "    name: foo\n"))
    renamed = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert renamed.returncode == 1 and "MOVE" not in renamed.stdout
    assert "makes claim default/foo-g1 into default/foo, so at `pulumi up`" in renamed.stdout


def test_an_unchanged_secure_value_is_not_reported_changed(project_copy):
    """The base revision's `secure:` values are read before its checkout is removed."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    stack_file = project_copy / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  mlcache:hfToken:\n    secure: v1:AAAA/unchanged==\n")
    subprocess.run([*git, "commit", "-qam", "a secret"], cwd=project_copy, check=True)
    unchanged = _diff(project_copy, "--base", "HEAD", "--stack", "dev")
    assert unchanged.returncode == 0 and unchanged.stdout == "stack dev: no changes\n", unchanged.stdout
    stack_file.write_text(stack_file.read_text().replace("v1:AAAA/unchanged==", "v1:BBBB/changed=="))
    changed = _diff(project_copy, "--base", "HEAD", "--stack", "dev")
    assert "mlcache:hfToken" in changed.stdout and "BBBB" not in changed.stdout


def test_a_secret_added_under_job_replaces_only_the_job_and_the_diff_says_what_it_hides(project_copy):
    """The issue's own case: a `secure:` env value under mlcache:job. The claim is not replaced (its
    metadata only became secret), the gate passes, and the program's warning reaches the preview."""
    stack_file = project_copy / "Pulumi.dev.yaml"
    added = "  mlcache:job:\n    env:\n      WANDB_API_KEY:\n        secure: v1:AAAA/wandb==\n    gpus: 4\n"
    stack_file.write_text(stack_file.read_text().replace("  mlcache:job:\n    gpus: 4\n", added))
    result = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("stack dev: 1 to replace\n") and "DATA LOSS" not in result.stdout
    # Which of the Job's fields changed is hidden: the reason says so instead of listing them as changed.
    assert "(changes spec (a secret hides which of its fields: it holds spec.completions, " in result.stdout
    assert "!! the program warns: mlcache:job holds a secret value, so the whole training Job" in result.stdout
    comment = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--markdown").stdout
    assert "- !! the program warns: mlcache:job holds a secret value" in comment


def test_a_mandatory_policy_violation_fails_the_gate(project_copy):
    """`pulumi up` runs the policy pack: a mandatory violation fails it as the API server's refusal would."""
    stack_file = project_copy / "Pulumi.dev.yaml"
    plain = "  mlcache:job:\n    env:\n      WANDB_API_KEY: wandb-0123456789abcdef0123\n    gpus: 4\n"
    stack_file.write_text(stack_file.read_text().replace("  mlcache:job:\n    gpus: 4\n", plain))
    gate = _diff(project_copy, "--base", "HEAD", "--stack", "dev", "--fail-on-data-loss")
    assert gate.returncode == 1
    assert "!! `pulumi up` will refuse this: policy no-plaintext-tokens (mandatory) on training-job: container" in gate.stdout
    assert _diff(project_copy, "--base", "HEAD", "--stack", "dev").returncode == 0  # no gate asked for


def test_bad_revision_and_bad_config_fail(project_copy):
    assert _diff(project_copy, "--base", "no-such-ref").returncode == 2
    stack_file = project_copy / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("replicas: 1", "replicas: 0"))
    result = _diff(project_copy, "--base", "HEAD", "--stack", "dev")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: stack dev: cannot render the working tree: invalid config mlcache:linstor.replicas")
    assert result.stderr.count("\n") == 1


def test_another_project_directory_renders_its_own_modules(tmp_path):
    """mlcache diff renders another revision with these tools: that program must import its own
    settings and names, not the ones these tools already imported."""
    for item in [*ROOT.glob("*.py"), *ROOT.glob("Pulumi*.yaml")]:
        shutil.copy(item, tmp_path / item.name)
    for package in ("mlcache", "workloads"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    original = 'INGRESS_POLICY = "mlcache-deny-ingress"'
    copied_names = tmp_path / "mlcache" / "program" / "names.py"
    copied_names.write_text(copied_names.read_text().replace(original, 'INGRESS_POLICY = "other"'))
    other, _ = render("dev", [], [], tmp_path)
    assert "other" in {d["metadata"]["name"] for d in documents(other)}
    assert names.INGRESS_POLICY == "mlcache-deny-ingress"
    mine, _ = render("dev", [], [])
    assert "mlcache-deny-ingress" in {d["metadata"]["name"] for d in documents(mine)}


def test_a_move_by_copy_is_a_move_that_passes_the_gate_and_fresh_stays_data_loss():
    base = as_json(rendered("prod"))
    with assume_live(base_claim(base)):
        head, _ = render("prod", ["zone=sdsu", "cache.relocate=copy"], [])
    changes = plan(base, as_json(head))
    # Everything is new; the cache, its claim and the training Job stay as they are.
    assert {c.action for c in changes} == {"create"}
    assert {c.label for c in changes} >= {
        "PersistentVolumeClaim/ms-swift-cache-pvc-g1",
        "Job/ms-swift-cache-pvc-copy-g1",
        "Job/ms-swift-cache-pvc-copy-g1-send",
    }
    (claim,) = [c for c in changes if c.label.startswith("PersistentVolumeClaim")]
    assert claim.notes[0].startswith("MOVE: the cache is copied from ms-swift-cache-pvc into this new claim (500Gi)")
    # prod protects its cache: the switch keeps the old claim; without protection it deletes it.
    assert "switches training here and keeps ms-swift-cache-pvc (cache.protect is true" in claim.notes[0]
    with assume_live(base_claim(base)):
        unprotected, _ = render("prod", ["zone=sdsu", "cache.relocate=copy", "cache.protect=false"], [])
    (claim,) = [c for c in plan(base, as_json(unprotected)) if c.label.startswith("PersistentVolumeClaim/ms-swift-cache-pvc-g1")]
    assert "switches training here and deletes ms-swift-cache-pvc (docs" in claim.notes[0]
    assert not any(c.gated for c in changes)
    assert any(c.data_loss for c in _plan((), ("zone=sdsu", "cache.relocate=fresh", "cache.protect=false"), stack="prod"))


def test_the_placement_asked_for_shows_a_copy_pod_pinned_beside_the_volume_it_reads():
    base = as_json(rendered("prod"))
    with assume_live(base_claim(base)):
        head, _ = render("prod", ["zone=sdsu", "cache.relocate=copy"], [])
    lines = diff.placement_lines(as_json(head)["objects"])
    sender = "`Job/ms-swift-cache-pvc-copy-g1-send`: pinned to node node-bound-at-up (where the claim it reads is bound)"
    assert sender in lines
    # The receiver is placed like training, so the new claim binds where training will run.
    assert "`Job/ms-swift-cache-pvc-copy-g1`: zone sdsu, GPU product NVIDIA-A100-SXM4-80GB" in lines


def test_a_multi_node_bases_live_cache_is_worker_0s_claim_as_the_guard_reads_it():
    """Going back to one node with a move: `up` reads the claim named cache.name, worker 0's, and
    moves it; the diff assumes the same claim live, so it shows the move too (not a silent update)."""
    base = as_json(rendered("prod", "job.nodes=2"))
    live = base_claim(base)
    assert live is not None and live.claim["metadata"]["name"] == "ms-swift-cache-pvc"
    with assume_live(live):
        head, _ = render("prod", ["zone=sdsu", "cache.relocate=copy", "job.enabled=false"], [])
    (claim,) = [c for c in plan(base, as_json(head)) if c.label == "PersistentVolumeClaim/ms-swift-cache-pvc-g1"]
    assert claim.action == "create" and claim.notes[0].startswith("MOVE: the cache is copied from ms-swift-cache-pvc")
    # job.enabled false: the plan deletes the training Job, and the note does not say it stays.
    assert (
        "stays as it is until then (no training Job in this plan), and the next `pulumi up` after it switches the cache"
        in (claim.notes[0])
    )


@pytest.mark.parametrize("unmade", ["linstor.manageStorageClass=false", "linstor.storageClassName=other-class"])
def test_a_move_that_would_drop_the_class_its_old_claim_is_on_is_refused_offline_as_at_up(unmade):
    """The guard keeps the class this stack made while it keeps the old claim: the diff's assumed live
    claim carries the base's class, so the preview refuses what `up` refuses."""
    base = as_json(rendered("prod"))
    refused = pytest.raises(RENDER_ERRORS, match="on the StorageClass linstor-fast-cache, which this stack made")
    with refused, assume_live(base_claim(base)):
        render("prod", ["backend=rook-ceph", "cache.relocate=copy", unmade], [])


def test_a_changed_secure_value_is_said_though_offline_cannot_show_what_it_changes(tmp_path):
    from mlcache.preview.diff import secret_changes  # noqa: PLC0415
    from mlcache.preview.stack_config import secure_values  # noqa: PLC0415

    base, head = tmp_path / "base", tmp_path / "head"
    for side, token, gpu in ((base, "v1:AAA=", "v1:BBB="), (head, "v1:AAA=", "v1:CCC=")):
        side.mkdir()
        body = f"config:\n  mlcache:hfToken:\n    secure: {token}\n  mlcache:job:\n    gpuProduct:\n      secure: {gpu}\n"
        (side / "Pulumi.dev.yaml").write_text(body)
    assert secure_values("dev", base) == {"mlcache:hfToken": "v1:AAA=", "mlcache:job.gpuProduct": "v1:BBB="}
    changed = secret_changes(secure_values("dev", base), secure_values("dev", head))
    assert changed == ["mlcache:job.gpuProduct"] and secure_values("prod", base) == {}
    text = report("dev", [], changed)
    assert text.startswith("stack dev: no changes\n  !! secret values changed or re-encrypted: mlcache:job.gpuProduct")
    comment = markdown_report("main", [StackPreview("dev", [], [], [], changed)])
    assert "| dev | no changes; **1 secret value changed, not diffed** |" in comment
    assert "the real `pulumi preview` decrypts them" in comment and "v1:CCC=" not in comment


def _program_copy(directory):
    directory.mkdir()
    for name in (*mock_engine.PROGRAM_FILES, "Pulumi.dev.yaml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, directory / name)
    return directory


def test_a_base_with_this_programs_files_renders_here_exactly_as_in_a_process_of_its_own(tmp_path):
    """A pull request that changes only stack files: the base renders in this process (no second
    interpreter), and gives what the subprocess of a revision with other code gives."""
    base = _program_copy(tmp_path / "base")
    assert mock_engine.same_program(base)
    here = diff.render_json(base, "dev", "k" * 32, in_process=True)
    assert diff.render_json(base, "dev", "k" * 32) == here and here[0] is not None  # in a process of its own
    # One byte of a shipped script differs: another program, rendered in a process of its own.
    script = next((base / "workloads").glob("*.py"))
    script.write_bytes(script.read_bytes() + b"\n")
    assert not mock_engine.same_program(base)


def test_a_project_directory_without_pulumi_yaml_is_one_line(capsys, tmp_path):
    for main, argv in ((diff_command.main, ["--base", "HEAD"]), (render_command.main, ["--stack", "dev"])):
        assert main(["--project", str(tmp_path / "nowhere"), *argv]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert f"argument --project: '{tmp_path / 'nowhere'}' is not a Pulumi project directory (no Pulumi.yaml in it)" in err


def test_a_move_by_copy_in_a_project_with_another_program_is_one_line_not_a_wrong_preview(project_copy):
    """A move is judged against the base's claim, which only a render in this process can be given."""
    prod = project_copy / "Pulumi.prod.yaml"
    prod.write_text(prod.read_text().replace("    protect: true\n", "    protect: true\n    relocate: copy\n"))
    script = next((project_copy / "workloads").glob("*.py"))
    script.write_bytes(script.read_bytes() + b"\n")  # another program than these tools'
    result = _diff(project_copy, "--base", "HEAD", "--stack", "prod")
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "its program differs from these tools' and stack(s) prod move the cache by copy" in result.stderr


def test_a_move_reads_the_protection_of_its_source_in_its_own_namespace():
    """A protected claim of the same name in another namespace is not the copy's source."""

    def pvc(namespace: str, name: str, protect: bool, source: str | None = None) -> dict:
        annotations = {names.COPY_FROM_ANNOTATION: source} if source else {}
        metadata = {"name": name, "namespace": namespace, "annotations": annotations}
        manifest = {
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": {"resources": {"requests": {"storage": "9Gi"}}},
        }
        return {"manifest": manifest, "protect": protect}

    after = {"old-elsewhere": pvc("other", "cache", True), "new": pvc("ml", "cache-g1", False, source="cache")}
    change = Change("create", "new", "PersistentVolumeClaim/cache-g1", new=after["new"])
    diff._say_moves({"new": change}, after)
    assert "switches the cache here and deletes cache (docs" in change.notes[0]  # no training Job here
    after["old"] = pvc("ml", "cache", True)
    change.notes.clear()
    diff._say_moves({"new": change}, after)
    assert "keeps cache (cache.protect is true" in change.notes[0]


def test_a_move_against_a_base_whose_secrets_hide_its_objects_is_previewed_not_a_traceback():
    """A secret under mlcache:job (an env value) hides the Job, and the claim's placement record
    with it: the preview cannot read the base's run, so it neither crashes nor refuses the move."""
    secret = ("job.env.WANDB_API_KEY=not-shown",)
    base = as_json(rendered("prod", secrets=secret))
    live = base_claim(base)
    assert live is None or live.consumers is None
    with assume_live(live):
        head, _ = render("prod", ["zone=sdsu", "cache.relocate=copy"], list(secret))
    plan(base, as_json(head))  # a plan, whatever the secret hides


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("Pulumi.dev.yaml", "  mlcache:cache:\n    size: 1Gi\n", "the key 'mlcache:cache' appears twice"),
        ("Pulumi.x.yaml", "config: [1]\n", "`config:` must be a mapping of keys to values, got list"),
    ],
    ids=["duplicate-key", "config-a-list"],
)
def test_a_stack_file_that_cannot_be_read_is_its_one_line_exit_2_not_an_internal_error(project_copy, name, text, said):
    """The render's own line, as `mlcache render` gives it: the secure values read beside the render
    must not fail first (they did, exit 70)."""
    path = project_copy / name
    path.write_text((path.read_text() if path.exists() else "") + text)
    done = _diff(project_copy, "--base", "HEAD")
    assert done.returncode == 2 and done.stdout == ""
    stack = name.removeprefix("Pulumi.").removesuffix(".yaml")
    assert done.stderr.startswith(f"error: stack {stack}: cannot render the working tree: {name}: ") and said in done.stderr
