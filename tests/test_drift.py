"""mlcache drift: the objects a `pulumi preview --refresh --json` changes, named in the summary."""

from __future__ import annotations

import json

from mlcache.cli.drift import main as drift_main
from mlcache.cluster.drift import drifted, guard_notes, summary
from tests.conftest import ROOT

PVC_URN = "urn:pulumi:prod::mlcache::mlcache:index:CacheVolume$kubernetes:core/v1:PersistentVolumeClaim::cache-pvc"
JOB_URN = "urn:pulumi:prod::mlcache::mlcache:index:TrainingJob$kubernetes:batch/v1:Job::training-job"


def test_changed_steps_are_named_with_their_fields():
    preview = {
        "steps": [
            {"op": "same", "urn": JOB_URN},
            {
                "op": "update",
                "urn": PVC_URN,
                "newState": {"inputs": {"metadata": {"name": "ms-swift-cache-pvc"}}},
                "detailedDiff": {"metadata.labels.app.kubernetes.io/part-of": {"kind": "update"}},
            },
        ]
    }
    (drift,) = drifted(preview)
    assert drift.label == "PersistentVolumeClaim/ms-swift-cache-pvc" and drift.op == "update"
    text = summary("prod", [drift])
    assert "DRIFT in 1 object" in text and "PersistentVolumeClaim/ms-swift-cache-pvc" in text and "part-of" in text
    assert "`PersistentVolumeClaim/ms-swift-cache-pvc` (update)" in summary("prod", [drift], markdown=True)


def test_a_moves_next_step_is_said_with_the_guards_note_not_only_as_an_edit_outside_pulumi():
    note = "bound-cache guard: move: the copy into ml-training/c-g1 is verified: training switches to it; the copy's objects go"
    bound = "bound-cache guard: claim ml-training/c-g1 is bound to node gpu-sdsu-1 (zone sdsu)"
    preview = {
        "steps": [{"op": "replace", "urn": JOB_URN, "newState": {"inputs": {"metadata": {"name": "run"}}}}],
        "diagnostics": [
            {"urn": JOB_URN, "message": "an unrelated warning\n", "severity": "warning"},
            {"message": note + "\n", "severity": "info"},
            {"message": bound + "\n", "severity": "info"},
        ],
    }
    notes = guard_notes(preview)
    assert notes == [note]  # the guard says where the claim is bound on every preview: not a move's step
    assert guard_notes({"diagnostics": [{"message": bound, "severity": "info"}]}) == []
    text = summary("prod", drifted(preview), notes=notes)
    assert f"  {note}" in text and "is the stack's own next step" in text and "`mlcache verify --stack prod`" in text
    assert "Any other object listed was edited outside Pulumi" in text
    assert "Someone edited these objects" in summary("prod", drifted(preview))


def test_no_changed_steps_is_no_drift():
    assert drifted({"steps": [{"op": "same", "urn": JOB_URN}]}) == []
    assert summary("dev", []) == "stack dev: no drift (the live cluster matches the stack)\n"


def _drift(capsys, *argv):
    code = drift_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _fake_pulumi(directory, script: str) -> None:
    (directory / "Pulumi.yaml").write_text("name: mlcache\nruntime: python\n")
    (directory / "Pulumi.prod.yaml").write_text("config: {}\n")  # the project directory's stack
    pulumi = directory / "pulumi"
    pulumi.write_text("#!/bin/sh\n" + script)
    pulumi.chmod(0o755)


def test_a_missing_project_directory_or_cli_is_usage_not_drift(tmp_path, capsys, monkeypatch):
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path / "gone"))
    assert (code, out) == (2, "") and "is not a Pulumi project directory" in err and err.count("\n") == 1
    code, out, err = _drift(capsys, "--stack", "prdo", "--cwd", str(ROOT))
    assert (code, out, err) == (2, "", "error: no stack file Pulumi.prdo.yaml; stacks here: dev, prod\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no pulumi here
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(ROOT))
    assert (code, out) == (2, "") and "the Pulumi CLI is not on PATH" in err and "Traceback" not in err


def test_a_directory_without_pulumi_yaml_is_named_as_not_a_project_not_as_missing_stacks(tmp_path, capsys, monkeypatch):
    (tmp_path / "Pulumi.prod.yaml").write_text("config: {}\n")  # a stack file alone is no project
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == (
        f"error: mlcache drift: argument --cwd: {str(tmp_path)!r} is not a Pulumi project directory "
        "(no Pulumi.yaml in it) (see --help)\n"
    )
    monkeypatch.chdir(tmp_path)  # the default, here
    code, out, err = _drift(capsys, "--stack", "dev")
    assert (code, out) == (2, "") and "'.' is not a Pulumi project directory" in err


def test_a_preview_that_fails_is_could_not_check_and_a_crash_is_not_drift(tmp_path, capsys, monkeypatch):
    _fake_pulumi(tmp_path, 'echo "error: failed to read the cluster: connection refused" >&2; exit 255\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
    assert (code, out) == (3, "") and err.endswith("could not run: failed to read the cluster: connection refused\n")
    # The reason is the preview's error diagnostic, not the last line printed (a plugin's warning on
    # stderr, the --json document's closing brace on stdout).
    failed = {"diagnostics": [{"severity": "warning", "message": "w"}, {"severity": "error", "message": "unreachable\ncluster"}]}
    warned = "echo 'warning: using pulumi-language-python from $PATH' >&2; "
    printed = f"cat <<'JSON'\n{json.dumps(failed, indent=2)}\nJSON\nexit 255\n"  # sh's echo would read the \\n
    for script in (warned + printed, printed):
        _fake_pulumi(tmp_path, script)
        code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
        assert (code, out) == (3, "") and err.endswith("the drift check could not run: unreachable cluster\n"), err
    _fake_pulumi(tmp_path, 'echo \'{"steps": [{"op": "update"}]}\'; exit 1\n')  # a step without its urn: a bug here
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
    assert (code, out) == (70, "") and "internal error" in err


def test_a_stack_the_backend_does_not_hold_is_usage_not_an_unreadable_cluster(tmp_path, capsys, monkeypatch):
    _fake_pulumi(tmp_path, "echo \"error: no stack named 'prod' found\" >&2; exit 255\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    code, out, err = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
    assert (code, out) == (2, "") and err.endswith(
        "error: stack prod is not in the state backend Pulumi is logged in to (no stack named 'prod' found): nothing to check\n"
    )


def test_drift_found_through_the_cli_is_exit_1_with_the_objects_on_stdout(tmp_path, capsys, monkeypatch):
    step = {"op": "update", "urn": PVC_URN, "detailedDiff": {"metadata.labels.x": {}}}
    _fake_pulumi(tmp_path, f"echo '{json.dumps({'steps': [step]})}'; exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    code, out, _ = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path))
    assert code == 1 and "DRIFT in 1 object" in out and "metadata.labels.x" in out


def test_drift_as_json_names_each_object_and_its_fields(tmp_path, capsys, monkeypatch):
    step = {"op": "update", "urn": PVC_URN, "detailedDiff": {"metadata.labels.x": {}}}
    _fake_pulumi(tmp_path, f"echo '{json.dumps({'steps': [step]})}'; exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    code, out, _ = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path), "--json")
    document = json.loads(out)
    assert code == 1 and document["stack"] == "prod"
    assert document["drift"] == [
        {
            "op": "update",
            "type": "kubernetes:core/v1:PersistentVolumeClaim",
            "name": "cache-pvc",
            "fields": ["metadata.labels.x"],
            "object": "PersistentVolumeClaim/cache-pvc",
        }
    ]
    _fake_pulumi(tmp_path, "echo '{\"steps\": []}'; exit 0\n")
    code, out, _ = _drift(capsys, "--stack", "prod", "--cwd", str(tmp_path), "--json")
    assert (code, json.loads(out)) == (0, {"stack": "prod", "drift": [], "guardNotes": []})
