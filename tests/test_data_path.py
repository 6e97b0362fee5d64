"""The data path in the program: the benchmark Job, the warm-up init container and the scripts
ConfigMap, their placement (the first-consumer trap), and that changing them replaces nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mlcache.preview.mock_engine import ProgramRun, Registration
from mlcache.program.settings import ConfigError, parse_settings
from tests.conftest import ROOT, env_of, only, pod_spec, rendered
from workloads.prefetch import warmup_id

FIO_IMAGE = "docker.io/dmonakhov/alpine-fio:3.35"
BENCH = ("benchmark.enabled=true", f"benchmark.fioImage={FIO_IMAGE}")


def bench_job(run: ProgramRun) -> Registration:
    (job,) = [r for r in run.find("Job") if r.object_name.endswith("-storage-bench")]
    return job


def training_job(run: ProgramRun) -> Registration:
    (job,) = [r for r in run.find("Job") if not r.object_name.endswith("-storage-bench")]
    return job


def steps(job: Registration) -> list[dict]:
    spec = job.inputs["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_benchmark_pods_are_scheduled_exactly_like_training(stack):
    run = rendered(stack, *BENCH, "job.priorityClassName=opportunistic", "job.tolerations[0].key=gpu")
    train, bench = training_job(run).inputs["spec"]["template"]["spec"], bench_job(run).inputs["spec"]["template"]["spec"]
    for field in ("affinity", "tolerations", "priorityClassName"):
        assert bench[field] == train[field], field
    training_resources = train["containers"][0]["resources"]
    for container in steps(bench_job(run)):
        assert container["resources"] == training_resources, container["name"]
    claim = next(v for v in bench["volumes"] if v["name"] == "cache")["persistentVolumeClaim"]["claimName"]
    assert claim == only(run, "PersistentVolumeClaim").object_name
    assert bench_job(run).inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


def test_benchmark_runs_each_profile_in_order_then_the_shard_load_and_cold_start():
    run = rendered("dev", *BENCH)
    names = [c["name"] for c in steps(bench_job(run))]
    assert names == ["fio-seqread", "fio-shards", "shard-load", "cold-start"]
    seqread, shards, shard_load, _ = steps(bench_job(run))
    assert {"--rw=read", "--bs=4M", "--size=10G", "--numjobs=1", "--output-format=json"} <= set(seqread["command"])
    assert {"--direct=1", "--ioengine=io_uring", "--iodepth=32", "--numjobs=8", "--group_reporting"} <= set(shards["command"])
    assert "--directory=/cache/.mlcache/bench/fio" in shards["command"] and "--unlink=1" in shards["command"]
    assert shard_load["image"] == training_job(run).inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    assert shard_load["command"][:3] == ["python", "/opt/mlcache/shard_bench.py", "run"]
    assert seqread["image"] == FIO_IMAGE


def test_block_mode_benchmark_reads_the_device_read_only():
    run = rendered("prod", *BENCH, "cache.volumeMode=Block", "benchmark.shardLoad=false")
    for container in steps(bench_job(run)):
        assert "--filename=/dev/cache" in container["command"] and "--readonly" in container["command"]
        assert container["volumeDevices"] == [{"name": "cache", "devicePath": "/dev/cache"}]
    assert "--offset_increment=1G" in steps(bench_job(run))[1]["command"]


def test_benchmark_settings_are_checked():
    with pytest.raises(ConfigError, match=r"mlcache:benchmark\.fioImage"):
        parse_settings({"benchmark": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"mlcache:benchmark\.shardLoad"):
        parse_settings({"benchmark": {"enabled": True, "fioImage": FIO_IMAGE}, "cache": {"volumeMode": "Block"}})
    with pytest.raises(ConfigError, match=r"mlcache:cache\.prefetch"):
        parse_settings({"cache": {"volumeMode": "Block", "prefetch": ["Qwen/Qwen3-VL-8B-Instruct"]}})


def test_warm_up_is_the_training_pods_first_init_container():
    run = rendered("dev", "cache.prefetch[0]=Qwen/Qwen3-VL-8B-Instruct", "cache.prefetch[1]=huggingface:org/model")
    spec = pod_spec(run)
    (init,) = spec["initContainers"]
    assert init["name"] == "prefetch" and init["image"] == spec["containers"][0]["image"]
    assert init["command"][1:] == ["/opt/mlcache/prefetch.py", "/opt/mlcache/prefetch.txt", "/cache/.mlcache/prefetch"]
    assert env_of(init)["HF_HOME"] == "/cache/huggingface" and env_of(init)["MODELSCOPE_CACHE"] == "/cache/modelscope"
    data = only(run, "ConfigMap").inputs["data"]
    assert data["prefetch.txt"] == "Qwen/Qwen3-VL-8B-Instruct\nhuggingface:org/model\n"
    assert data["prefetch.py"] == (ROOT / "workloads" / "prefetch.py").read_text()


def test_warm_up_reads_tokens_from_the_secret():
    run = rendered("dev", "cache.prefetch[0]=Qwen/Qwen3-VL-8B-Instruct", secrets=("hfToken=hf_" + "x" * 34,))
    (init,) = pod_spec(run)["initContainers"]
    token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
    assert "secretKeyRef" in token["valueFrom"] and "value" not in token


def test_block_mode_has_no_warm_up_or_scripts():
    run = rendered("dev", "cache.volumeMode=Block")
    assert "initContainers" not in pod_spec(run) and run.find("ConfigMap") == []


def comparable(run: ProgramRun, skip) -> dict[str, tuple]:
    """Each resource's inputs and engine options, keyed by URN, for resources not `skip`ped."""
    return {
        r.urn: (r.inputs, r.protect, r.dependencies, r.property_dependencies, r.delete_before_replace, r.replace_on_changes)
        for r in run.registrations
        if not skip(r)
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_benchmark_change_replaces_nothing_else(stack):
    base = rendered(stack)
    for change in (BENCH, (*BENCH, "benchmark.profiles[0]=shards", "benchmark.readers=4", "benchmark.shardLoad=false")):
        after = rendered(stack, *change)
        is_bench = lambda r: "storage-benchmark" in r.urn  # noqa: E731
        assert comparable(after, is_bench) == comparable(base, is_bench)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_warm_up_change_edits_only_the_configmap(stack):
    base = rendered(stack)
    after = rendered(stack, "cache.prefetch[0]=Qwen/Qwen3-VL-8B-Instruct")
    is_scripts = lambda r: r.kind == "ConfigMap"  # noqa: E731
    assert comparable(after, is_scripts) == comparable(base, is_scripts)
    assert only(after, "ConfigMap").inputs["data"] != only(base, "ConfigMap").inputs["data"]
    # The Job references the ConfigMap by its output name: a data edit leaves that name alone.
    assert only(after, "ConfigMap").object_name == only(base, "ConfigMap").object_name


FAKE_HUBS = {
    "huggingface_hub/__init__.py": """
        import json, os
        def snapshot_download(repo_id):
            if repo_id.startswith("broken/"):
                raise RuntimeError("404 not found")
            with open(os.environ["CALLS"], "a") as f:
                f.write(json.dumps(["hf", repo_id, os.environ.get("HF_TOKEN")]) + "\\n")
            return "/cache/huggingface/" + repo_id
    """,
    "modelscope/__init__.py": """
        import json, os
        def snapshot_download(model_id):
            with open(os.environ["CALLS"], "a") as f:
                f.write(json.dumps(["ms", model_id]) + "\\n")
            return "/cache/modelscope/" + model_id
    """,
    "modelscope/hub/__init__.py": "",
    "modelscope/hub/api.py": """
        import json, os
        class HubApi:
            def login(self, token):
                with open(os.environ["CALLS"], "a") as f:
                    f.write(json.dumps(["ms-login", token]) + "\\n")
    """,
}


def run_prefetch(tmp_path, models: list[str], **env) -> tuple[subprocess.CompletedProcess, list]:
    """Run workloads/prefetch.py for real, against stand-in hub clients that record their calls."""
    fakes = tmp_path / "fakes"
    for name, body in FAKE_HUBS.items():
        (fakes / name).parent.mkdir(parents=True, exist_ok=True)
        (fakes / name).write_text(textwrap.dedent(body))
    (tmp_path / "list.txt").write_text("".join(f"{m}\n" for m in models) + "\n")
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    result = subprocess.run(
        [sys.executable, str(ROOT / "workloads" / "prefetch.py"), str(tmp_path / "list.txt"), str(tmp_path / "markers")],
        env={**os.environ, "PYTHONPATH": str(fakes), "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, [json.loads(line) for line in calls.read_text().splitlines()]


def test_prefetch_downloads_each_model_once_and_skips_cached_ones(tmp_path):
    models = ["Qwen/Qwen3-VL-8B-Instruct", "huggingface:org/model"]
    first, calls = run_prefetch(tmp_path, models, HF_TOKEN="hf_tok")
    assert first.returncode == 0, first.stderr
    assert calls == [["ms", "Qwen/Qwen3-VL-8B-Instruct"], ["hf", "org/model", "hf_tok"]]
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == [
        "complete",
        "huggingface--org--model.done",
        "modelscope--Qwen--Qwen3-VL-8B-Instruct.done",
    ]
    # The warm-up's own marker names the list it finished, as the program names it (the durable refresh waits for it).
    list_text = (tmp_path / "list.txt").read_text()
    assert (tmp_path / "markers" / "complete").read_text().strip() == warmup_id(list_text)
    second, calls_after = run_prefetch(tmp_path, models)
    assert second.returncode == 0 and calls_after == calls  # nothing downloaded again
    assert [json.loads(line)["status"] for line in second.stdout.splitlines()] == ["cached", "cached"]


def test_prefetch_fails_the_init_container_when_a_download_fails(tmp_path):
    result, _ = run_prefetch(tmp_path, ["huggingface:broken/model", "Qwen/ok"])
    assert result.returncode == 1
    statuses = [json.loads(line) for line in result.stdout.splitlines()]
    assert statuses[0]["status"] == "failed" and "404" in statuses[0]["error"] and statuses[1]["status"] == "downloaded"
    assert [p.name for p in (tmp_path / "markers").iterdir()] == ["modelscope--Qwen--ok.done"]


def test_prefetch_logs_in_to_modelscope_with_the_token(tmp_path):
    _, calls = run_prefetch(tmp_path, ["Qwen/ok"], MODELSCOPE_API_TOKEN="ms_tok")
    assert calls == [["ms-login", "ms_tok"], ["ms", "Qwen/ok"]]
