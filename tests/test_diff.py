"""tools.diff: the engine's action for each change, and honest data-loss flags."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import names
from tests.conftest import ROOT, rendered
from tools.diff import DATA_LOSS, plan, report
from tools.render import as_json, documents, render


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


@pytest.fixture
def project_copy(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("venv", ".git", "__pycache__", ".*cache"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=copy, check=True)
    return copy


def _diff(copy, *args):
    return subprocess.run([sys.executable, "-m", "tools.diff", *args], cwd=copy, capture_output=True, text=True)


def test_command_line_against_a_git_revision(project_copy):
    unchanged = _diff(project_copy, "--base", "HEAD")
    assert unchanged.returncode == 0
    assert unchanged.stdout == "stack dev: no changes\nstack prod: no changes\n"
    stack_file = project_copy / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("volumeMode: Filesystem", "volumeMode: Block"))
    changed = _diff(project_copy, "--base", "HEAD", "--stack", "dev")
    assert changed.returncode == 0
    assert "replace  PersistentVolumeClaim/ms-swift-cache-pvc" in changed.stdout and DATA_LOSS in changed.stdout
    assert "+  volumeMode: Block" in changed.stdout
    gated = _diff(project_copy, "--base", "HEAD", "--fail-on-data-loss")
    assert gated.returncode == 1 and "stack prod: no changes" in gated.stdout


def test_bad_revision_and_bad_config_fail(project_copy):
    assert _diff(project_copy, "--base", "no-such-ref").returncode == 2
    stack_file = project_copy / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("replicas: 1", "replicas: 0"))
    result = _diff(project_copy, "--base", "HEAD", "--stack", "dev")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: stack dev: cannot render the working tree: invalid config mlcache:linstor.replicas")
    assert result.stderr.count("\n") == 1


def test_another_project_directory_renders_its_own_modules(tmp_path):
    """tools.diff renders another revision with these tools: that program must import its own
    settings and names, not the ones these tools already imported."""
    for item in [*ROOT.glob("*.py"), *ROOT.glob("Pulumi*.yaml")]:
        shutil.copy(item, tmp_path / item.name)
    for package in ("components", "workloads"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    original = 'INGRESS_POLICY = "mlcache-deny-ingress"'
    (tmp_path / "names.py").write_text((ROOT / "names.py").read_text().replace(original, 'INGRESS_POLICY = "other"'))
    other, _ = render("dev", [], [], tmp_path)
    assert "other" in {d["metadata"]["name"] for d in documents(other)}
    assert names.INGRESS_POLICY == "mlcache-deny-ingress"
    mine, _ = render("dev", [], [])
    assert "mlcache-deny-ingress" in {d["metadata"]["name"] for d in documents(mine)}
