"""The rendered dev and prod manifests match their reviewed snapshots."""

from __future__ import annotations

import difflib

import pytest

from tools.snapshots import SNAPSHOT_DIR, rendered_text
from tools.stack_config import stack_names


@pytest.mark.parametrize("stack", stack_names())
def test_rendered_manifests_match_the_snapshot(stack):
    path = SNAPSHOT_DIR / f"{stack}.yaml"
    assert path.is_file(), f"no snapshot for {stack}: run `venv/bin/python -m tools.snapshots`"
    expected, actual = path.read_text(), rendered_text(stack)
    drift = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(path), "rendered"))
    assert not drift, f"rendered manifests drifted from the snapshot:\n{drift}\nIf intended: venv/bin/python -m tools.snapshots"
