"""The rendered manifests of each stack, and of the variants mlcache snapshots names, match their
reviewed snapshots."""

from __future__ import annotations

import difflib

import pytest

from mlcache.preview.snapshots import SNAPSHOT_DIR, rendered_text, snapshot_cases

CASES = snapshot_cases()


@pytest.mark.parametrize("name", list(CASES))
def test_rendered_manifests_match_the_snapshot(name):
    path = SNAPSHOT_DIR / f"{name}.yaml"
    assert path.is_file(), f"no snapshot {name}: run `venv/bin/mlcache snapshots`"
    expected, actual = path.read_text(), rendered_text(*CASES[name])
    drift = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(path), "rendered"))
    assert not drift, f"rendered manifests drifted from the snapshot:\n{drift}\nIf intended: venv/bin/mlcache snapshots"
