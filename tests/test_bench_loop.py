"""mlcache bench loop: the loop's figures come from a run and from scripts/build-engine's own log."""

from __future__ import annotations

import subprocess
import sys

from mlcache.bench import loop as bench_loop
from tests.conftest import ROOT

COLD = """\
[build-engine 14:01:07] provider 4.34.2-x: building (log: /c/.build-provider/build.log)
[build-engine 14:09:49] cli v3.274.1: built in 522 s
[build-engine 14:17:30] provider 4.34.2-x: built in 983 s
[build-engine 14:24:36] toolchain ready in /c (1409 s)
"""
WARM = """\
[build-engine 15:00:00] cli v3.274.1: cached in /c/cli-v3.274.1
[build-engine 15:00:00] toolchain ready in /c (0 s)
"""


def test_the_newest_run_that_built_something_gives_the_step_times(tmp_path):
    log = tmp_path / "build-engine.log"
    log.write_text(COLD + WARM)
    figures = bench_loop.build_figures(log)
    assert [(f.name, f.wall_s) for f in figures] == [
        ("build cli (v3.274.1)", 522),
        ("build provider (4.34.2-x)", 983),
        ("build, whole toolchain (2 lanes)", 1409),
    ]
    assert figures[-1].ratio == 1409 / bench_loop.TARGETS["build"]
    rebuilt = COLD + WARM + COLD.replace("522", "100").replace("1409", "700")
    log.write_text(rebuilt)
    assert [f.wall_s for f in bench_loop.build_figures(log)] == [100, 983, 700]
    three = COLD.replace("522", "600").replace("(1409 s)", "(1459 s, 3 lanes)")
    log.write_text(rebuilt + three)
    assert [(f.name, f.wall_s) for f in bench_loop.build_figures(log)] == [
        ("build cli (v3.274.1)", 600),
        ("build provider (4.34.2-x)", 983),
        ("build, whole toolchain (2 lanes)", 700),
        ("build, whole toolchain (3 lanes)", 1459),
    ]


def test_no_log_gives_no_build_rows_and_the_table_shows_each_ratio(tmp_path):
    assert bench_loop.build_figures(tmp_path / "none.log") == []
    text = bench_loop.table([bench_loop.Figure("./test unit", 24.4, 40.2, 30, "800 passed")])
    assert "| ./test unit | 24 s | 40 s | 30 s | 0.81x | 800 passed |" in text


def test_an_unreadable_build_log_is_one_line_before_any_test_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlcache", "bench", "loop", "--build-log", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --build-log {tmp_path}: cannot read it") and result.stderr.count("\n") == 1
