"""The one `mlcache` command (tools/main.py): its table of commands, each command's --help, the
exit contract for a bad command, the console script installed by scripts/setup, the deprecated
`python -m tools.<module>` alias, and every `mlcache ...` command shown in the README and docs."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlcache.cli import main as command

ROOT = Path(__file__).resolve().parents[1]
MLCACHE = ROOT / "venv" / "bin" / "mlcache"


def run_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = command.main(args)
    except SystemExit as exit_:  # a command not yet wrapped by mlcache.cli.contract.entry_point
        code = exit_.code if isinstance(exit_.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def test_the_installed_command_lists_every_command_from_any_directory(tmp_path):
    result = subprocess.run([str(MLCACHE), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^  (\S+)  ", result.stdout, re.MULTILINE)
    assert listed == list(command.COMMANDS)
    assert re.search(r"^  render +Render a stack offline", result.stdout, re.MULTILINE)


def test_the_installed_command_runs_a_command_outside_the_checkout(tmp_path):
    args = [str(MLCACHE), "render", "--stack", "dev", "--summary"]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "PersistentVolumeClaim/ms-swift-cache-pvc" in result.stdout


@pytest.mark.parametrize("name", list(command.COMMANDS))
def test_every_command_has_help_under_its_mlcache_name(name, capsys):
    code, out, err = run_in_process([name, "--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"usage: mlcache {name} "), out[:200]


@pytest.mark.parametrize("args", [["nope"], ["--stack", "dev"], ["Render"]])
def test_an_unknown_command_is_one_line_naming_it_and_the_commands(args, capsys):
    code, out, err = run_in_process(args, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert repr(args[0]) in err and "render, diff, validate" in err


def test_no_command_is_one_line_and_exits_2(capsys):
    code, out, err = run_in_process([], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("error: mlcache: a command is required (commands: render, diff, validate")
    assert err.endswith("; see mlcache --help)\n") and err.count("\n") == 1


def test_the_deprecated_module_alias_takes_the_same_flags():
    args = [sys.executable, "-m", "tools.render", "--stack", "dev", "--summary"]
    alias = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert alias.returncode == 0, alias.stderr
    assert "PersistentVolumeClaim/ms-swift-cache-pvc" in alias.stdout
    assert alias.stderr.splitlines()[0] == "note: `python -m tools.render` is deprecated; use `mlcache render` (same flags)"


class Parsed(BaseException):
    """Raised right after a command's arguments parsed: the command itself does not run."""


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, arguments, shown failing) for every `mlcache ...` line in a fenced block of the
    README and docs, up to a pipe or redirection; a synopsis line ([OPTIONS], ...) is not a
    command. A line the docs follow with an `error:` line may be refused by the parser."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = page.read_text(encoding="utf-8").splitlines()
        fenced = False
        for number, line in enumerate(lines):
            if line.startswith("```"):
                fenced = not fenced
                continue
            text = re.sub(r"^\$ ", "", line.strip())
            match = re.match(r"(?:venv/bin/)?mlcache (\S.*)", text)
            if not fenced or not match or "[" in text.split("#")[0] or "..." in text:
                continue
            words = shlex.split(match.group(1), comments=True)
            ends = [i for i, word in enumerate(words) if word in SHELL or word.startswith((">", "2>"))]
            words = words[: ends[0]] if ends else words
            shown_failing = number + 1 < len(lines) and lines[number + 1].startswith("error:")
            found.append((f"{page.name}:{number + 1}", words, shown_failing))
    return found


SHELL = {"|", "||", "&&", ";", "&"}
DOCUMENTED = documented_commands()


def test_the_docs_show_commands():
    assert len(DOCUMENTED) >= 30
    assert {words[0] for _, words, _ in DOCUMENTED} >= {"render", "diff", "verify", "heal", "rehearse", "bench"}


@pytest.mark.parametrize(("where", "words", "shown_failing"), DOCUMENTED, ids=[where for where, _, _ in DOCUMENTED])
def test_every_documented_command_parses(where, words, shown_failing, monkeypatch, capsys):
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if words[0].startswith("-"):  # mlcache --help
        assert run_in_process(words, capsys)[0] == 0
        return
    try:
        code, _, err = run_in_process(words, capsys)
    except Parsed:
        return  # (a line shown failing may fail on a value, after parsing)
    assert shown_failing, f"{where}: mlcache {shlex.join(words)} does not parse (exit {code}): {err.strip()}"


def test_every_command_named_in_the_docs_prose_exists():
    """`mlcache <command> ...` in running text names a command (its flags are mentioned, not a full
    command line: those are in fenced blocks, parsed above)."""
    named = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for span in re.findall(r"`(?:venv/bin/)?mlcache ([^`]+)`", page.read_text(encoding="utf-8")):
            named.append((page.name, span.split()[0].rstrip(":")))  # `mlcache render: ...`: an error line
    assert len(named) >= 50
    unknown = [(page, word) for page, word in named if word not in command.COMMANDS and word != "--help"]
    assert not unknown, f"commands named in the docs that `mlcache` does not have: {unknown}"


def test_the_readme_lists_every_command_in_the_order_help_does():
    listed = re.search(r"`mlcache --help` lists `([a-z ]+)`", " ".join((ROOT / "README.md").read_text().split()))
    assert listed and listed[1].split() == list(command.COMMANDS)
