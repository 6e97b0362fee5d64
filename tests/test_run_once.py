"""Idempotent training runs: job.runId names the Job, a completion marker on the cache makes a
re-created Job for a finished run exit 0 at once. The wrapper script is run for real with /bin/sh."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mlcache.program.settings import ConfigError, parse_settings
from tests.conftest import env_of, main_container, only, rendered


def run_wrapper(container: dict, marker: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the container's wrapper with the rendered script and env, the trainer replaced by `command`."""
    env = {**os.environ, "MLCACHE_RUN_NAME": env_of(container)["MLCACHE_RUN_NAME"], "MLCACHE_RUN_MARKER": str(marker)}
    return subprocess.run([*container["command"], *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def test_run_id_names_the_job_and_the_marker():
    run = rendered("dev", "job.runId=r2")
    job = only(run, "Job")
    assert job.object_name == "sft-qwen3vl-fire-4gpu-r2"
    env = env_of(main_container(run))
    assert env["MLCACHE_RUN_NAME"] == "sft-qwen3vl-fire-4gpu-r2"
    assert env["MLCACHE_RUN_MARKER"].startswith("/cache/.mlcache/runs/sft-qwen3vl-fire-4gpu-r2-")
    assert run.outputs["runMarker"] == env["MLCACHE_RUN_MARKER"]
    assert run.outputs["jobName"] == "sft-qwen3vl-fire-4gpu-r2"


def test_without_run_id_the_job_keeps_its_name():
    assert only(rendered("dev"), "Job").object_name == "sft-qwen3vl-fire-4gpu"


def test_a_changed_run_spec_gets_a_new_marker_but_an_unrelated_change_does_not():
    marker = env_of(main_container(rendered("dev")))["MLCACHE_RUN_MARKER"]
    assert env_of(main_container(rendered("dev", "job.dataset=other/dataset")))["MLCACHE_RUN_MARKER"] != marker
    assert env_of(main_container(rendered("dev", "job.image=repo/img:v2")))["MLCACHE_RUN_MARKER"] != marker
    # Resources and placement do not change what the run computes.
    assert env_of(main_container(rendered("dev", "job.cpu=24")))["MLCACHE_RUN_MARKER"] == marker


def test_block_mode_has_no_marker_and_runs_the_command_directly():
    run = rendered("dev", "cache.volumeMode=Block")
    c = main_container(run)
    assert c["command"] == ["swift", "sft"] and "MLCACHE_RUN_MARKER" not in env_of(c)
    assert run.outputs["runMarker"] is None


def test_no_training_job_ever_asks_for_replace_unready(stack):
    annotations = only(rendered(stack), "Job").inputs["metadata"].get("annotations", {})
    assert "pulumi.com/replaceUnready" not in annotations


@pytest.mark.parametrize(
    ("job", "key"), [({"runId": "R2"}, "job.runId"), ({"runId": "x" * 60}, "job.runId"), ({"command": []}, "job.command")]
)
def test_bad_run_settings_are_refused(job, key):
    with pytest.raises(ConfigError) as err:
        parse_settings({"job": job})
    assert err.value.key == f"mlcache:{key}"


def test_first_run_trains_and_writes_the_marker(tmp_path):
    c = main_container(rendered("dev"))
    marker = tmp_path / "cache" / ".mlcache" / "runs" / "x.done"
    result = run_wrapper(c, marker, ["sh", "-c", "echo trained >> trained.log"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trained.log").read_text() == "trained\n"
    assert marker.read_text().startswith("20") and "completed" in result.stdout


def test_a_recreated_job_for_a_finished_run_exits_at_once(tmp_path):
    c = main_container(rendered("dev"))
    marker = tmp_path / "x.done"
    run_wrapper(c, marker, ["sh", "-c", "echo trained >> trained.log"], tmp_path)
    again = run_wrapper(c, marker, ["sh", "-c", "echo trained >> trained.log"], tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert (tmp_path / "trained.log").read_text() == "trained\n"  # not trained twice


def test_a_failed_run_leaves_no_marker_and_keeps_its_exit_code(tmp_path):
    c = main_container(rendered("dev"))
    marker = tmp_path / "x.done"
    result = run_wrapper(c, marker, ["sh", "-c", "exit 3"], tmp_path)
    assert result.returncode == 3 and not marker.exists()


def test_sigterm_reaches_the_trainer_and_marks_nothing(tmp_path):
    c = main_container(rendered("dev"))
    marker = tmp_path / "x.done"
    env = {**os.environ, "MLCACHE_RUN_NAME": "r", "MLCACHE_RUN_MARKER": str(marker)}
    trainer = "trap 'echo got-term > term.log; exit 143' TERM; touch started; while :; do sleep 0.1; done"
    proc = subprocess.Popen([*c["command"], "sh", "-c", trainer], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 10
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143
    assert (tmp_path / "term.log").read_text() == "got-term\n" and not marker.exists()
