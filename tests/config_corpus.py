"""The stack-file corpus (tests/data/config-corpus.yaml) and what the program makes of a case:
shared by the offline test (tests/test_config_corpus.py) and the parity test against the real
CLI (tests/integration/test_config_parity.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from mlcache.preview.mock_engine import run_program
from mlcache.preview.render import as_json
from mlcache.preview.stack_config import StackConfigError, load_stack_config
from mlcache.program.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CORPUS: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests" / "data" / "config-corpus.yaml").read_text())


def write_stack(directory: Path, stack: str, case: dict[str, Any]) -> None:
    """Pulumi.<stack>.yaml holding the case's config, beside a copy of the project's Pulumi.yaml."""
    if not (directory / "Pulumi.yaml").exists():
        (directory / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (directory / f"Pulumi.{stack}.yaml").write_text("config:\n" + textwrap.indent(case["stack"], "  "))


def program_verdict(values: dict[str, str], stack: str) -> tuple[str, Any]:
    """("refused", the key the program names) or ("accepted", every rendered manifest), from the
    config strings a CLI hands the program."""
    try:
        run = run_program(values, [], stack)
    except ConfigError as err:
        return "refused", err.key
    return "accepted", [entry["manifest"] for entry in as_json(run)["objects"]]


def offline_values(directory: Path, stack: str) -> dict[str, str]:
    """What the offline reader hands the program (StackConfigError when it refuses the file)."""
    return load_stack_config(stack, project_dir=directory).engine_config()


def offline_verdict(directory: Path, stack: str) -> tuple[str, Any]:
    try:
        values = offline_values(directory, stack)
    except StackConfigError as err:
        return "refused", str(err)
    return program_verdict(values, stack)


def training_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    """The training container's environment variables given as values, by name."""
    job = next(m for m in manifests if m["kind"] == "Job")
    container = next(c for c in job["spec"]["template"]["spec"]["containers"])
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
