"""Shared helpers: render a stack through the real program under the mock engine."""

from __future__ import annotations

import gc
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Each render makes tens of thousands of short-lived objects: at the default thresholds the cyclic
# collector ran about 5,000 times in the unit suite's workers, 5.9 s of their CPU; at these, 80
# times and 3.2 s (gc.callbacks timings, one run each).
gc.set_threshold(50_000, 20, 20)

from mlcache.preview.mock_engine import ProgramRun, Registration  # noqa: E402
from mlcache.preview.render import render  # noqa: E402


@cache
def _render(stack: str, overrides: tuple[str, ...], secrets: tuple[str, ...]) -> ProgramRun:
    run, _ = render(stack, list(overrides), list(secrets))
    return run


def rendered(stack: str, *overrides: str, secrets: tuple[str, ...] = ()) -> ProgramRun:
    """Program run for a stack plus `pulumi config set --path` style overrides (cached)."""
    return _render(stack, tuple(overrides), tuple(secrets))


def only(run: ProgramRun, kind: str) -> Registration:
    matches = run.find(kind)
    assert len(matches) == 1, f"expected one {kind}, got {[m.object_name for m in matches]}"
    return matches[0]


def pod_spec(run: ProgramRun) -> dict:
    return only(run, "Job").inputs["spec"]["template"]["spec"]


def main_container(run: ProgramRun) -> dict:
    return pod_spec(run)["containers"][0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.fixture(params=["dev", "prod"])
def stack(request) -> str:
    return request.param
