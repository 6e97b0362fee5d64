"""The lock files scripts/setup installs pin exactly what the hand-edited requirements files pin,
each package with its hashes."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def direct_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            pins |= direct_pins(path.parent / line.split(maxsplit=1)[1])
        elif match := PIN.match(line.strip()):
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def locked(path: Path) -> dict[str, str]:
    text = path.read_text()
    pin = r"^([A-Za-z0-9_.-]+)==([^\s;]+)(?: ;[^\\\n]*)?((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)"
    entries = re.findall(pin, text, flags=re.MULTILINE)
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, flags=re.MULTILINE)), f"{path.name}: a pin without hashes"
    return {name.lower().replace("_", "-"): version for name, version, _ in entries}


@pytest.mark.parametrize("name", ["requirements", "requirements-dev", "requirements-checkov"])
def test_each_lock_pins_its_requirements_with_hashes(name):
    lock = locked(ROOT / f"{name}.lock")
    wanted = direct_pins(ROOT / f"{name}.txt")
    assert {package: lock.get(package) for package in wanted} == wanted


def test_the_runtime_lock_pins_the_versions_the_test_lock_pins():
    """./run installs requirements.lock and ./test requirements-dev.lock into the same venv: one version each."""
    runtime, dev = locked(ROOT / "requirements.lock"), locked(ROOT / "requirements-dev.lock")
    assert {package: dev.get(package) for package in runtime} == runtime


def test_the_installer_is_pinned_with_hashes():
    assert locked(ROOT / "requirements-uv.lock") == {"uv": "0.13.9"}


# Imported by mlcache only behind a usage line naming scripts/setup (mlcache bench's shards and --plot).
TEST_ENVIRONMENT_ONLY = {"numpy", "safetensors", "matplotlib"}


def test_every_module_the_command_imports_is_in_the_runtime_lock():
    """./run installs requirements.lock only: a module mlcache imports from outside it fails the
    command there (mlcache diff --markdown did, on pulumi_policy)."""
    distributions = importlib.metadata.packages_distributions()
    imported: set[str] = set()
    # The command, the program it renders, and the policy pack `mlcache validate` and `diff --markdown` load.
    for path in [*(ROOT / "mlcache").rglob("*.py"), ROOT / "__main__.py", *(ROOT / "policy").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    third_party = {name for name in imported - TEST_ENVIRONMENT_ONLY if distributions.get(name, ["mlcache"]) != ["mlcache"]}
    assert "pulumi_policy" in third_party and "kubernetes" in third_party  # the scan sees function-level imports
    runtime = locked(ROOT / "requirements.lock")
    missing = {
        name: distributions[name]
        for name in third_party
        if not any(d.lower().replace("_", "-") in runtime for d in distributions[name])
    }
    assert missing == {}


def test_pyyaml_carries_libyaml_whose_emitter_wrote_the_snapshots():
    """The render writes with libyaml's emitter when PyYAML has it (its wheels do); the pure-Python
    one folds long strings elsewhere, so the byte-for-byte snapshots would differ without it."""
    import yaml  # noqa: PLC0415

    assert yaml.__with_libyaml__
