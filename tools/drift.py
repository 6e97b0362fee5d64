"""Drift check: does the live cluster still match the stack?

    mlcache drift --stack STACK [--cwd DIR]

Runs `pulumi preview --refresh --expect-no-changes --json --stack STACK` (the refresh reads
every object back from the cluster; a hand edit of a field the stack sets shows as a change),
then names each object that differs and the fields that differ. With GITHUB_STEP_SUMMARY set
(GitHub Actions), the same summary is appended there as Markdown.

A hand edit also makes its editor (kubectl, a client) the Server-Side Apply owner of the field,
so the provider's dry run of the stack's value conflicts and the preview would stop at the first
such object, leaving those that depend on it unchecked. The check therefore previews with
PULUMI_K8S_ENABLE_PATCH_FORCE=true: a preview writes nothing, and every drifted object is named.
Exit 0 when nothing drifted, 1 on drift (the objects on stdout), 2 on bad usage (no --stack, a
--cwd that is not a directory, no Pulumi CLI on PATH), 3 when the check could not run (the
preview failed: the cluster or the state cannot be read), 70 on a bug: "drift" is only ever 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.cli import ArgumentParser, Unreachable, UsageError, entry_point
from tools.main import prog

# Step ops that are not changes (a refresh that found nothing, a read, an unchanged resource).
NO_CHANGE = {"same", "read", "refresh", "discard"}
# The provider's switch to overwrite field-ownership conflicts (pulumi-kubernetes await.patchForce).
PATCH_FORCE = "PULUMI_K8S_ENABLE_PATCH_FORCE"


@dataclass(frozen=True)
class Drift:
    op: str
    type: str
    name: str
    fields: tuple[str, ...]

    @property
    def label(self) -> str:
        kind = self.type.rsplit(":", 1)[-1]
        return f"{kind}/{self.name}"


def drifted(preview: dict[str, Any]) -> list[Drift]:
    """The changed resources of a `pulumi preview --json` document."""
    found = []
    for step in preview.get("steps") or []:
        if step.get("op") in NO_CHANGE:
            continue
        state = step.get("newState") or step.get("oldState") or {}
        inputs = state.get("inputs") or {}
        name = (inputs.get("metadata") or {}).get("name") or step["urn"].rsplit("::", 1)[-1]
        fields = tuple(sorted(step.get("detailedDiff") or {})) or tuple(step.get("diffReasons") or [])
        found.append(Drift(step["op"], step["urn"].split("::")[2].split("$")[-1], name, fields))
    return found


def summary(stack: str, drifts: list[Drift], markdown: bool = False) -> str:
    if not drifts:
        return f"stack {stack}: no drift (the live cluster matches the stack)\n"
    head = f"stack {stack}: DRIFT in {len(drifts)} object(s): the live cluster differs from the stack"
    lines = [f"### {head}" if markdown else head]
    for drift in drifts:
        fields = ", ".join(drift.fields) or "(no field detail)"
        lines.append(f"- `{drift.label}` ({drift.op}): {fields}" if markdown else f"  {drift.op:<8} {drift.label}: {fields}")
    lines.append(
        "Someone edited these objects outside Pulumi. To put the stack's values back: "
        f"`{PATCH_FORCE}=true pulumi up --stack {stack}` (a plain `pulumi up` is refused with a Server-Side Apply "
        "conflict while the editor owns the field); or make the edit part of the stack's config."
    )
    return "\n".join(lines) + "\n"


def run_preview(stack: str, cwd: Path) -> tuple[int, dict[str, Any] | None, str]:
    command = ["pulumi", "preview", "--refresh", "--expect-no-changes", "--json", "--non-interactive", "--stack", stack]
    env = {**os.environ, PATCH_FORCE: "true"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        document = None
    return result.returncode, document, (result.stderr or result.stdout).strip()


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("tools.drift"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--cwd", type=Path, default=Path.cwd(), help="the project directory (default: here)")
    args = parser.parse_args(argv)
    if not args.cwd.is_dir():
        raise UsageError(f"--cwd {str(args.cwd)!r} is not a directory (the project directory, with Pulumi.yaml)")
    if shutil.which("pulumi") is None:
        raise UsageError("the drift check runs `pulumi preview --refresh`: the Pulumi CLI is not on PATH")
    print(f"drift: pulumi preview --refresh --stack {args.stack} (reads every object back from the cluster)", file=sys.stderr)
    code, document, errors = run_preview(args.stack, args.cwd)
    drifts = drifted(document or {})
    if code != 0 and not drifts:
        raise Unreachable(f"stack {args.stack}: the drift check could not run: {errors.splitlines()[-1] if errors else code}")
    sys.stdout.write(summary(args.stack, drifts))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as out:
            out.write(summary(args.stack, drifts, markdown=True))
    return 1 if drifts else 0


if __name__ == "__main__":
    sys.exit(main())
