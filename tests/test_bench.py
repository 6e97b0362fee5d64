"""mlcache bench: the fio report checked against fio's own numbers (real fio on a temp dir), the
chart, and the shard-loading benchmark (real safetensors shards, real fio over the same files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load

from mlcache.bench import storage
from mlcache.cli import bench
from tests.conftest import ROOT
from workloads import shard_bench


def setup_module():
    assert shutil.which("fio"), "fio is not installed: scripts/setup installs it from Debian's packages"


def run_fio(tmp_path, name: str, *extra: str) -> dict:
    out = subprocess.run(
        [
            "fio",
            f"--name={name}",
            "--rw=read",
            "--bs=1M",
            "--size=16M",
            f"--directory={tmp_path}",
            "--output-format=json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / f"{name}.json").write_text(out)
    return json.loads(out)


def test_report_matches_fios_own_numbers(tmp_path):
    raw = run_fio(tmp_path, "seqread")
    result = storage.load_result(tmp_path / "seqread.json")
    read = raw["jobs"][0]["read"]
    assert result.read_bytes_per_s == read["bw_bytes"] and result.iops == pytest.approx(read["iops"])
    assert result.mean_latency_ms == pytest.approx(read["clat_ns"]["mean"] / 1e6)
    assert result.p99_latency_ms == pytest.approx(read["clat_ns"]["percentile"]["99.000000"] / 1e6)
    assert result.fio_version == raw["fio version"] and result.job == "seqread"


def test_jobs_without_group_reporting_are_summed(tmp_path):
    raw = run_fio(tmp_path, "multi", "--numjobs=3")
    result = storage.load_result(tmp_path / "multi.json")
    assert len(raw["jobs"]) == 3
    assert result.read_bytes_per_s == sum(job["read"]["bw_bytes"] for job in raw["jobs"])
    assert result.iops == pytest.approx(sum(job["read"]["iops"] for job in raw["jobs"]))


def test_kubectl_logs_with_lines_around_the_json_are_read():
    result = storage.load_result(ROOT / "tests" / "data" / "fio-kubectl-logs.txt")
    raw = json.loads((ROOT / "tests" / "data" / "fio-kubectl-logs.txt").read_text().split("\n", 1)[1].rsplit("}", 1)[0] + "}")
    assert result.read_bytes_per_s == raw["jobs"][0]["read"]["bw_bytes"] and result.job == "seqread"


def test_two_results_show_ratios_and_a_chart(tmp_path, capsys):
    run_fio(tmp_path, "linstor")
    run_fio(tmp_path, "rookceph", "--bs=64k")
    chart = tmp_path / "chart.png"
    assert bench.main(["report", str(tmp_path / "linstor.json"), str(tmp_path / "rookceph.json"), "--plot", str(chart)]) == 0
    out = capsys.readouterr().out
    first, second = (storage.load_result(tmp_path / f"{n}.json") for n in ("linstor", "rookceph"))
    assert "vs first" in out and "1.00x" in out
    assert f"{second.read_bytes_per_s / first.read_bytes_per_s:.2f}x" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_a_file_without_fio_json_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("Error from server (NotFound): pods not found\n")
    assert bench.main(["report", str(tmp_path / "bad.txt")]) == 2
    assert "no fio JSON" in capsys.readouterr().err


def test_synthetic_shards_deserialise_like_safetensors_does(tmp_path):
    paths = shard_bench.write_shards(tmp_path, 2, 3 * 2**20)
    buffer = shard_bench.staging_buffer(max(p.stat().st_size for p in paths))
    for path in paths:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.readinto(buffer[:size])
        ours, reference = shard_bench.deserialize(buffer[:size]), load(path.read_bytes())
        assert ours.keys() == reference.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], reference[name])


def test_load_shards_reports_every_shard(tmp_path):
    shard_bench.write_shards(tmp_path, 3, 2 * 2**20)
    result = shard_bench.load_shards(tmp_path, readers=2)
    sizes = {p.name: p.stat().st_size for p in tmp_path.glob("*.safetensors")}
    assert {s["shard"]: s["bytes"] for s in result["shards"]} == sizes
    assert result["total_bytes"] == sum(sizes.values())
    assert 0 < result["first_shard_seconds"] <= result["wall_seconds"]
    assert all(s["tensor_bytes"] > 0.99 * 2 * 2**20 for s in result["shards"])


def test_shards_command_compares_loading_with_fio_on_the_same_files(tmp_path, capsys):
    assert bench.main(["shards", "--dir", str(tmp_path), "--count", "2", "--size", "4M", "--readers", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "shard-load: 2 shards" in out and "fio seqread over the same files" in out and "shard loading / fio = " in out


def test_shard_bench_runs_standalone_like_in_the_cluster(tmp_path):
    done = subprocess.run(
        ["python", str(ROOT / "workloads" / "shard_bench.py"), "run", str(tmp_path), "--count=2", "--size=2M", "--readers=2"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": str(ROOT / "venv" / "bin")},
    )
    result = json.loads(done.stdout)
    assert result["benchmark"] == "shard-load" and len(result["shards"]) == 2


def test_bench_without_a_test_environment_module_is_one_usage_line_not_a_traceback(tmp_path):
    """./run installs the runtime packages only: no numpy, no safetensors, no matplotlib."""
    blocked = ("numpy", "safetensors", "matplotlib")
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        f"importlib.util.find_spec = lambda name, *a: None if name in {blocked} else real(name, *a)\n"
        "from mlcache.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    report = ["report", str(ROOT / "tests" / "data" / "fio-kubectl-logs.txt"), "--plot", str(tmp_path / "chart.png")]
    for command, needs in [
        (["coldstart", "--dir", str(tmp_path)], "needs numpy and safetensors"),
        (["copy", "--dir", str(tmp_path)], "needs numpy and safetensors"),
        (["shards", "--dir", str(tmp_path)], "needs numpy and safetensors"),
        (report, "--plot draws the chart: it needs matplotlib"),
    ]:
        result = subprocess.run([sys.executable, "-c", blocker, "bench", *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert needs in line and "scripts/setup" in line and "Traceback" not in result.stderr
        assert not (tmp_path / "chart.png").exists() and result.stdout == ""
