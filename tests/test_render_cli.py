"""`mlcache render`: the contract other tools and reviewers rely on."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
import yaml

from mlcache.cli.render import main
from mlcache.preview.cli_yaml import CliLoader
from mlcache.preview.render import RENDER_RECORD, documents, to_yaml
from tests.conftest import ROOT, rendered
from tests.test_schema import VARIANTS


def _render(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_every_object_as_multi_document_yaml(capsys, stack):
    code, out, _ = _render(capsys, "--stack", stack)
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["StorageClass", "ConfigMap", "PersistentVolumeClaim", "Job", "NetworkPolicy"]
    assert all(d["apiVersion"] and d["metadata"]["name"] for d in docs)


def test_integers_stay_integers(capsys):
    _, out, _ = _render(capsys, "--stack", "dev")
    job = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Job")
    assert job["spec"]["backoffLimit"] == 2 and isinstance(job["spec"]["backoffLimit"], int)
    assert "backoffLimit: 2.0" not in out


def test_output_is_stable(capsys):
    first = _render(capsys, "--stack", "prod")[1]
    assert _render(capsys, "--stack", "prod")[1] == first


def test_out_writes_one_file_per_object(capsys, tmp_path):
    code, out, _ = _render(capsys, "--stack", "dev", "--out", str(tmp_path))
    assert code == 0 and out == ""
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != RENDER_RECORD)
    assert files == [
        "01-storageclass-linstor-fast-cache.yaml",
        "02-configmap-mlcache-scripts.yaml",
        "03-persistentvolumeclaim-ms-swift-cache-pvc.yaml",
        "04-job-sft-qwen3vl-fire-4gpu.yaml",
        "05-networkpolicy-mlcache-deny-ingress.yaml",
    ]
    assert yaml.safe_load((tmp_path / files[2]).read_text())["kind"] == "PersistentVolumeClaim"


def test_summary_shows_what_manifests_cannot(capsys):
    code, out, _ = _render(capsys, "--stack", "prod", "--summary")
    assert code == 0
    pvc_block = out.split("cache-pvc (kubernetes:core/v1:PersistentVolumeClaim)")[1].split("  - ")[0]
    assert "protect: True" in pvc_block
    assert "deleteBeforeReplace: True" in pvc_block
    assert "spec.volumeMode" in pvc_block
    assert "dependsOn: ['cache-storage-class-class']" in pvc_block
    assert "verifyCommands" in out


def test_secrets_never_printed(capsys, tmp_path):
    token = "hf_TopSecretValue42"
    for extra in ([], ["--summary"], ["--out", str(tmp_path)]):
        code, out, err = _render(capsys, "--stack", "dev", "--secret", f"hfToken={token}", *extra)
        assert code == 0
        written = "".join(p.read_text() for p in tmp_path.iterdir())
        for text in (out, err, written):
            assert token not in text
            assert base64.b64encode(token.encode()).decode() not in text
    _, out, _ = _render(capsys, "--stack", "dev", "--secret", f"hfToken={token}")
    secret = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Secret")
    assert secret["stringData"] == "<redacted>"  # as the engine receives it: the whole payload is one secret


BAD = [
    ("zone=mars", "mlcache:zone", "mars"),
    ("linstor.replicas=0", "mlcache:linstor.replicas", "0"),
    ("linstor.replicas=two", "mlcache:linstor.replicas", "two"),
    ("cache.volumeMode=Blocky", "mlcache:cache.volumeMode", "Blocky"),
    ("backend=ceph", "mlcache:backend", "ceph"),
    ("cache.size=lots", "mlcache:cache.size", "lots"),
    ("cache.size=-5Gi", "mlcache:cache.size", "-5Gi"),
    ("job.gpus=0", "mlcache:job.gpus", "0"),
    ("job.gpus=1.5", "mlcache:job.gpus", "1.5"),
    ("linstor.fsType=ntfs", "mlcache:linstor.fsType", "ntfs"),
    ("cache.mountPath=cache", "mlcache:cache.mountPath", "cache"),
    ("zon=ucsd", "mlcache:zon", "zone"),
    ("mlcahce:backend=linstor", "mlcahce:backend", "(did you mean mlcache:backend?)"),
    ("job.gpus=0x10", "mlcache:job.gpus", '"0x10"'),
    ("cache.name=c\n", "mlcache:cache.name", '"c\\n"'),
]


@pytest.mark.parametrize(("override", "key", "value"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_on_stderr_and_nothing_on_stdout(capsys, override, key, value):
    code, out, err = _render(capsys, "--stack", "dev", "--config", override)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and key in err and value in err and "expected" in err
    assert "Traceback" not in err


def test_the_real_command_line_fails_cleanly():
    result = subprocess.run(
        [sys.executable, "-m", "mlcache", "render", "--stack", "prod", "--config", "zone=mars"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith('error: invalid config mlcache:zone = "mars"')
    assert "Traceback" not in result.stderr


def test_values_reach_the_manifests_as_typed(capsys):
    code, out, _ = _render(
        capsys, "--stack", "dev", "--config", "job.env.UMASK=0022", "--config", "job.env.V=1.10", "--config", "job.cpu=0.5"
    )
    job = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert code == 0 and env["UMASK"] == "0022" and env["V"] == "1.10"
    assert container["resources"]["limits"]["cpu"] == "0.5"


# Each is text to YAML 1.1 (PyYAML) but a number or a boolean to a YAML 1.2 reader or to Go's (the
# Pulumi CLI's yaml.v3 follows Go's number syntax; kubectl's yaml.v2 reads y and N as booleans).
TYPED_ELSEWHERE = ["1e-4", "0o17", "0x1F", "1.", "+1", ".inf", ".NaN", "0123", "20261128"]
TYPED_BY_GO = ["0X1F", "-0o17", "+0o17", "0o1_7", "1_0e3", "1_000", "0b101", "y", "N"]


@pytest.mark.parametrize("value", TYPED_ELSEWHERE + TYPED_BY_GO)
def test_an_env_value_a_yaml_12_reader_would_type_is_printed_quoted(value):
    """kubectl and YAML 1.2 readers type plain 1e-4 or 0o17 as numbers; the render quotes them."""
    run = rendered("dev", f"job.env={{V: '{value}'}}")  # quoted: the text itself (`config set --path` would type +1)
    lines = to_yaml(documents(run)).splitlines()
    assert lines[lines.index("        - name: V") + 1] == f"          value: '{value}'"
    job = next(d for d in yaml.safe_load_all("\n".join(lines)) if d["kind"] == "Job")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["V"] == value


SHAPES = [("prod", ()), *(("dev", overrides) for overrides in VARIANTS)]


@pytest.mark.parametrize(
    ("stack", "overrides"), SHAPES, ids=[f"{s}-" + "-".join(o.partition("=")[2] or "any" for o in v) for s, v in SHAPES]
)
def test_every_rendered_variant_reads_back_the_same_with_yaml_11_and_with_go_yaml(stack, overrides):
    """The render as PyYAML (YAML 1.1) and as the CLI's Go reader (yaml.v3, resolve_plain) read it:
    both give back exactly the objects, with env values that each would type otherwise (every
    shape of the objects: each backend, volume mode, zone pinning, with and without training)."""
    env = "job.env={" + ", ".join(f"V{i}: '{v}'" for i, v in enumerate(TYPED_ELSEWHERE + TYPED_BY_GO)) + "}"
    objects = documents(rendered(stack, *overrides, env))
    text = to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert list(yaml.load_all(text, Loader=CliLoader)) == objects
