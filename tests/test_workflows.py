"""GitHub Actions workflows validate against the GitHub workflow JSON schema (vendored, offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlcache.preview.diff import COMMENT_MARKER
from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"preview.yml", "deploy.yml", "drift.yml", "toolchain.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(workflow):
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_is_caught(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    step: []\n")
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(broken)])
    assert result.returncode != 0


def test_the_real_preview_runs_for_every_stack_file_the_pull_request_has(tmp_path):
    """The matrix is the stack files, listed by the stacks job: a new stack is previewed at once."""
    jobs = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())["jobs"]
    assert jobs["pulumi-preview"]["needs"] == "stacks"
    assert jobs["pulumi-preview"]["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.names) }}"
    (listing,) = [s for s in jobs["stacks"]["steps"] if s.get("id") == "list"]
    assert jobs["stacks"]["outputs"]["names"] == "${{ steps.list.outputs.names }}"
    for name in (
        "Pulumi.yaml",
        "Pulumi.dev.yaml",
        "Pulumi.team-a.prod.yaml",
        "Pulumi.prod.yaml",
        "README.md",
        "Pulumi.$(id).yaml",
    ):
        (tmp_path / name).write_text("")  # a name no stack can have goes into no script
    output = tmp_path / "github-output"
    environment = {"GITHUB_OUTPUT": str(output), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-c", listing["run"]], cwd=tmp_path, env=environment, check=True)
    assert output.read_text() == 'names=["dev", "prod", "team-a.prod"]\n'


@pytest.mark.parametrize(
    ("answer", "previewed"),
    [("error: no stack named 'dev' found", False), ("error: could not reach the backend", True)],
    ids=["not-in-the-backend", "backend-failed"],
)
def test_a_stack_the_backend_does_not_hold_yet_gets_no_real_preview_and_nothing_else_is_skipped(tmp_path, answer, previewed):
    """`pulumi stack select` of a stack never initialised says `no stack named 'dev' found` (the CLI
    v3.274.1 built here, file backend): that stack's folder goes, so the comment says "not run".
    Any other failure runs the preview, whose failure the comment shows and the gate counts."""
    jobs = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())["jobs"]
    step = next(s for s in jobs["pulumi-preview"]["steps"] if s.get("name") == "pulumi preview --diff")
    fail = next(s for s in jobs["pulumi-preview"]["steps"] if s.get("name") == "Fail when the preview failed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(f'#!/bin/bash\nif [ "$1" = stack ]; then echo "{answer}" >&2; exit 6; fi\necho previewed; exit 255\n')
    fake.chmod(0o755)
    (tmp_path / "real" / "dev").mkdir(parents=True)
    (tmp_path / "real" / "dev" / "started").write_text("started\n")
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PULUMI_BACKEND_URL": "file:///nowhere"}

    def run(script: str) -> subprocess.CompletedProcess:
        command = ["bash", "-e", "-c", script.replace("${{ matrix.stack }}", "dev")]
        return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)

    preview = run(step["run"])
    assert preview.returncode == 0, preview.stderr
    assert (tmp_path / "real" / "dev").exists() == previewed
    if previewed:
        assert (tmp_path / "real" / "dev" / "preview.rc").read_text() == "255\n"
        assert run(fail["run"]).returncode == 255  # the job is red
    else:
        assert "::notice::stack dev is not in the state backend yet (pulumi stack init dev)" in preview.stdout
        assert run(fail["run"]).returncode == 0


def test_preview_runs_the_offline_diff_and_the_real_preview():
    preview = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())
    steps = preview["jobs"]["offline-diff"]["steps"]
    assert any("mlcache diff" in s.get("run", "") and "GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
    # One comment, found by the marker markdown_report starts with, and updated in place.
    post = next(s for s in steps if s.get("name") == "Post or update the PR comment")
    diff = next(s for s in steps if "--markdown" in s.get("run", ""))
    assert '--markdown --placement placement "${real[@]}" --fail-on-data-loss > comment.md' in diff["run"]
    assert "real=(--real-preview real)" in diff["run"]
    # The one comment carries the real previews: the diff waits for them and reads what they left.
    assert preview["jobs"]["offline-diff"]["needs"] == "pulumi-preview" and "cancelled()" in preview["jobs"]["offline-diff"]["if"]
    collect = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact"))
    assert collect["with"]["pattern"] == "real-preview-*" and steps.index(collect) < steps.index(diff)
    assert "GITHUB_STEP_SUMMARY" in diff["run"]
    # Stacks with a fleet file are rehearsed first, with the toolchain the toolchain job caches (same key).
    rehearse = next(s for s in steps if "mlcache rehearse" in s.get("run", ""))
    assert steps.index(rehearse) < steps.index(diff) and '--json > "placement/$stack.json"' in rehearse["run"]
    restored = next(s for s in steps if s.get("uses", "").startswith("actions/cache/restore"))
    # Built on main (a pull request's own cache is visible to it alone), only when a stack has a fleet.
    toolchain = yaml.safe_load((ROOT / ".github/workflows/toolchain.yml").read_text())
    built = next(s for s in toolchain["jobs"]["build"]["steps"] if s.get("uses", "").startswith("actions/cache@"))
    assert restored["with"]["key"] == built["with"]["key"] and "cache-hit" in rehearse["if"]
    assert toolchain[True]["push"]["branches"] == ["main"] and "fleets" in built["if"]
    assert f'startswith("{COMMENT_MARKER}")' in post["run"] and "-X PATCH" in post["run"] and "body=@comment.md" in post["run"]
    assert '.user.login == "github-actions[bot]"' in post["run"] and "pipefail" in post["run"]
    # A revision that cannot be rendered: the comment carries the error line, and no label lets it through.
    assert "2> diff-error.txt" in diff["run"] and "tail -n 1 diff-error.txt" in diff["run"]
    unrendered = next(s for s in steps if s.get("name", "").startswith("Fail when a revision cannot be rendered"))
    assert "if" not in unrendered and '[ "$status" -lt 2 ]' in unrendered["run"]
    gate = next(s for s in steps if s.get("name", "").startswith("Gate"))
    assert "steps.diff.outputs.status" in gate["run"] and "allow-data-loss" in gate["if"]
    assert preview["concurrency"]["cancel-in-progress"] is True
    real = preview["jobs"]["pulumi-preview"]["steps"]
    (install,) = [s for s in real if s.get("uses", "").startswith("pulumi/actions")]
    assert "with" not in install  # the CLI only: no comment of its own, the preview runs in a step of the job
    # Before it, whether the credentials let it dry-run on the API server, in the job summary and for the comment.
    access = next(index for index, s in enumerate(real) if "mlcache access --stack" in s.get("run", ""))
    run = next(index for index, s in enumerate(real) if "pulumi preview --stack" in s.get("run", ""))
    assert real.index(install) < access < run and "GITHUB_STEP_SUMMARY" in real[access]["run"]
    assert 'echo "$status" > "real/${{ matrix.stack }}/access.rc"' in real[access]["run"]
    assert '"real/${{ matrix.stack }}/preview.rc"' in real[run]["run"] and "--diff --non-interactive" in real[run]["run"]
    # The preview's folder is made right after the checkout: a step failing before the preview shows as not finished.
    started = next(index for index, s in enumerate(real) if 'mkdir -p "real/${{ matrix.stack }}"' in s.get("run", ""))
    checkout = next(index for index, s in enumerate(real) if s.get("uses", "").startswith("actions/checkout"))
    python = next(index for index, s in enumerate(real) if s.get("uses", "").startswith("actions/setup-python"))
    assert checkout + 1 == started < python < access and "continue-on-error" not in collect
    # A file in it: the upload skips empty folders, and an empty artifact would read as "not run".
    assert 'echo started > "real/${{ matrix.stack }}/started"' in real[started]["run"]
    upload = next(s for s in real if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["name"] == "real-preview-${{ matrix.stack }}" and "always()" in upload["if"]


def test_prod_deploys_through_its_protected_environment():
    deploy = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    job = deploy["jobs"]["up"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"] and job["strategy"]["max-parallel"] == 1
    assert job["environment"] == "${{ matrix.stack }}"


def test_drift_runs_on_a_schedule_and_on_demand_per_stack_through_mlcache_drift():
    drift = yaml.safe_load((ROOT / ".github/workflows/drift.yml").read_text())
    triggers = drift[True]  # PyYAML reads the key `on` as true
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    job = drift["jobs"]["drift"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"] and job["strategy"]["fail-fast"] is False
    runs = [s.get("run", "") for s in job["steps"]]
    assert any('mlcache drift --stack "${{ matrix.stack }}"' in r for r in runs)
