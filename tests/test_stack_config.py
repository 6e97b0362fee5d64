"""Config layering as the Pulumi CLI does it, read offline."""

from __future__ import annotations

import json
import re

import pytest

from mlcache.cli.render import main
from mlcache.preview.stack_config import SECURE_PLACEHOLDER, StackConfigError, load_stack_config, parse_assignment, stack_names
from mlcache.program.schema import ConfigError
from tests.conftest import ROOT


def test_stacks_are_discovered():
    assert {"dev", "prod"} <= set(stack_names())


def test_project_defaults_then_stack_values():
    values = load_stack_config("dev").values
    assert values["mlcache:backend"] == "linstor"  # stack file
    assert values["mlcache:rookCeph"] == {"storageClassName": "rook-ceph-block"}  # Pulumi.yaml default
    assert len(values["mlcache:zones"]) == 10


def test_a_stack_object_replaces_the_project_default_whole():
    values = load_stack_config("dev").values
    assert values["mlcache:linstor"] == {"replicas": 1}


def test_path_overrides_write_into_the_stack_layer():
    values = load_stack_config("dev", ["cache.volumeMode=Block", "mlcache:linstor.replicas=3"]).values
    assert values["mlcache:cache"]["volumeMode"] == "Block" and values["mlcache:cache"]["size"] == "100Gi"
    assert values["mlcache:linstor"] == {"replicas": 3}


def test_an_override_of_an_unset_object_starts_from_empty_like_the_cli():
    values = load_stack_config("dev", ["rookCeph.storageClassName=rook-ceph-block-east"]).values
    assert values["mlcache:rookCeph"] == {"storageClassName": "rook-ceph-block-east"}


def test_empty_value_unsets_the_key():
    assert "protect" not in load_stack_config("prod", ["cache.protect="]).values["mlcache:cache"]
    assert load_stack_config("prod", ["zone="]).values["mlcache:zone"] == ""  # back to the project default


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("nosuch=", "invalid config key mlcache:nosuch: expected a key of this project"),
        ("cache.sise=", "invalid config key mlcache:cache.sise (did you mean mlcache:cache.size?)"),
    ],
)
def test_an_unset_of_an_unknown_key_is_refused_as_its_set_is_not_dropped(override, line):
    with pytest.raises(ConfigError) as err:
        load_stack_config("dev", [override])
    assert str(err.value).startswith(line)


def test_set_values_are_stored_as_pulumi_config_set_path_stores_them():
    assert parse_assignment("linstor.replicas=2") == ("linstor.replicas", 2)
    assert parse_assignment("cache.protect=true") == ("cache.protect", True)
    assert parse_assignment("job.gpus=1.5") == ("job.gpus", "1.5")
    assert parse_assignment("zone=ucsd") == ("zone", "ucsd")
    assert parse_assignment("zone=8") == ("zone", "8")  # a top-level value is stored as typed
    assert parse_assignment("adopt=true") == ("adopt", "true")


def test_engine_config_is_strings_with_json_for_structures():
    config = load_stack_config("dev", ["cache.protect=true"]).engine_config()
    assert config["mlcache:backend"] == "linstor"
    assert json.loads(config["mlcache:cache"])["protect"] is True


def test_secure_values_become_secret_placeholders(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text(
        "name: mlcache\nruntime: python\nconfig:\n  backend:\n    default: linstor\n  hfToken:\n    secret: true\n"
    )
    (tmp_path / "Pulumi.ci.yaml").write_text("config:\n  mlcache:hfToken:\n    secure: v1:AAAA/encrypted==\n")
    config = load_stack_config("ci", project_dir=tmp_path)
    assert config.values["mlcache:hfToken"] == SECURE_PLACEHOLDER
    assert config.secret_keys == {"mlcache:hfToken"}


def test_secrets_are_taken_verbatim_and_marked_secret():
    config = load_stack_config("dev", secrets=["hfToken=0123"])
    assert config.values["mlcache:hfToken"] == "0123"
    assert "mlcache:hfToken" in config.secret_keys


def test_unknown_stacks_are_refused():
    with pytest.raises(FileNotFoundError, match="stacks here: dev, prod"):
        load_stack_config("staging")


def test_other_namespaces_pass_through():
    assert load_stack_config("dev", ["kubernetes:context=gpu-cluster"]).values["kubernetes:context"] == "gpu-cluster"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("job.env.UMASK=0022", "0022"),
        ("job.env.VERSION=1.10", "1.10"),
        ("job.gpus=0x10", "0x10"),
        ("job.runId=2026-11-28", "2026-11-28"),
        ("job.cpu=0.5", "0.5"),
        ("cache.protect=yes", "yes"),
        ("cache.protect=true", True),
        ("job.args=[--x, 010]", ["--x", 8]),
        ("job.priorityClassName=~", "~"),
        ("job.gpus=8", 8),
        ("job.gpus=-3", -3),
        ("job.env.N=08", "08"),
        ("job.gpus=+5", 5),  # Go's ParseInt takes a sign
        ("job.gpus=-05", -5),
        ("job.gpus=1_0", "1_0"),
    ],
)
def test_set_values_are_coerced_only_as_the_cli_coerces_them(text, value):
    assert parse_assignment(text)[1] == value


def _stack(tmp_path, body: str, overrides=()):
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.t.yaml").write_text("config:\n" + body)
    return load_stack_config("t", overrides, project_dir=tmp_path)


def test_stack_files_are_read_as_the_cli_reads_them(tmp_path):
    body = "  mlcache:job:\n    gpus: 0x10\n    runId: 2026-11-28\n    env: {A: 0022, B: 1.10, C: 4.0, D: '0022', E: 1_000}\n"
    job = _stack(tmp_path, body).values["mlcache:job"]
    assert job == {
        "gpus": 16,
        "runId": "2026-11-28 00:00:00 +0000 UTC",
        "env": {"A": 18, "B": 1.1, "C": 4, "D": "0022", "E": 1000},
    }


def test_top_level_values_reach_the_program_as_the_cli_writes_them(tmp_path):
    config = _stack(tmp_path, "  mlcache:zone: 0022\n  mlcache:namespace:\n  mlcache:backend: 1e-7\n").engine_config()
    assert (config["mlcache:zone"], config["mlcache:namespace"], config["mlcache:backend"]) == ("18", "", "1e-7")


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ("  mlcache:zones: [ucsd, 3]\n", "'zones' must be of type 'array<string>'"),
        ("  mlcache:adopt: yes\n", "'adopt' must be of type 'boolean'"),
        ("  mlcache:zone: [ucsd]\n", "'zone' must be of type 'string'"),
    ],
)
def test_a_value_of_another_type_than_pulumi_yaml_declares_is_refused_as_the_cli_refuses_it(tmp_path, body, wanted):
    with pytest.raises(StackConfigError, match=re.escape(f"Stack 't' with configuration key {wanted}")):
        _stack(tmp_path, body)


def test_a_value_json_cannot_carry_is_refused(tmp_path):
    with pytest.raises(StackConfigError, match="unsupported value"):
        _stack(tmp_path, "  mlcache:job: {gpus: .inf}\n")


def test_declared_types_are_checked_in_the_clis_order(tmp_path):
    with pytest.raises(StackConfigError, match=r"^validating stack config: Stack 't' with configuration key 'adopt' must be"):
        _stack(tmp_path, "  mlcache:zones: [ucsd, 1]\n  mlcache:adopt: yes\n")


def test_declared_types_that_fit_pass(tmp_path):
    values = _stack(tmp_path, "  mlcache:adopt: true\n  mlcache:zones: [ucsd, sdsu]\n  mlcache:zone: ucsd\n").values
    assert (values["mlcache:adopt"], values["mlcache:zones"]) == ("true", ["ucsd", "sdsu"])


def test_a_whole_number_whose_text_the_cli_does_not_keep_is_warned_about_where_text_matters(tmp_path, capsys):
    """`UMASK: 0022` is the number 18 to the Pulumi CLI, so the variable is "18" on both paths:
    only a reader of the file can say so. Quoted text, and numbers the CLI writes back as typed, are
    not warned about, nor are number settings."""
    for name in ("Pulumi.yaml", "__main__.py"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "Pulumi.ci.yaml").write_text(
        "config:\n  mlcache:job:\n    gpus: 04\n    env:\n      UMASK: 0022\n      MASK: '0022'\n      THREADS: 8\n"
        "      BIG: 1_000\n    args: [--x, 0x10]\n"
    )
    config = load_stack_config("ci", project_dir=tmp_path)
    assert config.warnings == [
        "Pulumi.ci.yaml line 5: mlcache:job.env.UMASK is written 0022, which the Pulumi CLI reads as the number 18: "
        "the value is \"18\"; quote it ('0022') to keep the text",
        "Pulumi.ci.yaml line 8: mlcache:job.env.BIG is written 1_000, which the Pulumi CLI reads as the number 1000: "
        "the value is \"1000\"; quote it ('1_000') to keep the text",
        "Pulumi.ci.yaml line 9: mlcache:job.args[1] is written 0x10, which the Pulumi CLI reads as the number 16: "
        "the value is \"16\"; quote it ('0x10') to keep the text",
    ]
    # Overrides leave the file's warnings as they are.
    assert load_stack_config("ci", ["job.gpus=2"], project_dir=tmp_path).warnings == config.warnings
    # A secret under mlcache:job makes its every value secret to the engine: the key is named, not the value.
    (hidden,) = load_stack_config("ci", ["job.args=[--x]"], ["job.env.TOKEN=t0k3n"], project_dir=tmp_path).warnings[:1]
    assert hidden.startswith("Pulumi.ci.yaml line 5: mlcache:job.env.UMASK is written as a number the Pulumi CLI reads")
    assert "0022" not in hidden and "18" not in hidden
    # The render prints it with the program's warnings (and mlcache diff shows it as new).
    assert main(["--stack", "ci", "--project", str(tmp_path), "--summary"]) == 0
    assert "warning: Pulumi.ci.yaml line 5: mlcache:job.env.UMASK is written 0022" in capsys.readouterr().err
