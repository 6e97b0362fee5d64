"""Cold start (issue 14): the prewarm reads the training model into the page cache within the
memory headroom (observed with mincore on real files), the run-once wrapper runs it before
training and never fails a run because of it (run for real with /bin/sh), and the cold-start
benchmark compares fio, the default loader, prewarm + loader and the shard reader."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from mlcache.cli import bench
from mlcache.program.components.training_job import RUN_ONCE_SCRIPT
from mlcache.program.settings import ConfigError, parse_settings
from tests.conftest import ROOT, env_of, main_container, only, rendered
from tests.test_data_path import comparable
from workloads import coldstart, prefetch, prewarm, shard_bench

MiB = 2**20
BIG = 1 << 50  # a budget no test file reaches


def shards(directory: Path, count: int = 3, size: int = 4 * MiB) -> list[Path]:
    paths = shard_bench.write_shards(directory, count, size)
    shard_bench.evict(paths)
    return paths


def resident(paths: list[Path]) -> int:
    return sum(coldstart.resident_bytes(p) for p in paths)


# Share of a file just read that the kernel may already have reclaimed when memory is short: with a
# Go build beside the suite, 4184 of 12583176 bytes the prewarm had read were gone by the check.
RECLAIMED = 0.02


def cached(paths: list[Path], expected: int | None = None) -> bool:
    """`expected` bytes (default: all of the files) are in the page cache, but for a reclaimed page or two."""
    expected = sum(p.stat().st_size for p in paths) if expected is None else expected
    return expected * (1 - RECLAIMED) <= resident(paths) <= expected


def test_evicted_files_are_not_resident_and_read_ones_are(tmp_path):
    paths = shards(tmp_path)
    assert resident(paths) == 0
    paths[0].read_bytes()
    assert cached(paths[:1]) and resident(paths[1:]) == 0


def test_plan_reads_whole_files_in_load_order_then_the_head_of_the_next():
    files = [(Path("a"), 10), (Path("b"), 10), (Path("c"), 10)]
    assert prewarm.plan(files, 25) == [
        prewarm.Read(Path("a"), 10, 10),
        prewarm.Read(Path("b"), 10, 10),
        prewarm.Read(Path("c"), 5, 10),
    ]
    assert prewarm.plan(files, 20) == [prewarm.Read(Path("a"), 10, 10), prewarm.Read(Path("b"), 10, 10)]
    assert prewarm.plan(files, 0) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"memory.max": "1000000000\n", "memory.current": "300000000\n"},
            (700_000_000, "cgroup limit 1000000000 - usage 300000000"),
        ),
        ({"memory.max": "max\n", "memory.current": "300000000\n"}, (5 * 2**30, f"MemAvailable {5 * 2**30}")),
        (
            {"memory/memory.limit_in_bytes": "2000000000\n", "memory/memory.usage_in_bytes": "500000000\n"},
            (1_500_000_000, "cgroup limit 2000000000 - usage 500000000"),
        ),
        ({"memory.max": str(2**40), "memory.current": "0"}, (5 * 2**30, f"MemAvailable {5 * 2**30}")),
    ],
    ids=["cgroup-v2", "v2-unlimited", "cgroup-v1", "node-smaller-than-limit"],
)
def test_headroom_is_the_cgroups_room_never_more_than_mem_available(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       24684092 kB\nMemAvailable:   {5 * 2**20} kB\n")
    assert prewarm.memory_headroom(tmp_path, meminfo) == expected


def test_prewarm_puts_the_model_in_the_page_cache(tmp_path, capsys):
    paths = shards(tmp_path, count=3, size=6 * MiB)
    result = prewarm.prewarm([tmp_path], readers=2, max_bytes=None, reserve_bytes=0)
    total = sum(p.stat().st_size for p in paths)
    assert result["bytes"] == total and result["files"] == 3
    assert cached(paths)
    assert "3 of 3 shards whole" in capsys.readouterr().out


def test_a_bound_below_the_model_truncates_in_load_order_with_a_log_line(tmp_path, capsys):
    paths = shards(tmp_path, count=3, size=32 * MiB)
    bound = paths[0].stat().st_size + 4 * MiB
    result = prewarm.prewarm([tmp_path], readers=2, max_bytes=bound, reserve_bytes=0)
    assert result["bytes"] == bound
    first, second, third = (coldstart.resident_bytes(p) for p in paths)
    # The first shard whole, the head of the second (kernel readahead may add a little), not the third.
    assert first == paths[0].stat().st_size and 4 * MiB <= second < paths[1].stat().st_size and third == 0
    assert (
        f"truncated: {sum(p.stat().st_size for p in paths)} bytes of shards, reading the first {bound}" in capsys.readouterr().out
    )


def test_no_headroom_skips_with_a_log_line_and_reads_nothing(tmp_path, capsys):
    paths = shards(tmp_path)
    result = prewarm.prewarm([tmp_path], readers=2, max_bytes=None, reserve_bytes=BIG)
    assert result["bytes"] == 0 and resident(paths) == 0
    assert "skipped: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "model"),
    [
        (["swift", "sft", "--model", "Qwen/Qwen3-VL-8B-Instruct", "--dataset", "x"], "Qwen/Qwen3-VL-8B-Instruct"),
        (["swift", "sft", "--model=/cache/models/m"], "/cache/models/m"),
        (["swift", "sft", "--model_type", "qwen3_vl"], None),
    ],
)
def test_the_model_is_the_training_commands_model(command, model):
    assert prewarm.training_model(command) == model


def test_a_hub_model_is_found_through_its_prefetch_marker_on_the_trainings_hub(tmp_path, monkeypatch):
    markers, ms_dir, hf_dir = tmp_path / "markers", tmp_path / "ms", tmp_path / "hf"
    markers.mkdir()
    for hub, directory in ((prefetch.MODELSCOPE, ms_dir), (prefetch.HUGGINGFACE, hf_dir)):
        directory.mkdir()
        prefetch.marker_path(markers, hub, "org/m").write_text(json.dumps({"path": str(directory)}))
    monkeypatch.delenv("USE_HF", raising=False)
    assert prewarm.model_directory("org/m", markers) == ms_dir
    monkeypatch.setenv("USE_HF", "1")
    assert prewarm.model_directory("org/m", markers) == hf_dir
    assert prewarm.model_directory(str(ms_dir), markers) == ms_dir  # a directory is used as it is
    assert prewarm.model_directory("org/other", markers) is None


def write_config(tmp_path: Path, **overrides) -> Path:
    config = {"enabled": True, "readers": 2, "maxBytes": None, "shmBytes": 0, "markers": str(tmp_path / "markers")}
    path = tmp_path / "prewarm.json"
    path.write_text(json.dumps({**config, **overrides}))
    return path


def test_the_pod_step_prewarms_the_prefetched_training_model(tmp_path, capsys):
    paths = shards(tmp_path / "model")
    (tmp_path / "markers").mkdir()
    marker = prefetch.marker_path(tmp_path / "markers", prefetch.MODELSCOPE, "org/m")
    marker.write_text(json.dumps({"path": str(tmp_path / "model")}))
    config = write_config(tmp_path)
    assert prewarm.main(["--config", str(config), "--", "swift", "sft", "--model", "org/m"]) == 0
    assert cached(paths)
    shard_bench.evict(paths)
    write_config(tmp_path, enabled=False)
    assert prewarm.main(["--config", str(config), "--", "swift", "sft", "--model", "org/m"]) == 0
    assert resident(paths) == 0 and "off (job.prewarm is false)" in capsys.readouterr().out


def test_a_broken_config_is_one_log_line_and_status_1(tmp_path, capsys):
    (tmp_path / "prewarm.json").write_text("{not json")
    assert prewarm.main(["--config", str(tmp_path / "prewarm.json"), "--", "swift", "sft"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("mlcache: prewarm: failed: JSONDecodeError") and out.count("\n") == 1


def test_prewarm_runs_standalone_like_in_the_pod(tmp_path):
    """From a copy of the scripts directory (as the ConfigMap mounts them): prefetch imported beside it."""
    scripts = tmp_path / "opt"
    scripts.mkdir()
    for name in ("prewarm.py", "prefetch.py"):
        shutil.copy(ROOT / "workloads" / name, scripts / name)
    paths = shards(tmp_path / "model")
    (tmp_path / "markers").mkdir()
    prefetch.marker_path(tmp_path / "markers", prefetch.MODELSCOPE, "org/m").write_text(
        json.dumps({"path": str(tmp_path / "model")})
    )
    write_config(scripts)  # prewarm.json beside the script: the default
    (scripts / "prewarm.json").write_text(
        (scripts / "prewarm.json").read_text().replace(str(scripts / "markers"), str(tmp_path / "markers"))
    )
    done = subprocess.run(
        ["python3", str(scripts / "prewarm.py"), "--", "swift", "sft", "--model", "org/m"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mlcache: prewarm: read" in done.stdout and cached(paths)


def test_coldstart_prints_every_side_with_ratios_to_fio(tmp_path, capsys):
    assert (
        bench.main(["coldstart", "--dir", str(tmp_path), "--count", "2", "--size", "4M", "--readers", "2", "--rounds", "2"]) == 0
    )
    out, err = capsys.readouterr()
    assert "coldstart: round 1/2: " in err and "coldstart: round 2/2: shard reader " in err  # progress while it runs
    for side in ("fio", "loader", "prewarm+loader", "  prewarm", "  loader from page cache", "prewarm|loader", "shard reader"):
        assert f"\n{side} " in out
    assert "target prewarm+loader <= 1.15x fio time: " in out and "target shard reader >= 0.95x fio GB/s: " in out
    assert "(at most 0 bytes left resident)" in out
    assert "host-to-device: skipped (torch is not installed)" in out
    # The limit: per round the slower of fio and the loader from the page cache; every row beside it.
    assert "\nlimit " in out and "target prewarm|loader <= 1.05x the limit: " in out and "time/limit" in out


def test_coldstart_json_has_the_rows_and_the_limit_is_the_slower_of_fio_and_the_warm_loader(tmp_path, capsys):
    argv = ["coldstart", "--dir", str(tmp_path), "--count", "2", "--size", "4M", "--readers", "2", "--rounds", "2", "--json"]
    assert bench.main(argv) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    seconds = result["seconds"]
    assert {"fio", "loader", "loader from page cache", "prewarm+loader", "prewarm|loader", "limit"} <= set(seconds)
    assert seconds["limit"] == [max(f, w) for f, w in zip(seconds["fio"], seconds["loader from page cache"], strict=True)]
    assert result["rounds"] == 2 and "\nlimit " in err


def test_budget_rows_run_in_a_memory_cgroup_of_that_size_and_a_budget_with_no_room_is_said(tmp_path, capsys):
    group, why = coldstart.memory_cgroup(64 * MiB)
    if group is None:
        pytest.skip(f"no memory cgroup here: {why}")
    group.rmdir()
    # Two readers' buffers, the two processes, the largest tensor (a whole 16 MiB shard here), and one chunk to prewarm.
    budget = 2 * prewarm.CHUNK + 2 * coldstart.PROCESS_BYTES + 16 * MiB + prewarm.CHUNK
    argv = ["coldstart", "--dir", str(tmp_path), "--count", "3", "--size", "16M", "--readers", "2", "--rounds", "1"]
    assert bench.main([*argv, "--budget", str(budget), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert len(result["seconds"]["loader in budget"]) == len(result["seconds"]["prewarm|loader in budget"]) == 1
    assert result["budget"]["bytes"] == budget and 0 < result["budget"]["peak_bytes"] <= budget
    assert result["budget"]["prewarm_bytes"] == prewarm.CHUNK
    assert f"budget {budget} bytes of memory for {result['total_bytes']} bytes of shards" in err
    assert not list(group.parent.glob("mlcache-coldstart-*")), "the benchmark's cgroup is removed"
    # A budget that leaves no room for the prewarm: the rows are left out, and the report says why.
    assert bench.main([*argv, "--budget", "100M"]) == 0
    out = capsys.readouterr().out
    assert "prewarm|loader in budget" not in out and "budget rows: skipped (--budget 104857600 leaves no room" in out


def test_coldstart_uses_a_directorys_own_shards_and_writes_none(tmp_path):
    own = shard_bench.write_shards(tmp_path, 1, 2 * MiB)[0].rename(tmp_path / "model.safetensors")
    result = coldstart.benchmark(tmp_path, readers=2, rounds=1, count=8, size="1G")
    assert [p.name for p in tmp_path.iterdir()] == [own.name]
    assert result["shards"] == 1 and result["total_bytes"] == own.stat().st_size
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())
    seconds = result["seconds"]
    assert seconds["prewarm+loader"] == [seconds["prewarm"][0] + seconds["loader from page cache"][0]]
    assert all(cpu[0] > 0 for cpu in result["cpu_seconds"].values())


def test_default_loader_reads_every_tensor(tmp_path):
    paths = shards(tmp_path, count=2, size=3 * MiB)
    loaded = coldstart.default_load(paths)
    assert loaded == sum(shard_bench.load_shards(tmp_path, 1)["shards"][i]["tensor_bytes"] for i in range(2))


def test_coldstart_runs_standalone_like_in_the_cluster_without_fio(tmp_path):
    """In the training image (no fio): the other sides still run, and the output says why fio is missing."""
    scripts = tmp_path / "opt"
    scripts.mkdir()
    for name in ("coldstart.py", "prewarm.py", "prefetch.py", "shard_bench.py"):
        shutil.copy(ROOT / "workloads" / name, scripts / name)
    done = subprocess.run(
        [
            "python",
            str(scripts / "coldstart.py"),
            str(tmp_path / "shards"),
            "--count=2",
            "--size=2M",
            "--readers=2",
            "--rounds=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(ROOT / "venv" / "bin")},  # the venv has python, not fio
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["seconds"]) == {
        "loader",
        "prewarm+loader",
        "prewarm",
        "loader from page cache",
        "prewarm|loader",
        "shard reader",
    }
    assert result["fio"] == "skipped: fio is not on PATH" and "no device reference, so no ratios" in done.stderr


def wrapper(tmp_path: Path, prewarm_script: Path | None, *command: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "MLCACHE_RUN_NAME": "r", "MLCACHE_RUN_MARKER": str(tmp_path / "run.done")}
    if prewarm_script is not None:
        env["MLCACHE_PREWARM"] = str(prewarm_script)
    return subprocess.Popen(
        ["/bin/sh", "-c", RUN_ONCE_SCRIPT, "mlcache-run-once", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def timed_lines(proc: subprocess.Popen, timeout: float) -> list[tuple[float, str]]:
    """Each line of the wrapper's output with the moment it arrived (the pod log, as it is written)."""
    assert proc.stdout is not None
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
        assert time.monotonic() < deadline, lines
    proc.wait(timeout=max(deadline - time.monotonic(), 1))
    return lines


def arrived(lines: list[tuple[float, str]], text: str) -> float:
    return next(at for at, line in lines if text in line)


def test_the_prewarm_starts_beside_the_training_commands_safetensors_loader(tmp_path):
    scripts = tmp_path / "opt"
    scripts.mkdir()
    for name in ("prewarm.py", "prefetch.py"):
        shutil.copy(ROOT / "workloads" / name, scripts / name)
    model = tmp_path / "model"
    shards(model, count=4, size=16 * MiB)
    write_config(scripts, markers=str(tmp_path / "markers"))
    # The stand-in trainer loads every tensor of every shard through safetensors, as ms-swift does.
    trainer = "; ".join(
        [
            "import sys; from pathlib import Path; from safetensors import safe_open",
            "print('trainer: started', flush=True)",
            "n = sum(1 for p in sorted(Path(sys.argv[2]).glob('*.safetensors')) "
            "for f in [safe_open(str(p), 'np')] for k in f.keys() if f.get_tensor(k) is not None)",
            "print('trainer: loaded', n, 'tensors', flush=True)",
            "import time; time.sleep(2)",  # then it trains
            "sys.exit(3)",
        ]
    )
    proc = wrapper(tmp_path, scripts / "prewarm.py", sys.executable, "-c", trainer, "--model", str(model))
    lines = timed_lines(proc, 60)
    text = "\n".join(line for _, line in lines)
    # Both start at once: the prewarm's first read within a second of the training command's start.
    assert abs(arrived(lines, "mlcache: prewarm: reading") - arrived(lines, "trainer: started")) < 1.0, text
    assert "trainer: loaded" in text
    # The training command's exit status is the wrapper's, and a failed run writes no marker.
    assert proc.returncode == 3 and not (tmp_path / "run.done").exists(), text


@pytest.mark.parametrize(
    "prewarm_body", ["import sys; sys.exit(1)", "raise SystemExit('boom')", None], ids=["status-1", "crash", "missing"]
)
def test_a_failing_prewarm_never_fails_the_run(tmp_path, prewarm_body):
    script = tmp_path / "prewarm.py"
    if prewarm_body is not None:
        script.write_text(prewarm_body)
    proc = wrapper(tmp_path, script, "sh", "-c", "sleep 0.5; echo trained")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert out.endswith("trained\nmlcache: run r completed; marker " + str(tmp_path / "run.done") + "\n")


def test_a_hanging_prewarm_neither_delays_the_run_nor_outlives_it(tmp_path):
    script = tmp_path / "prewarm.py"
    script.write_text("import os, pathlib, time; pathlib.Path('prewarm.pid').write_text(str(os.getpid())); time.sleep(600)")
    began = time.monotonic()
    proc = wrapper(tmp_path, script, "sh", "-c", "sleep 1; echo trained")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "trained" in out and time.monotonic() - began < 10, out
    pid = int((tmp_path / "prewarm.pid").read_text())
    deadline = time.monotonic() + 5
    while running(pid):
        assert time.monotonic() < deadline, "the prewarm outlived training"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (it may be reaped between any two reads)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_training_and_the_prewarm_without_a_marker(tmp_path):
    script = tmp_path / "prewarm.py"
    script.write_text("import pathlib, time; pathlib.Path('prewarming').touch(); time.sleep(60)")
    proc = wrapper(tmp_path, script, "sh", "-c", "touch training; exec sleep 60")
    deadline = time.monotonic() + 10
    while not ((tmp_path / "prewarming").exists() and (tmp_path / "training").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 143 and not (tmp_path / "run.done").exists(), out


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_the_shard_reader_reads_exactly_the_shards_and_direct_io_bypasses_the_page_cache(tmp_path, io):
    paths = shards(tmp_path, count=2, size=5 * MiB + 123)
    result = shard_bench.load_shards(tmp_path, readers=2, io=io)
    assert result["io"] == io and result["total_bytes"] == sum(p.stat().st_size for p in paths)
    assert resident(paths) == 0 if io == "direct" else cached(paths, result["total_bytes"])
    for path in paths:
        size = path.stat().st_size
        buffer = shard_bench.staging_buffer(size)
        assert shard_bench.read_whole(path, buffer, size, io) == io
        ours, reference = shard_bench.deserialize(buffer[:size]), load(path.read_bytes())
        assert ours.keys() == reference.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], reference[name])


def test_a_filesystem_without_o_direct_is_read_buffered(tmp_path, monkeypatch):
    shards(tmp_path, count=1)
    real_open = os.open

    def no_direct(path, flags, *args):  # what open(2) answers on a filesystem without O_DIRECT
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    assert shard_bench.load_shards(tmp_path, readers=1)["io"] == "buffered"


# The prewarm in the rendered program.


def scripts_data(run) -> dict[str, str]:
    return only(run, "ConfigMap").inputs["data"]


def test_the_training_container_runs_the_prewarm_from_the_scripts_configmap():
    run = rendered("dev")
    c = main_container(run)
    assert env_of(c)["MLCACHE_PREWARM"] == "/opt/mlcache/prewarm.py"
    assert {"name": "scripts", "mountPath": "/opt/mlcache", "readOnly": True} in c["volumeMounts"]
    data = scripts_data(run)
    for script in ("prewarm.py", "prefetch.py", "coldstart.py", "shard_bench.py"):
        assert data[script] == (ROOT / "workloads" / script).read_text()
    assert json.loads(data["prewarm.json"]) == {
        "enabled": True,
        "readers": 8,
        "maxBytes": None,
        "shmBytes": 32 * 2**30,  # job.shmSize
        "markers": "/cache/.mlcache/prefetch",
    }


def test_block_mode_has_no_prewarm():
    c = main_container(rendered("dev", "cache.volumeMode=Block"))
    assert "MLCACHE_PREWARM" not in env_of(c) and all(m["name"] != "scripts" for m in c.get("volumeMounts", []))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_prewarm_settings_edit_only_the_configmap(stack):
    base = rendered(stack)
    after = rendered(stack, "job.prewarm=false", "job.prewarmReaders=4", "job.prewarmMaxBytes=20Gi")
    is_scripts = lambda r: r.kind == "ConfigMap"  # noqa: E731
    assert comparable(after, is_scripts) == comparable(base, is_scripts)
    config = json.loads(scripts_data(after)["prewarm.json"])
    assert (config["enabled"], config["readers"], config["maxBytes"]) == (False, 4, 20 * 2**30)


@pytest.mark.parametrize(
    ("key", "value"), [("prewarmReaders", 0), ("prewarmReaders", "many"), ("prewarmMaxBytes", "lots"), ("prewarm", "yes please")]
)
def test_bad_prewarm_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        parse_settings({"job": {key: value}})
    assert err.value.key == f"mlcache:job.{key}"


def test_the_benchmark_job_ends_with_the_cold_start_comparison_on_the_shard_loads_files():
    run = rendered("dev", "benchmark.enabled=true", "benchmark.fioImage=docker.io/dmonakhov/alpine-fio:3.35")
    training, bench_job = sorted(run.find("Job"), key=lambda j: j.object_name.endswith("-storage-bench"))
    spec = bench_job.inputs["spec"]["template"]["spec"]
    shard_load, cold = spec["initContainers"][-1], spec["containers"][0]
    assert (shard_load["name"], cold["name"]) == ("shard-load", "cold-start")
    assert cold["command"][:3] == ["python", "/opt/mlcache/coldstart.py", shard_load["command"][3]]
    assert {"--count=8", "--size=1G", "--readers=8", "--rounds=3"} <= set(cold["command"])
    assert cold["image"] == training.inputs["spec"]["template"]["spec"]["containers"][0]["image"]


def test_the_rendered_wrapper_and_prewarm_json_prewarm_the_prefetched_model(tmp_path):
    """The rendered container command, env and ConfigMap files, copied where the pod mounts them
    (paths moved under tmp_path); a prefetch marker for job.model points at real shards."""
    run = rendered("dev", "cache.prefetch[0]=Qwen/Qwen3-VL-8B-Instruct")
    c, data = main_container(run), scripts_data(run)
    scripts, markers = tmp_path / "opt", tmp_path / "markers"
    scripts.mkdir()
    markers.mkdir()
    for name in ("prewarm.py", "prefetch.py"):
        (scripts / name).write_text(data[name])
    config = json.loads(data["prewarm.json"])
    paths = shards(tmp_path / "model")
    marker = prefetch.marker_path(markers, prefetch.MODELSCOPE, "Qwen/Qwen3-VL-8B-Instruct")
    marker.write_text(json.dumps({"path": str(tmp_path / "model")}))
    env = {
        **os.environ,
        **env_of(c),
        "MLCACHE_RUN_MARKER": str(tmp_path / "run.done"),
        "MLCACHE_PREWARM": str(scripts / "prewarm.py"),
    }
    # The trainer outlasts the prewarm beside it (it waits for it to appear and end), then says what it was given
    # (swift sft --model ... as its arguments). Its own prewarm, by path: another test's may run at the same time.
    outlast = (
        "import os, sys, time\n"
        "mine = os.environ['MLCACHE_PREWARM'].encode()\n"
        "def prewarming():\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            if open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[1] == mine:\n"
        "                return True\n"
        "        except (OSError, IndexError):\n"
        "            pass\n"
        "    return False\n"
        # Until the prewarm has come and gone: it may start late on a loaded machine (a deadline, not a guess).
        "seen, deadline = False, time.monotonic() + 10\n"
        "while time.monotonic() < deadline:\n"
        "    if prewarming():\n"
        "        seen, deadline = True, time.monotonic() + 50\n"
        "    elif seen:\n"
        "        break\n"
        "    time.sleep(0.02)\n"
        "print('trained with', *sys.argv[1:], flush=True)\n"
    )
    training = [sys.executable, "-c", outlast, *c["args"]]

    # This machine (24 GiB) has less memory than the rendered reserve: first one rank and no /dev/shm.
    (scripts / "prewarm.json").write_text(json.dumps({**config, "markers": str(markers), "shmBytes": 0}))
    done = subprocess.run(
        [*c["command"], *training], env={**env, "NPROC_PER_NODE": "1"}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.index("mlcache: prewarm: read ") < done.stdout.index(
        "trained with swift sft --model Qwen/Qwen3-VL-8B-Instruct"
    )
    assert cached(paths)

    # The rendered reserve (job.shmSize 32Gi + 4 ranks of 8 GiB) does not fit here: skipped, trained anyway.
    shard_bench.evict(paths)
    (tmp_path / "run.done").unlink()
    (scripts / "prewarm.json").write_text(json.dumps({**config, "markers": str(markers)}))
    done = subprocess.run([*c["command"], *training], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "mlcache: prewarm: skipped: " in done.stdout and "trained with" in done.stdout
    assert resident(paths) == 0


BAD_ARGUMENTS = {
    "coldstart": [["--readers", "0"], ["--size", "1X"], ["--count", "-1"], ["--rounds", "0"], ["--dir", "/proc/no/such/place"]],
    "prewarm": [
        ["--readers", "2,0"],
        ["--readers", ""],
        ["--readers", "4,4"],
        ["--chunks", "16M,banana"],
        ["--chunks", "64K"],
        ["--chunks", "1536K"],
        ["--chunks", "2G"],
        ["--chunks", "1M,1024K"],
        ["--rounds", "0"],
    ],
}


@pytest.mark.parametrize(
    ("command", "argv"),
    [(command, argv) for command, cases in BAD_ARGUMENTS.items() for argv in cases],
    ids=lambda a: " ".join(a) if isinstance(a, list) else a,
)
def test_bench_coldstart_and_prewarm_refuse_bad_arguments_in_one_line_before_writing_anything(capsys, tmp_path, command, argv):
    code = bench.main([command, "--dir", str(tmp_path / "s"), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and argv[0] in err, err
    assert not (tmp_path / "s").exists()


def test_ranks_load_in_that_many_processes_and_their_cpu_is_counted(tmp_path, capsys):
    argv = ["coldstart", "--dir", str(tmp_path), "--count", "2", "--size", "4M", "--readers", "2", "--rounds", "1"]
    assert bench.main([*argv, "--ranks", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ranks"] == 2 and "2 loader rank(s)" in err
    # The clock counts the CPU of the processes it waited for (each rank is one).
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    with coldstart.Clock() as clock:
        subprocess.run([sys.executable, "-c", busy], check=True)
    assert clock.cpu >= 0.25


def test_a_bad_budget_is_one_usage_line_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        coldstart.main([str(tmp_path), "--budget", "2 gigs"])
    assert stopped.value.code == 2 and list(tmp_path.iterdir()) == []
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == "coldstart.py: error: argument --budget: not a size: '2 gigs' (expected e.g. 512M or 1G)"
    )


def test_the_prewarm_beside_the_loader_is_a_process_of_its_own_as_in_the_pod(tmp_path, monkeypatch):
    # In a thread of the loader's process its readers would share the loader's GIL, which the pod's
    # prewarm (a process the wrapper starts) never does; a failed prewarm makes the row fail.
    paths = shards(tmp_path / "shards", count=2, size=MiB)
    readers_pid = tmp_path / "pid"

    def record_pid(reads, readers, chunk):
        readers_pid.write_text(str(os.getpid()))
        return sum(read.length for read in reads)

    monkeypatch.setattr(prewarm, "read_into_cache", record_pid)
    coldstart.prewarm_alongside_load(paths, readers=2)
    assert int(readers_pid.read_text()) != os.getpid()

    def fail(reads, readers, chunk):
        raise OSError("the device went away")

    monkeypatch.setattr(prewarm, "read_into_cache", fail)
    with pytest.raises(coldstart.RunFailed, match="the prewarm beside the loader failed"):
        coldstart.prewarm_alongside_load(paths, readers=2)

    # A loader that fails ends the run at once: its prewarm is stopped, not waited for.
    def hang(reads, readers, chunk):
        time.sleep(60)

    monkeypatch.setattr(prewarm, "read_into_cache", hang)
    (tmp_path / "shards" / "model-00000-of-00002.safetensors").write_bytes(b"not a shard")
    started = time.monotonic()
    with pytest.raises(coldstart.RunFailed, match=r"model-00000-of-00002\.safetensors: not a shard safetensors can load"):
        coldstart.prewarm_alongside_load(sorted((tmp_path / "shards").glob("*.safetensors")), readers=2)
    assert time.monotonic() - started < 10


def test_the_prewarm_sweep_times_each_readers_and_chunk_against_its_rounds_limit(tmp_path, capsys, monkeypatch):
    ran, run_alongside = [], coldstart.prewarm_alongside_load

    def recorded(paths, readers, ranks=1, bound=None, chunk=prewarm.CHUNK):
        ran.append((readers, chunk >> 20))
        run_alongside(paths, readers, ranks, bound, chunk)

    monkeypatch.setattr(coldstart, "prewarm_alongside_load", recorded)
    argv = ["prewarm", "--dir", str(tmp_path), "--count", "2", "--size", "4M", "--readers", "1,8", "--chunks", "1M,16M"]
    assert bench.main([*argv, "--rounds", "2", "--json"]) == 0
    assert sorted(ran) == sorted([(1, 1), (1, 16), (8, 1), (8, 16)] * 2)  # each cell as labelled, once a round
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert [(c["readers"], c["chunk_bytes"] >> 20) for c in result["cells"]] == [(1, 1), (1, 16), (8, 1), (8, 16)]
    assert all(len(c["seconds"]) == 2 and min(c["seconds"]) > 0 for c in result["cells"])
    fio, warm = result["seconds"]["fio"], result["seconds"]["loader from page cache"]
    assert result["limit_seconds"] == [max(f, w) for f, w in zip(fio, warm, strict=True)]
    assert "bench prewarm: round 2/2: 8 x 16M" in err  # progress while it runs
    table = err.split("prewarm|loader", 1)[1].splitlines()[1:]
    rows = {line.split("  ")[0]: line for line in table}
    assert set(rows) == {"1 x 1M", "1 x 16M", "8 x 1M", "8 x 16M"}
    assert rows["8 x 16M"].endswith("<- the pod's default") and "default" not in rows["1 x 1M"]
    cell = result["cells"][0]
    ratios = [t / bound for t, bound in zip(cell["seconds"], result["limit_seconds"], strict=True)]
    assert rows["1 x 1M"].endswith("   " + " ".join(f"{r:.2f}" for r in ratios))  # each round against its own limit


def test_a_file_that_is_not_a_shard_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "model-00001-of-00001.safetensors").write_bytes(b"not a shard" * 6000)
    code = bench.main(["coldstart", "--dir", str(tmp_path), "--rounds", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    last = err.splitlines()[-1]  # after the progress lines
    assert last.startswith(f"error: --dir {tmp_path}: model-00001-of-00001.safetensors: not a shard safetensors can load")
