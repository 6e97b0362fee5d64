"""Hostile input (issue 12 §1, §4): every tool answers anything with a documented exit status and
one line on stderr, never a traceback, and nothing on stdout unless it succeeded."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcache.bench import storage
from mlcache.cli import bench, diff, heal, render, snapshots, validate, verify
from mlcache.cli import contract as cli
from mlcache.preview import diff as diff_library
from mlcache.preview.mock_engine import run_program
from mlcache.preview.stack_config import StackConfigError, load_stack_config
from mlcache.program.schema import ConfigError
from tests.conftest import ROOT


def _call(capsys, main, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, out: str, err: str, *words: str, status: int = cli.USAGE) -> None:
    assert code == status, err
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err


# Each crashed with a traceback before; now each is one line naming what was wrong.
CONFIG_INPUTS = [
    ("--config", "cache.size.x=1", "cannot take .x of a single value"),
    ("--config", "cache.size[0]=1", "cannot take [0] of a single value"),
    ("--config", "zones[5]=x", "index 5 is past the end"),
    ("--config", "job.command[7]=x", "index 7 is past the end"),
    ("--config", "job.tolerations[1].key=x", "index 1 is past the end"),
    ("--secret", "hfToken[1]=x", "index 1 is past the end"),
    ("--config", "mlcache:=x", "expected [NAMESPACE:]NAME"),
    ("--config", "cache=[unclosed", "the value of cache: not valid YAML"),
    # A value in [...] or {...} is read as YAML, as a stack file would be.
    ("--config", 'cache.prefetch=["unterminated]', "not valid YAML"),
    ("--config", "cache.prefetch=[*alias]", "undefined alias"),
    ("--config", "cache.prefetch=[!!python/object/apply:os.system [x]]", "could not determine a constructor"),
    ("--config", "cache.prefetch=[!!binary aGVsbG8=]", "binary is not a config value"),
    ("--config", "cache.prefetch=[!!set {a}]", "set is not a config value"),
    ("--config", "cache.prefetch=[!!int x]", "cannot decode 'x' as a !!int"),
    ("--config", "job.env={[a]: x}", "a map key must be text"),
    ("--config", "job.env={A: 1, A: 2}", "appears twice"),
    ("--config", "job.env={X: \x00}", "unacceptable character"),
    # Anything else is text, as `pulumi config set --path` stores it; the setting's rule refuses it.
    ("--config", 'cache.name="unterminated', "mlcache:cache.name"),
    ("--config", "job.env.X=\x00", "no NUL character"),
    ("--config", "job.args=" + "[" * 40 + "]" * 40, "nested more than"),
    ("--config", "cache.size=1e999999999", "mlcache:cache.size"),
    ("--config", "[0]=x", "starts with a key name"),
    ("--stack", "../Pulumi", "invalid stack name"),
]


@pytest.mark.parametrize(("option", "value", "words"), CONFIG_INPUTS, ids=[f"{o} {v[:30]!r}" for o, v, _ in CONFIG_INPUTS])
def test_malformed_config_is_one_line(capsys, option, value, words):
    argv = ["--stack", "dev", option, value] if option != "--stack" else [option, value]
    assert_refused(*_call(capsys, render.main, *argv), words)


def test_the_readme_run_id_renders_as_typed(capsys):
    code, out, _ = _call(capsys, render.main, "--stack", "dev", "--config", "job.runId=2026-11-28")
    assert code == 0
    job = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Job")
    assert job["metadata"]["name"] == "sft-qwen3vl-fire-4gpu-2026-11-28"


STACK_FILES = {
    "a list": ("- a\n", "expected a mapping with a `config:` key"),
    "config not a mapping": ("config: [1, 2]\n", "`config:` must be a mapping"),
    "bad YAML": ("config: [unclosed\n", "not valid YAML"),
    "a tab": ("config:\n\tx: 1\n", "not valid YAML"),
    "binary": ("config:\n  mlcache:zone: !!binary aGVsbG8=\n", "binary is not a config value"),
    "a list as a key": ("config:\n  ? [a]\n  : x\n", "a map key must be text"),
    "a key twice": ("config:\n  mlcache:zone: a\n  mlcache:zone: b\n", "appears twice"),
    "no namespace": ("config:\n  zone: ucsd\n", "is not NAMESPACE:NAME"),
    "a recursive alias": ("config: &x\n  mlcache:job: *x\n", "recursive"),
    "an alias bomb": (
        "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nconfig:\n  mlcache:zones: *e\n",
        "more than 100000 values",
    ),
}


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    return tmp_path


@pytest.mark.parametrize("case", STACK_FILES)
def test_malformed_stack_files_name_the_file_and_the_problem(project, case):
    text, words = STACK_FILES[case]
    (project / "Pulumi.x.yaml").write_text(text)
    with pytest.raises(StackConfigError) as raised:
        load_stack_config("x", project_dir=project)
    assert str(raised.value).startswith("Pulumi.x.yaml: ") and words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_stack_file_that_is_a_symlink_to_a_binary(project):
    (project / "Pulumi.x.yaml").symlink_to(sys.executable)
    with pytest.raises(StackConfigError, match=r"Pulumi.x.yaml: not a text file"):
        load_stack_config("x", project_dir=project)


def test_a_stack_file_that_is_a_device_or_a_fifo_is_named_as_such(project):
    (project / "Pulumi.x.yaml").symlink_to("/dev/zero")
    with pytest.raises(StackConfigError, match=r"^Pulumi.x.yaml: not a regular file$"):
        load_stack_config("x", project_dir=project)


def test_text_that_is_not_unicode_is_refused_and_a_secret_one_not_shown(project):
    # A YAML escape of a lone surrogate, and command-line bytes that are not UTF-8 (surrogateescape).
    (project / "Pulumi.x.yaml").write_text('config:\n  mlcache:job:\n    env: {A: "\\ud800"}\n')
    with pytest.raises(StackConfigError, match=r"^invalid config mlcache:job: not valid Unicode text"):
        load_stack_config("x", project_dir=project)
    (project / "Pulumi.x.yaml").write_text("config: {}\n")
    with pytest.raises(StackConfigError) as raised:
        load_stack_config("x", secrets=["hfToken=tok\udcffen"], project_dir=project)
    assert "not shown" in str(raised.value) and "tok" not in str(raised.value)


def test_an_unquoted_date_in_a_stack_file_becomes_the_clis_time_text(project):
    (project / "Pulumi.x.yaml").write_text("config:\n  mlcache:job:\n    runId: 2026-11-28\n")
    assert load_stack_config("x", project_dir=project).values["mlcache:job"] == {"runId": "2026-11-28 00:00:00 +0000 UTC"}


SECURE = "{secure: v1:AAAAbm90LXJlYWRhYmxlLW9mZmxpbmU=}"


@pytest.mark.parametrize(
    ("config", "key", "given", "option"),
    [
        (f"mlcache:job: {{image: {SECURE}}}", "job.image", "job.image=registry.example/org/img:1.0", "--secret job.image=VALUE"),
        (f"mlcache:zone: {SECURE}", "zone", "zone=ucsd", "--secret zone=VALUE"),
        (f"mlcache:backend: {SECURE}", "backend", "backend=linstor", "--secret backend=VALUE"),
        (f"mlcache:job: {{gpus: {SECURE}}}", "job.gpus", "job.gpus=4", "--secret job.gpus=VALUE"),
        (f"mlcache:cache: {{size: {SECURE}}}", "cache.size", "cache.size=1Ti", "--secret cache.size=VALUE"),
    ],
)
def test_a_secure_value_of_a_checked_setting_is_named_as_unreadable_offline(project, config, key, given, option):
    (project / "Pulumi.x.yaml").write_text(f"config:\n  {config}\n")
    config_read = load_stack_config("x", project_dir=project)
    with pytest.raises(ConfigError) as raised:
        run_program(config_read.engine_config(), sorted(config_read.secret_keys), "x")
    assert str(raised.value) == (
        f"mlcache:{key} is a `secure:` value, which the offline tools cannot read: give its value with {option} to render"
        " (mlcache access, verify and heal take it as --config)"
    )
    given_read = load_stack_config("x", secrets=[given], project_dir=project)
    assert run_program(given_read.engine_config(), sorted(given_read.secret_keys), "x").registrations


def test_a_wholly_secure_object_is_given_as_yaml_with_config(project):
    (project / "Pulumi.x.yaml").write_text(f"config:\n  mlcache:cache: {SECURE}\n")
    config_read = load_stack_config("x", project_dir=project)
    with pytest.raises(ConfigError, match=r"^mlcache:cache is a `secure:` value, .* with --config 'cache=\{\.\.\.\}' to render$"):
        run_program(config_read.engine_config(), sorted(config_read.secret_keys), "x")
    given_read = load_stack_config("x", ["cache={size: 1Ti}"], project_dir=project)
    assert "mlcache:cache" in given_read.secret_keys
    assert run_program(given_read.engine_config(), sorted(given_read.secret_keys), "x").registrations


# --- render --out / --summary / --json


def test_out_replaces_an_earlier_render_and_keeps_other_files(capsys, tmp_path):
    bench_on = ("--config", "benchmark.enabled=true", "--config", "benchmark.fioImage=example.org/fio:3.36")
    assert _call(capsys, render.main, "--stack", "dev", "--out", str(tmp_path), *bench_on)[0] == 0
    assert any("storage-bench" in p.name for p in tmp_path.iterdir())
    (tmp_path / "README.txt").write_text("mine")
    assert _call(capsys, render.main, "--stack", "dev", "--out", str(tmp_path))[0] == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any("storage-bench" in name for name in names) and "README.txt" in names
    assert len(names) == 7  # five objects, README.txt, the render record


def _dev_out(capsys, directory):
    return _call(capsys, render.main, "--stack", "dev", "--out", str(directory))


def test_out_never_writes_through_a_link_planted_under_one_of_its_names(capsys, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "04-job-sft-qwen3vl-fire-4gpu.yaml").symlink_to(victim)
    assert_refused(*_dev_out(capsys, out), "04-job-sft-qwen3vl-fire-4gpu.yaml exists and was not written by an earlier render")
    assert victim.read_text() == "precious" and [p.name for p in out.iterdir()] == ["04-job-sft-qwen3vl-fire-4gpu.yaml"]


def test_out_touches_only_files_an_earlier_render_wrote_unchanged(capsys, tmp_path):
    assert _dev_out(capsys, tmp_path)[0] == 0
    job = tmp_path / "04-job-sft-qwen3vl-fire-4gpu.yaml"
    job.write_text(job.read_text() + "# my edit\n")  # edited since: no longer the render's
    assert_refused(*_dev_out(capsys, tmp_path), "was changed since")
    assert job.read_text().endswith("# my edit\n")
    job.unlink()
    # A link planted after a render, under a name the record holds, is not the render's file either.
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("precious")
    job.symlink_to(victim)
    assert_refused(*_dev_out(capsys, tmp_path), "not written by an earlier render")
    assert victim.read_text() == "precious"


def test_a_render_that_drops_an_object_removes_only_its_own_unchanged_file(capsys, tmp_path):
    bench_on = ("--config", "benchmark.enabled=true", "--config", "benchmark.fioImage=example.org/fio:3.36")
    assert _call(capsys, render.main, "--stack", "dev", "--out", str(tmp_path), *bench_on)[0] == 0
    (bench,) = [p for p in tmp_path.iterdir() if "storage-bench" in p.name]
    bench.write_text("kind: Job # kept by hand\n")
    assert _dev_out(capsys, tmp_path)[0] == 0
    assert bench.read_text() == "kind: Job # kept by hand\n"  # changed since: never removed


@pytest.mark.parametrize(
    ("out", "words"),
    [("", "needs a directory"), ("/proc/version", "not a directory"), ("/proc/no/such", "cannot write there")],
)
def test_out_that_cannot_be_a_directory_is_refused(capsys, out, words):
    assert_refused(*_call(capsys, render.main, "--stack", "dev", "--out", out), words)


def test_summary_with_out_writes_the_files_and_prints_the_summary(capsys, tmp_path):
    code, out, _ = _call(capsys, render.main, "--stack", "prod", "--out", str(tmp_path), "--summary")
    assert code == 0 and out.startswith("resources:") and len(list(tmp_path.glob("*.yaml"))) == 5
    code, out, _ = _call(capsys, render.main, "--stack", "prod", "--out", str(tmp_path), "--json")
    assert code == 0 and len(json.loads(out)["objects"]) == 5


def test_summary_and_json_together_are_refused(capsys):
    assert_refused(*_call(capsys, render.main, "--stack", "dev", "--summary", "--json"), "not allowed with argument")


def _tool(*argv, stdout=subprocess.PIPE, env=None):
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, check=False
    )


class _FullDevice(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_stdout_that_cannot_be_written_is_one_line():
    err = io.StringIO()
    with redirect_stdout(_FullDevice()), redirect_stderr(err):
        assert render.main(["--stack", "dev"]) == cli.USAGE
    assert err.getvalue() == "error: cannot write the output to stdout: No space left on device\n"


def test_no_event_loop_noise_after_a_render():
    # -W default shows the ResourceWarning an unclosed loop gives when the interpreter finalises it.
    result = _tool("-W", "default", "-m", "mlcache", "render", "--stack", "prod", "--summary")
    assert result.returncode == 0 and result.stderr == ""


def test_a_bug_is_one_line_without_its_message():
    @cli.entry_point
    def broken(argv):
        print("half an output")
        raise TypeError("hf_value_that_must_not_show")

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert broken([]) == cli.INTERNAL
    assert out.getvalue() == ""
    assert err.getvalue().startswith("error: internal error (TypeError at test_hostile_input.py:")
    assert "hf_value" not in err.getvalue() and err.getvalue().count("\n") == 1


# --- the other tools


def test_validate_refuses_an_unknown_kubernetes_version(capsys):
    code, out, err = _call(capsys, validate.main, "--stack", "dev", "--kubernetes-version", "abc")
    assert_refused(code, out, err, "'abc' is not a Kubernetes minor")


def test_snapshots_takes_no_arguments(capsys):
    assert_refused(*_call(capsys, snapshots.main, "--bogus"), "unrecognized arguments")


def test_a_flag_is_taken_only_as_spelled_and_a_mistyped_one_is_named(capsys):
    """A prefix of --apply is not --apply (heal deletes claims), and a mistyped flag is named, with
    the one meant, before the missing --stack it hides."""
    assert_refused(*_call(capsys, heal.main, "--stack", "dev", "--app"), "unrecognized arguments: --app (did you mean --apply?)")
    assert_refused(*_call(capsys, verify.main, "--stak", "dev"), "unrecognized arguments: --stak (did you mean --stack?)")
    # A subcommand's own flags: named with the one meant, before its missing --dir.
    code, out, err = _call(capsys, bench.main, "copy", "--stremas", "4")
    assert_refused(code, out, err, "mlcache bench copy: unrecognized arguments: --stremas (did you mean --streams?)")


def test_diff_base_is_a_revision_never_an_option(capsys, tmp_path):
    target = tmp_path / "truncated"
    assert_refused(*_call(capsys, diff.main, f"--base=--output={target}"), "expected a git revision")
    assert not target.exists()


def test_diff_of_a_stack_that_exists_nowhere_is_an_error(capsys):
    assert_refused(*_call(capsys, diff.main, "--base", "HEAD", "--stack", "prdo", "--fail-on-data-loss"), "no Pulumi.prdo.yaml")


def test_diff_picks_the_error_line_among_warnings():
    assert diff_library.error_line("warning: a\nerror: invalid config mlcache:zone\n") == "invalid config mlcache:zone"


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    def write(text: str) -> None:
        path = tmp_path / "kubeconfig"
        path.write_text(text)
        # The commands connect as the stack's provider does, reading $KUBECONFIG when they run.
        monkeypatch.setenv("KUBECONFIG", str(path))

    return write


UNREACHABLE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: here, context: {cluster: c, user: u}}]
current-context: here
"""


def test_verify_checks_the_config_before_the_cluster(capsys, kubeconfig):
    kubeconfig("garbage: [")
    assert_refused(*_call(capsys, verify.main, "--stack", "dev", "--config", "zone=mars"), "mlcache:zone")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("garbage: [", "no usable kubeconfig"),
        ("contexts: 5\n", "no usable kubeconfig"),
        # The server named, and the cause in its own words (not urllib3's retry wrapper and object address).
        (
            UNREACHABLE_KUBECONFIG,
            "the API server at https://127.0.0.1:1 cannot be reached: Failed to establish a new connection: ",
        ),
    ],
    ids=["unparsable", "wrong shape", "unreachable server"],
)
@pytest.mark.parametrize("command", [verify.main, heal.main], ids=["verify", "heal"])
def test_verify_and_heal_without_a_cluster_exit_3(capsys, kubeconfig, text, words, command):
    kubeconfig(text)
    code, out, err = _call(capsys, command, "--stack", "dev")
    assert_refused(code, out, err, "cannot read the cluster", words, status=cli.UNREACHABLE)
    assert "not-a-real-token" not in err


def test_heal_apply_without_the_pulumi_cli_is_usage_before_the_cluster_is_asked(capsys, kubeconfig, monkeypatch, tmp_path):
    kubeconfig(UNREACHABLE_KUBECONFIG)
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = _call(capsys, heal.main, "--stack", "dev", "--apply")
    assert_refused(code, out, err, "the Pulumi CLI is not on PATH")


def test_verify_unknown_context_is_usage(capsys, kubeconfig):
    kubeconfig(UNREACHABLE_KUBECONFIG)
    assert_refused(*_call(capsys, verify.main, "--stack", "dev", "--context", "there"), "'there' is not in the kubeconfig")


FIO = {
    "a null job": '{"jobs": [null]}',
    "no clat_ns": '{"jobs": [{"jobname": "a", "read": {"io_bytes": 5, "bw_bytes": 1, "iops": 1}}]}',
    "jobs not a list": '{"jobs": 5}',
    "io_bytes as text": '{"jobs": [{"read": {"io_bytes": "5"}}]}',
    "zero bandwidth": '{"jobs": [{"jobname": "a", "read": {"io_bytes": 5, "bw_bytes": 0, "iops": 1, "clat_ns": {"mean": 1}}}]}',
    "deeply nested": "{" + '"a":[' * 5000 + "]" * 5000 + "}",
}


@pytest.mark.parametrize("case", FIO)
def test_bench_report_refuses_fio_json_of_the_wrong_shape(capsys, tmp_path, case):
    (tmp_path / "r.json").write_text(FIO[case])
    assert_refused(*_call(capsys, bench.main, "report", str(tmp_path / "r.json")))


@pytest.mark.parametrize(
    "argv",
    [["--readers", "0"], ["--size", "1X"], ["--count", "-1"], ["--rounds", "0"], ["--count", "x"]],
    ids=lambda a: " ".join(a),
)
def test_bench_shards_checks_its_arguments_first(capsys, tmp_path, argv):
    assert_refused(*_call(capsys, bench.main, "shards", "--dir", str(tmp_path / "s"), *argv), argv[0])
    assert not (tmp_path / "s").exists()


def test_bench_plot_to_an_unwritable_place_prints_nothing(capsys, tmp_path):
    data = ROOT / "tests" / "data" / "fio-kubectl-logs.txt"
    assert_refused(*_call(capsys, bench.main, "report", str(data), "--plot", "/proc/no/chart.png"), "cannot write the chart")


@pytest.mark.parametrize("args", [["-x"], ["a b"], ["../Pulumi"], ["dev", "prod"], ["prdo"]], ids=repr)
def test_run_refuses_anything_but_a_stack_name(args):
    result = subprocess.run([str(ROOT / "run"), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("run: ") and result.stderr.count("\n") == 1


# --- property: generated command lines and stack files


KEYS = ["zone", "zones", "cache", "cache.size", "job.env.A", "job.command", "linstor.replicas", "mlcache:job", "x:y", ""]
YAMLISH = st.text(alphabet=st.sampled_from(list("ab1-:.[]{}\"'*&!#|>%@`, \n\t\\0x=")), max_size=12)
VALUES = YAMLISH | st.text(max_size=8)
SUFFIXES = st.sampled_from(["", ".x", "[0]", "[3]", '["a"]', "..", "["])
PATHS = st.builds(lambda k, suffix: k + suffix, st.sampled_from(KEYS), SUFFIXES)
ASSIGNMENTS = st.builds(lambda key, sep, value: f"{key}{sep}{value}", PATHS, st.sampled_from(["=", "", "=="]), VALUES)
ARGUMENT = st.one_of(
    st.tuples(st.sampled_from(["--config", "--secret"]), ASSIGNMENTS),
    st.tuples(st.sampled_from(["--stack"]), st.sampled_from(["dev", "prod", "", "-", "dev/..", "x"]) | st.text(max_size=5)),
    st.tuples(st.sampled_from(["--summary", "--json", "--bogus", "-h"])),
    st.tuples(st.text(max_size=6)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ARGUMENT, max_size=4))
def test_any_render_command_line_ends_in_a_documented_status(capsys, arguments):
    argv = [part for argument in arguments for part in argument]
    code, out, err = _call(capsys, render.main, *argv)
    assert code in (cli.OK, cli.USAGE), err
    assert "Traceback" not in err
    if code != cli.OK:
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        YAMLISH,
        st.builds(
            lambda key, value: f"config:\n  {key}: {value}\n", st.sampled_from(["mlcache:zone", "mlcache:job", "a", "1"]), YAMLISH
        ),
        st.builds(lambda body: f"config:\n  mlcache:job:\n    env: {body}\n", YAMLISH),
    )
)
def test_any_stack_file_loads_or_is_refused_in_one_line(tmp_path_factory, text):
    project = tmp_path_factory.mktemp("p")
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (project / "Pulumi.g.yaml").write_text(text)
    try:
        config = load_stack_config("g", project_dir=project)
    except StackConfigError as err:
        assert "\n" not in str(err) and str(err)
    else:
        assert all(isinstance(v, str) for v in config.engine_config().values())


NOWHERE = "/proc/no/such/place"
TOOLS = {
    "validate": (validate.main, ["--stack", "--config", "--kubernetes-version", "--secret"], (cli.OK, cli.USAGE)),
    "verify": (verify.main, ["--stack", "--config", "--context"], (cli.OK, cli.USAGE, cli.UNREACHABLE)),
    "bench report": (lambda argv: bench.main(["report", *argv]), ["--plot", NOWHERE, "/dev/null"], (cli.OK, cli.USAGE)),
    "bench shards": (
        lambda argv: bench.main(["shards", "--dir", NOWHERE, *argv]),
        ["--count", "--size", "--readers", "--rounds"],  # --dir stays NOWHERE: nothing is ever written
        (cli.OK, cli.USAGE),
    ),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_any_command_line_of_the_other_tools_ends_in_a_documented_status(capsys, monkeypatch, tool):
    main, vocabulary, statuses = TOOLS[tool]
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", NOWHERE)
    words = st.sampled_from(vocabulary) | st.sampled_from(["dev", "prod", "1.33", "0", "-1", "1X", "zone=mars"]) | VALUES

    @settings(max_examples=25, deadline=None)
    @given(st.lists(words, min_size=1, max_size=5))
    def check(argv):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code in statuses, (argv, err)
        assert "Traceback" not in err
        if code != cli.OK:
            assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err

    check()


@pytest.mark.parametrize(
    ("raised", "status", "err"), [(None, 0, ""), (0, 0, ""), ("fio is not installed", 2, "error: fio is not installed\n")]
)
def test_an_exit_inside_a_tool_keeps_the_contract(raised, status, err):
    @cli.entry_point
    def exits(argv):
        print("the report")
        raise SystemExit(raised)

    out, errors = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(errors):
        assert exits([]) == status
    assert errors.getvalue() == err and out.getvalue() == ("the report\n" if status == 0 else "")


def test_a_report_that_is_a_device_a_fifo_or_huge_is_refused_at_once(capsys, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (storage.MAX_REPORT_BYTES + 1))
    for path, words in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"), (str(huge), "larger than")):
        assert_refused(*_call(capsys, bench.main, "report", path), path, words)


@pytest.mark.parametrize("command", [verify.main, heal.main], ids=["verify", "heal"])
def test_verify_and_heal_connect_to_the_stacks_own_context_not_the_current_one(capsys, kubeconfig, monkeypatch, command):
    """A stack pinned to a context (kubernetes:context) is checked, and healed, in that cluster:
    the kubeconfig's current context may be another one."""
    from mlcache.preview import render as render_module  # noqa: PLC0415

    kubeconfig(UNREACHABLE_KUBECONFIG)
    stack_render = render_module.render_or_refuse  # as if the stack file set kubernetes:context
    monkeypatch.setattr(
        render_module,
        "render_or_refuse",
        lambda stack, config, secrets: stack_render(stack, [*config, "kubernetes:context=elsewhere"], secrets),
    )
    code, out, err = _call(capsys, command, "--stack", "dev")
    assert_refused(code, out, err, "cannot read the cluster", "context elsewhere", status=cli.UNREACHABLE)
    code, out, err = _call(capsys, command, "--stack", "dev", "--context", "here")
    assert_refused(code, out, err, "cannot read the cluster", "refused", status=cli.UNREACHABLE)  # --context wins


def test_heal_apply_refuses_when_the_stacks_cluster_is_a_secret_it_cannot_read(capsys, kubeconfig, monkeypatch):
    """heal --apply deletes in the cluster it reads, then runs `pulumi up` against the stack's: with
    a secret kubernetes:kubeconfig the two may differ, so it needs --context."""
    from mlcache.preview import render as render_module  # noqa: PLC0415

    kubeconfig(UNREACHABLE_KUBECONFIG)
    stack_render = render_module.render_or_refuse

    def with_secret_kubeconfig(stack, config, secrets):
        run, stack_config = stack_render(stack, config, secrets)
        return run, dataclasses.replace(stack_config, secret_keys=stack_config.secret_keys | {"kubernetes:kubeconfig"})

    monkeypatch.setattr(render_module, "render_or_refuse", with_secret_kubeconfig)
    code, out, err = _call(capsys, heal.main, "--stack", "dev", "--apply")
    assert_refused(code, out, err, "--apply: kubernetes:kubeconfig is a secret", "give --context")


def test_heal_apply_with_another_context_than_the_stack_deploys_to_is_refused(capsys, kubeconfig):
    """Heal deletes where it reads and `pulumi up` re-creates where the stack deploys: one cluster."""
    two = UNREACHABLE_KUBECONFIG.replace(
        "contexts: [{name: here, context: {cluster: c, user: u}}]",
        "contexts: [{name: here, context: {cluster: c, user: u}}, {name: there, context: {cluster: c, user: u}}]",
    )
    assert two != UNREACHABLE_KUBECONFIG
    kubeconfig(two)
    code, out, err = _call(capsys, heal.main, "--stack", "dev", "--apply", "--context", "there")
    assert_refused(code, out, err, "--apply --context 'there'", "deploys with context 'here'")


def test_heal_apply_context_check_reads_the_current_context_as_pulumi_does_and_refuses_a_cluster_override(
    capsys, kubeconfig, monkeypatch, tmp_path
):
    """KUBECONFIG=a:b: clientcmd takes the current context of the first file that sets one (the
    Python client's merge keeps the last); a stack's kubernetes:cluster replaces the context's."""
    from mlcache.cluster.bound_cache import ProviderSettings, deployed_context  # noqa: PLC0415
    from mlcache.preview import render as render_module  # noqa: PLC0415

    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("apiVersion: v1\nkind: Config\ncurrent-context: here\n")
    second.write_text("apiVersion: v1\nkind: Config\ncurrent-context: there\n")
    assert deployed_context(ProviderSettings(), {"KUBECONFIG": f"{first}:{second}"}) == "here"
    assert deployed_context(ProviderSettings(context="pinned"), {"KUBECONFIG": str(first)}) == "pinned"
    kubeconfig(UNREACHABLE_KUBECONFIG)
    stack_render = render_module.render_or_refuse
    monkeypatch.setattr(
        render_module,
        "render_or_refuse",
        lambda stack, config, secrets: stack_render(stack, [*config, "kubernetes:cluster=other"], secrets),
    )
    code, out, err = _call(capsys, heal.main, "--stack", "dev", "--apply", "--context", "here")
    assert_refused(code, out, err, "sets kubernetes:cluster 'other'", "drop --context")
