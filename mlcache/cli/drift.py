"""Drift check: does the live cluster still match the stack?

    mlcache drift --stack STACK [--cwd DIR]

Runs `pulumi preview --refresh --expect-no-changes --json --stack STACK` (the refresh reads
every object back from the cluster; a hand edit of a field the stack sets shows as a change),
then names each object that differs and the fields that differ. With GITHUB_STEP_SUMMARY set
(GitHub Actions), the same summary is appended there as Markdown.

During a move of the cache the preview also shows the move's next step (the switch, a retry) as
changes; the bound-cache guard's notes in the preview say so, and the summary prints them beside
the objects (JSON: `guardNotes`).

A hand edit also makes its editor (kubectl, a client) the Server-Side Apply owner of the field,
so the provider's dry run of the stack's value conflicts and the preview would stop at the first
such object, leaving those that depend on it unchecked. The check therefore previews with
PULUMI_K8S_ENABLE_PATCH_FORCE=true: a preview writes nothing, and every drifted object is named.
Exit 0 when nothing drifted, 1 on drift (the objects on stdout), 2 on bad usage (no --stack, a
--cwd that is not a Pulumi project directory, no Pulumi CLI on PATH, a stack the backend does not
hold), 3 when the check could not run (the
preview failed: the cluster or the state cannot be read), 70 on a bug: "drift" is only ever 1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict

from mlcache.cli.contract import STACK_HELP, ArgumentParser, Unreachable, UsageError, entry_point, project_dir
from mlcache.cli.main import prog
from mlcache.cluster.drift import drifted, guard_notes, run_preview, summary
from mlcache.preview.stack_config import StackConfigError, stack_file


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.drift"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument("--cwd", type=project_dir, default=".", help="the project directory (default: here)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the summary")
    args = parser.parse_args(argv)
    try:
        stack_file(args.stack, args.cwd)
    except (FileNotFoundError, StackConfigError) as err:
        raise UsageError(str(err)) from None
    if shutil.which("pulumi") is None:
        raise UsageError("the drift check runs `pulumi preview --refresh`: the Pulumi CLI is not on PATH")
    print(f"drift: pulumi preview --refresh --stack {args.stack} (reads every object back from the cluster)", file=sys.stderr)
    code, document, errors = run_preview(args.stack, args.cwd)
    drifts, notes = drifted(document or {}), guard_notes(document or {})
    if code != 0 and not drifts and "no stack named" in errors:
        raise UsageError(f"stack {args.stack} is not in the state backend Pulumi is logged in to ({errors}): nothing to check")
    if code != 0 and not drifts:
        raise Unreachable(f"stack {args.stack}: the drift check could not run: {errors or f'exit {code}'}")
    if args.json:
        document = {"stack": args.stack, "drift": [{**asdict(d), "object": d.label} for d in drifts], "guardNotes": notes}
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(summary(args.stack, drifts, notes=notes))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as out:
            out.write(summary(args.stack, drifts, markdown=True, notes=notes))
    return 1 if drifts else 0
