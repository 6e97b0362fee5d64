"""Secrets (issue 12 §3): any key may be secret, and its value reaches the engine only inside a
secret envelope, wherever it flows; tools print secrets by where they flow, never by their text;
no error line repeats one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pulumi
import pytest
import yaml

from mlcache.cli import render as render_command
from mlcache.cli import validate as validate_command
from mlcache.preview import render
from mlcache.preview.diff import manifest_diff, plan, report
from mlcache.preview.mock_engine import ProgramRun, is_secret_envelope, run_program
from mlcache.preview.stack_config import SECURE_PLACEHOLDER, load_stack_config
from mlcache.program.schema import ConfigError
from tests.conftest import ROOT


def plain_text(value: Any) -> Iterator[str]:
    """Every string of a RegisterResource request that the engine would store and show in the clear."""
    if is_secret_envelope(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from plain_text(item)
    elif isinstance(value, list):
        for item in value:
            yield from plain_text(item)
    elif value is not None:
        yield str(value)


def secret_text(value: Any) -> Iterator[str]:
    """Every string inside a secret envelope."""
    if is_secret_envelope(value):
        yield from plain_text(value.get("value"))
    elif isinstance(value, dict):
        for item in value.values():
            yield from secret_text(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_text(item)


def assert_kept_secret(run: ProgramRun, secret: str) -> None:
    assert any(secret in text for r in run.registrations for text in secret_text(r.wire)), "the value reached no object"
    for registration in run.registrations:
        leaked = [text for text in plain_text(registration.wire) if secret in text]
        assert not leaked, f"{registration.type} {registration.name} holds the secret in the clear: {leaked[:2]}"
        # What the state holds beside the inputs, never secret: the ID, the import ID, the timeouts.
        beside = [registration.id, registration.import_id, str(registration.custom_timeouts), registration.urn]
        assert not [text for text in beside if secret in text], f"{registration.type} {registration.name}: {beside}"
    assert not [line for line in run.warnings + run.notes if secret in line], "a message quotes the secret"
    for name, value in run.outputs.items():
        assert name in run.secret_outputs or secret not in str(value), f"output {name} shows the secret"


# A distinctive value for each key, so that a plain occurrence can only be a leak.
SECRET_KEYS = [
    ("job.env.WANDB_API_KEY=wandb-9f8e7d6c", ()),
    ("job.image=registry.example.org/private/trainer:7.7.7", ()),
    ("job.args[0]=--hidden-flag-77", ()),
    ("job.gpuProduct=NVIDIA-HIDDEN-77", ()),
    # Unpinned workers: a warning names the GPU product whose free nodes are too few.
    ("job.gpuProduct=NVIDIA-HIDDEN-78", ("job.nodes=2",)),
    ("cache.prefetch[0]=hiddenorg/hidden-model-77", ()),
    ("zone=hiddenzone77", ("zones=[ucsd, hiddenzone77]",)),
    ("linstor.storagePool=hiddenpool77", ()),
    ("rookCeph.storageClassName=hidden-ceph-77", ("backend=rook-ceph",)),
    ("benchmark.fioImage=registry.example.org/hidden/fio:3.36", ("benchmark.enabled=true",)),
    ("benchmark.size=77G", ("benchmark.enabled=true", "benchmark.fioImage=example.org/fio:3.36")),
    ("hfToken=hf_hidden77", ()),
    ("secretEnv.WANDB_API_KEY=wandb-secret-env-77", ()),
]


@pytest.mark.parametrize(("assignment", "config"), SECRET_KEYS, ids=[a.partition("=")[0] for a, _ in SECRET_KEYS])
def test_a_secret_key_reaches_the_engine_only_as_a_secret(assignment, config):
    run, _ = render.render("dev", list(config), [assignment])
    assert_kept_secret(run, assignment.partition("=")[2])


NAMES = [
    ("--secret", "namespace=hidden-ns-77"),
    ("--secret", "cache.name=hidden-cache-pvc-77"),
    ("--secret", "job.name=sft-hidden-run-77"),
    ("--secret", "job.runId=hidden-run-77"),
    ("--secret", "linstor.storageClassName=hidden-class-77"),
    # Pulumi marks the whole of mlcache:cache secret: the name given beside the secret may be the secret.
    ("--config", "cache.name=hidden-cache-pvc-77", "--secret", "cache.size=200Gi"),
]


@pytest.mark.parametrize("argv", NAMES, ids=[a[1].partition("=")[0] for a in NAMES])
def test_a_name_given_under_a_secret_key_is_refused_in_one_line(capsys, argv):
    """A name is part of its object's ID (namespace/name), which the engine writes to the state in
    plain text: a name under a secret key is refused before anything is registered."""
    code, out, err = _render_cli(capsys, *argv)
    key = argv[1].partition("=")[0]
    assert code == 2 and out == "" and err.count("\n") == 1 and "hidden" not in err
    assert err.startswith(f"error: invalid config mlcache:{key} = [secret]: expected a value given as plain text")


def test_a_secret_provider_namespace_is_refused_where_it_names_every_object(capsys):
    code, out, err = _render_cli(capsys, "--secret", "kubernetes:namespace=hidden-ns-77")
    assert code == 2 and out == "" and err.count("\n") == 1 and "hidden-ns-77" not in err
    assert err.startswith("error: invalid config kubernetes:namespace = [secret]: expected a value given as plain text while")
    # mlcache:namespace names every object's namespace: the provider's is then in no ID.
    run, _ = render.render("dev", ["namespace=ml-training"], ["kubernetes:namespace=hidden-ns-77"])
    assert {r.id.partition("/")[0] for r in run.kubernetes_objects() if r.kind != "StorageClass"} == {"ml-training"}
    # In plain text it is the namespace of every object, as the provider does.
    plain, _ = render.render("dev", ["kubernetes:namespace=team-a"], [])
    assert {r.id.partition("/")[0] for r in plain.kubernetes_objects() if r.kind != "StorageClass"} == {"team-a"}


def test_a_default_name_under_a_secret_key_is_no_secret():
    run, _ = render.render("dev", [], ["cache.size=177Gi", "job.image=registry.example.org/private/trainer:7.7.7"])
    ids = {r.kind: r.id for r in run.kubernetes_objects()}
    assert ids["PersistentVolumeClaim"].endswith("/ms-swift-cache-pvc") and ids["Job"].endswith("/sft-qwen3vl-fire-4gpu")


def test_a_secret_the_state_would_hold_in_plain_text_is_refused_in_one_line(capsys):
    """A Job's custom timeout is a resource option, which the engine writes to the state in plain text."""
    timeout = ("--config", "job.waitForCompletion=true", "--secret", "job.waitTimeout=77m")
    code, out, err = _render_cli(capsys, *timeout)
    assert code == 2 and out == "" and "77m" not in err
    assert err.startswith("error: invalid config mlcache:job.waitForCompletion = [secret]: expected false while mlcache:job")
    assert "mlcache:secretEnv" in err
    # A secret env value in its own key leaves mlcache:job plain: the Job waits, its timeout is no secret.
    run, _ = render.render("dev", ["job.waitForCompletion=true"], ["secretEnv.WANDB_API_KEY=wandb-77"])
    (job,) = run.find("Job")
    assert job.custom_timeouts and "wandb-77" not in str(job.custom_timeouts)


def test_a_secure_value_in_a_stack_file_is_secret_where_it_flows(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.ci.yaml").write_text("config:\n  mlcache:job:\n    env:\n      WANDB_API_KEY:\n        secure: v1:AAA=\n")
    config = load_stack_config("ci", project_dir=tmp_path)
    assert config.secret_keys == {"mlcache:job"}
    assert_kept_secret(run_program(config.engine_config(), sorted(config.secret_keys), "ci"), SECURE_PLACEHOLDER)


def test_only_what_a_secret_flows_into_is_secret():
    run, _ = render.render("dev", [], ["job.env.WANDB_API_KEY=wandb-9f8e7d6c"])
    secret_fields = {
        r.kind: sorted(k for k, v in r.wire.items() if is_secret_envelope(v))
        for r in run.kubernetes_objects()
        if any(is_secret_envelope(v) for v in r.wire.values())
    }
    # The claim's placement record names job.gpuProduct: its metadata only (the SDK marks the
    # nearest input above the annotation), its spec stays readable.
    assert secret_fields == {"Job": ["metadata", "spec"], "PersistentVolumeClaim": ["metadata"]}
    assert run.secret_outputs == {"jobName", "runMarker", "benchmarkJob", "verifyCommands", "run"}


def test_a_secret_env_value_hides_only_itself_the_job_stays_readable():
    run, _ = render.render("dev", [], ["secretEnv.WANDB_API_KEY=wandb-secret-env-77", "secretEnv.REGISTRY_TOKEN=reg-77"])
    assert_kept_secret(run, "wandb-secret-env-77")
    secret_kinds = {r.kind for r in run.kubernetes_objects() if any(is_secret_envelope(v) for v in r.wire.values())}
    assert secret_kinds == {"Secret"} and not run.secret_outputs
    (job,) = run.find("Job")
    (container,) = [c for c in job.inputs["spec"]["template"]["spec"]["containers"] if c["name"] == "sft"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {
        "REGISTRY_TOKEN": {"name": "sft-qwen3vl-fire-4gpu-secret-env", "key": "REGISTRY_TOKEN"},
        "WANDB_API_KEY": {"name": "sft-qwen3vl-fire-4gpu-secret-env", "key": "WANDB_API_KEY"},
    }
    assert not any("hidden in previews" in w for w in run.warnings)
    (secret,) = [r for r in run.find("Secret") if r.inputs["metadata"]["name"].endswith("-secret-env")]
    assert (
        is_secret_envelope(secret.wire["stringData"]) and secret.inputs["metadata"]["name"] == "sft-qwen3vl-fire-4gpu-secret-env"
    )


def test_a_secret_under_job_hides_the_job_and_says_where_secrets_belong():
    run, _ = render.render("dev", [], ["job.env.WANDB_API_KEY=wandb-9f8e7d6c"])
    assert any("mlcache:secretEnv" in w and "hidden in previews" in w for w in run.warnings)


@pytest.mark.parametrize("assignment", ["cache.size=177Gi", "zone=ucsd"])
def test_any_secret_key_that_hides_whole_objects_says_which(assignment):
    run, _ = render.render("dev", [], [assignment])
    key = assignment.split(".")[0].split("=")[0]
    (warning,) = [w for w in run.warnings if w.startswith(f"mlcache:{key} holds a secret value")]
    hidden = {r.kind for r in run.kubernetes_objects() if is_secret_envelope(r.wire.get("spec"))}
    assert hidden >= {"PersistentVolumeClaim", "Job"} and all(kind in warning for kind in hidden)
    assert "177Gi" not in warning and "mlcache:secretEnv" in warning


@pytest.mark.parametrize(
    ("assignment", "secret", "key", "allowed"),
    [
        ("secretEnv.bad-name=v-77", True, "secretEnv.bad-name", "environment variable name"),
        ("secretEnv.HF_TOKEN=v-77", True, "secretEnv.HF_TOKEN", "a name mlcache does not set itself"),
        ("secretEnv.UMASK=v-77", True, "secretEnv.UMASK", "a name job.env does not set already"),
    ],
)
def test_secret_env_refusals_name_the_key_and_never_the_value(capsys, assignment, secret, key, allowed):
    args = ["--config", "job.env.UMASK=0022", "--secret" if secret else "--config", assignment]
    code, out, err = _render_cli(capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert (
        f"mlcache:{key}" in err
        and allowed in err
        and "77" not in err.replace("v-77", "").replace("plain-77", "")
        and "plain-77" not in err
    )


def test_secret_settings_are_checked_before_anything_is_registered_even_without_training():
    """A plain value in the stack file (not `secure:`), as the CLI hands it to the program."""
    config = load_stack_config("dev", ["job.enabled=false"]).engine_config()
    for key, value in [("mlcache:secretEnv", '{"WANDB_API_KEY": "plain-77"}'), ("mlcache:hfToken", "hf_plain77")]:
        run = ProgramRun()
        with pytest.raises(ConfigError) as err:
            run_program({**config, key: value}, [], "dev", run=run)
        assert key in str(err.value) and "plain" not in str(err.value) and run.registrations == []


@pytest.mark.parametrize(
    "assignment",
    [
        "hfToken=hf_plain77",
        "secretEnv.WANDB_API_KEY=plain-77",
        "modelscopeToken=ms_plain77",
        "secretEnv={X: !!int plain77}",  # a value that is not even valid YAML: refused before it is read
        "mlcache:secretEnv={X: *plain77}",
    ],
)
def test_offline_a_secret_setting_given_with_config_is_refused_naming_secret(capsys, assignment):
    key = assignment.partition("=")[0]
    code, out, err = _render_cli(capsys, "--config", assignment)
    assert (code, out) == (2, "") and "plain" not in err
    assert err == (
        f"error: --config {key}: a secret setting; give it with --secret (mlcache render, validate) or as a `secure:` "
        "value in the stack file (the value is not shown)\n"
    )


def test_a_wrong_key_keeps_its_line_when_secrets_are_given(capsys):
    """load_settings rewrites lines that could quote a secret; a wrong key's line quotes none."""
    assert validate_command.main(["--stack", "dev", "--secret", "job.gpu=4"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid config key mlcache:job.gpu (did you mean mlcache:job.gpus?)")
    code, out, err = _render_cli(capsys, "--secret", "job.env.A=e", "--config", "cache.sise=1Ti")
    assert (code, out) == (2, "")
    assert err.startswith("error: invalid config key mlcache:cache.sise (did you mean mlcache:cache.size?): expected")


def _render_cli(capsys, *argv):
    code = render_command.main(["--stack", "dev", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "token", ["abc", "cache", "pässwörd-ß", "line one\nline two", "x" * 300 + " folded " + "y" * 300], ids=repr
)
def test_redaction_is_by_where_a_secret_flows_not_by_its_text(capsys, tmp_path, token):
    _, plain, _ = _render_cli(capsys)
    outputs = []
    for extra in ([], ["--summary"], ["--json"], ["--out", str(tmp_path)]):
        code, out, err = _render_cli(capsys, "--secret", f"hfToken={token}", *extra)
        assert code == 0
        outputs += [out, err, *(p.read_text() for p in tmp_path.iterdir())]
    if token not in plain:  # "cache" is a word of every render: there, only the structure below can tell
        assert not any(token in text for text in outputs)
    with_token = outputs[0]  # the manifests, as rendered without an output flag
    # The rest of the output is untouched: "cache" still reads ms-swift-cache-pvc, /cache, ...
    unrelated = [d for d in yaml.safe_load_all(with_token) if d["kind"] not in ("Secret", "Job")]
    assert unrelated == [d for d in yaml.safe_load_all(plain) if d["kind"] != "Job"]
    assert with_token.count("<redacted>") == 1


@pytest.mark.parametrize(
    ("assignment", "config"),
    [
        ("cache.name=Bad_Secret_Name", ()),
        ("job.shmSize=999Gi", ()),  # job.memory's rule would quote job.shmSize
        ("job.env.lower-case=SecretEnvValue9", ()),
        ("zone=hiddenzone77", ()),
        ("mlcahce:zone=hiddenzone77", ()),
        ("linstor.replicas=3", ("linstor.layerList=storage",)),
    ],
    ids=lambda a: a if isinstance(a, str) else "",
)
def test_no_error_line_repeats_a_secret(capsys, assignment, config):
    argv = [arg for c in config for arg in ("--config", c)]
    code, out, err = _render_cli(capsys, *argv, "--secret", assignment)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "= [secret]" in err or "rule is not shown" in err or "invalid config key" in err
    assert assignment.partition("=")[2] not in err


@pytest.mark.parametrize(
    ("assignment", "line"),
    [
        ("job.env.HF_TOKEN=hf_abcdefSECRET123", "error: invalid config key mlcache:job.env.HF_TOKEN: expected a name mlcache"),
        ("hftoken=hf_abcdefSECRET123", "error: invalid config key mlcache:hftoken (did you mean mlcache:hfToken?): expected"),
        ("job.gpu=hf_abcdefSECRET123", "error: invalid config key mlcache:job.gpu (did you mean mlcache:job.gpus?): expected"),
    ],
)
def test_a_wrong_key_is_named_without_its_value_which_may_be_a_token(capsys, assignment, line):
    """Not marked secret, but under a reserved or mistyped name a value is beside the point: not shown."""
    code, out, err = _render_cli(capsys, "--config", assignment)
    assert code == 2 and out == "" and err.startswith(line) and err.count("\n") == 1
    assert "SECRET123" not in err


def test_diff_sees_a_change_inside_a_secret_and_flags_the_data_loss(monkeypatch):
    # mlcache diff renders both sides with one random digest key (here set by hand, in-process).
    monkeypatch.setenv(render.DIGEST_KEY_ENV, "k3y")
    secret = ["cache.size=177Gi"]
    old = render.as_json(render.render("dev", [], secret)[0])
    new = render.as_json(render.render("dev", ["cache.volumeMode=Block"], secret)[0])
    assert plan(old, render.as_json(render.render("dev", [], secret)[0])) == []  # equal secrets, equal digests
    changes = {c.label: c for c in plan(old, new)}
    pvc = changes["PersistentVolumeClaim/cache-pvc"]
    assert pvc.action == "replace" and pvc.data_loss
    shown = report("dev", list(changes.values()))
    assert "177Gi" not in shown and "Block" not in manifest_diff(pvc)


def test_a_value_that_only_became_secret_is_no_change_in_the_diff(monkeypatch):
    """The issue's own case: a secret env value added under mlcache:job makes the whole object
    secret, so every field it flows into is a digest on one side and plain on the other. Only what
    really changed is a change: the claim is not replaced (no DATA LOSS), the Job changes by its env."""
    monkeypatch.setenv(render.DIGEST_KEY_ENV, "k3y")
    old = render.as_json(render.render("dev", [], [])[0])
    new = render.as_json(render.render("dev", [], ["job.env.WANDB_API_KEY=wandb-0123456789"])[0])
    changes = {c.label: c for c in plan(old, new, "k3y")}
    assert not any(c.data_loss for c in changes.values()), report("dev", list(changes.values()))
    assert "PersistentVolumeClaim/cache-pvc" not in changes and set(changes) == {"Job/training-job"}
    assert changes["Job/training-job"].action == "replace" and "spec.template" in changes["Job/training-job"].reasons[0]
    # Without the digests' key (a digest cannot be compared), the same change stays a change.
    assert "PersistentVolumeClaim/cache-pvc" in {c.label for c in plan(old, new)}
    # With a new GPU product in the same change, the claim's placement record (ignored by the engine)
    # changes inside the metadata that became secret: still no replacement, and the hidden Job says
    # that whether it strands the cache is for the guard to judge.
    moved = render.as_json(render.render("dev", ["job.gpuProduct=NVIDIA-H100-80GB-HBM3"], ["job.env.WANDB_API_KEY=w-0123"])[0])
    (job,) = plan(old, moved, "k3y")
    assert job.label == "Job/training-job" and not job.data_loss
    assert "spec is hidden by a secret: whether it moves away from where PersistentVolumeClaim/" in job.warnings[-1]
    back = {
        c.label for c in plan(new, render.as_json(render.render("dev", ["job.env.WANDB_API_KEY=wandb-0123456789"], [])[0]), "k3y")
    }
    assert back == set()  # and plain again, the same value: nothing changes


def test_the_guard_never_quotes_a_secret_gpu_product():
    """The guard's notes quote the placement record (zone and GPU product): a secret one is hidden."""
    from mlcache.cluster.bound_cache import assume_live, live_from_manifest  # noqa: PLC0415

    product = "NVIDIA-A100-SXM4-80GB"  # the dev stack's, so the bound claim's record names it
    base = next(r for r in render.render("dev", [], [])[0].kubernetes_objects() if r.kind == "PersistentVolumeClaim")
    with assume_live(live_from_manifest(base.inputs)):
        plain, _ = render.render("dev", [], [])
        hidden, _ = render.render("dev", [], [f"job.gpuProduct={product}"])
    assert any(product in note for note in plain.notes)  # it would be quoted
    assert hidden.notes and not any(product in note for note in hidden.notes)
    assert any("[secret]" in note for note in hidden.notes)


def test_a_short_secret_value_is_hidden_as_a_word_of_its_own_never_inside_another():
    """Under a secret mlcache:job every value is secret, counts included: `4` is hidden where it
    stands alone, not inside `SXM4` (which would garble the line and point at it); a long value is
    hidden wherever it appears, and a replacement is never matched again."""
    from mlcache.program.settings import hide_secrets  # noqa: PLC0415

    job = {"gpus": 4, "waitForCompletion": False, "env": {"TOKEN": "tok-0123456789", "SHORT": "secret", "B": "build-2024x"}}
    pulumi.runtime.set_all_config({"mlcache:job": json.dumps(job)}, ["mlcache:job"])
    try:
        line = "gpus=4 on NVIDIA-A100-SXM4-80GB (4 of 8); wait: false; url https://u:tok-0123456789@host/4x; secret"
        # A flag is no secret worth hiding: `false` stays readable in the remedies lines give.
        assert hide_secrets(line) == (
            "gpus=[secret] on NVIDIA-A100-SXM4-80GB ([secret] of 8); wait: false; url https://u:[secret]@host/4x; [secret]"
        )
        # Overlapping values: every character of both is hidden, not the first match alone.
        assert hide_secrets("id build-2024xtok-0123456789 and secretsecret") == "id [secret] and [secret]"
        pulumi.runtime.set_all_config({"mlcache:job": json.dumps(job)}, [])
        assert hide_secrets(line) == line  # nothing secret: nothing hidden
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_a_secret_that_hides_a_claims_metadata_leaves_the_namespace_output_as_the_provider_fills_it():
    """A secret under mlcache:job marks the claim's metadata secret (its placement record); the
    provider still fills in the namespace, so the offline outputs say `default`, not None."""
    run, _ = render.render("dev", [], ["job.env.WANDB_API_KEY=not-shown"])
    assert run.outputs["namespace"] == "default" and "namespace" not in run.secret_outputs
