"""#22 point 2: the offline tools read a stack file exactly as the real Pulumi CLI does. Every case
of tests/data/config-corpus.yaml is read by `pulumi config --json` and offline: the values the
program gets are the same, and so are its verdict and every rendered manifest. The `preview`
cases also run through a real `pulumi preview` (the CLI's own type checks, the program's
refusal as the CLI prints it, the environment the engine would send)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from mlcache.preview.stack_config import StackConfigError
from tests.config_corpus import CORPUS, offline_values, offline_verdict, program_verdict, training_env, write_stack
from tests.integration.conftest import ROOT

PROJECT_KEY = re.compile(r"^mlcache:", re.MULTILINE)


def _read_by_cli(env: dict[str, str], directory: Path, stack: str) -> dict[str, str]:
    """`pulumi config --json`: key -> the text the program gets (JSON for an object)."""
    result = subprocess.run(
        ["pulumi", "config", "--json", "--show-secrets", "--stack", stack, "--non-interactive"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return {key: entry["value"] for key, entry in json.loads(result.stdout).items()}


def _as_read(value: str) -> object:
    """A config text as the program decodes it: JSON for an object or list, else the text."""
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, (dict, list)) else value


@pytest.fixture(scope="module")
def cli_project(tmp_path_factory, pulumi_cli) -> tuple[dict[str, str], Path]:
    """An empty project (Pulumi.yaml only) with a file backend: enough for `pulumi config`."""
    directory = tmp_path_factory.mktemp("parity")
    state = directory / "state"
    state.mkdir()
    env = {**pulumi_cli, "PULUMI_BACKEND_URL": f"file://{state}"}
    (directory / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    for stack in ("batch", "single"):
        subprocess.run(
            ["pulumi", "stack", "init", stack, "--non-interactive"], cwd=directory, env=env, check=True, capture_output=True
        )
    return env, directory


def test_every_case_reaches_the_program_as_the_cli_hands_it_over(cli_project, tmp_path):
    """One `pulumi config` reads all cases at once, each under a namespace of its own (the CLI reads
    every namespace alike); a case the offline reader refuses is read alone and must fail there too."""
    env, directory = cli_project
    offline_dir = tmp_path / "offline"
    offline_dir.mkdir()
    batched, alone = [], []
    for index, case in enumerate(CORPUS):
        write_stack(offline_dir, f"case{index}", case)
        try:
            offline_values(offline_dir, f"case{index}")
        except StackConfigError:
            alone.append(case)
            continue
        batched.append((index, case))
    assert len(batched) >= 40
    text = "".join(PROJECT_KEY.sub(f"case{index}:", case["stack"]) for index, case in batched)
    (directory / "Pulumi.batch.yaml").write_text("config:\n" + textwrap.indent(text, "  "))
    by_cli = _read_by_cli(env, directory, "batch")
    defaults = {key: value for key, value in by_cli.items() if key.startswith("mlcache:")}
    for index, case in batched:
        mine = {
            key.replace(f"case{index}:", "mlcache:"): value for key, value in by_cli.items() if key.startswith(f"case{index}:")
        }
        offline = offline_values(offline_dir, f"case{index}")
        assert {key: _as_read(value) for key, value in mine.items()} == {key: _as_read(offline[key]) for key in mine}, case[
            "name"
        ]
        # The same strings give the program the same verdict and the same manifests.
        verdict = program_verdict({**defaults, **mine}, f"case{index}")
        assert verdict == offline_verdict(offline_dir, f"case{index}"), case["name"]
    for case in alone:
        if case.get("cli_only_at_preview"):
            continue  # the CLI checks Pulumi.yaml's declared types at preview: the test below
        write_stack(directory, "single", case)
        result = subprocess.run(
            ["pulumi", "config", "--json", "--stack", "single", "--non-interactive"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0, case["name"]


PREVIEWED = [case for case in CORPUS if case.get("preview")]


def test_previewed_cases_get_the_same_verdict_and_environment_from_the_real_engine(engine, tmp_path):
    project = engine.project("parity-preview")
    for case in PREVIEWED:
        project.init(case["name"])
        write_stack(project.directory, case["name"], case)
        offline = offline_verdict(project.directory, case["name"])
        assert offline[0] == case["expect"], case["name"]
        result = project.pulumi("preview", "--json", stack=case["name"], check=False)
        if case["expect"] == "refused":
            assert result.returncode != 0, case["name"]
            said = result.stdout + result.stderr
            # The CLI's type check speaks in the same words offline; the program names the key.
            assert (offline[1] if case.get("cli_only_at_preview") else f"invalid config {offline[1]} = ") in said, (
                case["name"],
                said[-2000:],
            )
            continue
        assert result.returncode == 0, (case["name"], result.stderr[-2000:])
        steps = json.loads(result.stdout)["steps"]
        jobs = [step["newState"]["inputs"] for step in steps if step["urn"].split("::")[2].endswith("kubernetes:batch/v1:Job")]
        (container,) = [c for job in jobs for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "sft"]
        sent = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
        assert sent == training_env(offline[1]), case["name"]
        for name, value in case.get("env", {}).items():
            assert sent[name] == value, case["name"]
