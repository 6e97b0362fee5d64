"""Offline preview: what `pulumi up` would do to each stack, from a git revision to the working tree.

    mlcache diff --base REF [--stack STACK]... [--fail-on-data-loss] [--project DIR]
                 [--markdown [--placement DIR] [--real-preview DIR]]

Both sides are rendered with this checkout's tools (the base revision's program, stack files
and components, run under the mock engine). Each changed object gets the action the engine
would take: create, update, replace or delete. Replacements follow the provider's force-new
fields, the fields Kubernetes makes immutable, the program's replaceOnChanges and ignoreChanges,
and the delete-before-replace cascade into resources that use a replaced resource's outputs.

Day-2 rules on top (docs/day2.md): a change of zone, GPU product or pinning that keeps an existing
LINSTOR cache STRANDS THE CACHE (its volume stays pinned where it was bound) unless the cache is
re-created in the same change (cache.relocate); a shrink, or a growth the class does not allow, is
flagged as an update the API server will refuse, with the way out.

--markdown prints the pull request's comment instead: a summary table (changes, risk, the policy
pack's verdict per stack), then each stack's changes, policy findings and the placement its Jobs
and claims ask for, with warnings and manifest diffs folded, under GitHub's comment limit; with
--real-preview, each stack's real `pulumi preview` too (its verdict, whether it could dry-run on
the API server, its output folded).
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlcache import CHECKOUT
from mlcache.cli.contract import ArgumentParser, UsageError, entry_point, project_dir
from mlcache.cli.main import prog
from mlcache.cluster.bound_cache import LiveCache
from mlcache.preview.diff import (
    RealPreview,
    StackPreview,
    chosen_stacks,
    explain_another_cache,
    export_revision,
    live_cache_for,
    markdown_report,
    moves_by_copy,
    new_warnings,
    plan,
    render_json,
    report,
    secret_changes,
    unrendered_report,
    valid_placement,
)
from mlcache.preview.mock_engine import same_program
from mlcache.preview.policy_check import MANDATORY, policy_findings
from mlcache.preview.stack_config import StackConfigError, secure_values
from mlcache.program.schema import unreadable_secret_of


def rehearsed(directory: Path | None, stack: str) -> dict | None:
    """The stack's rehearsal (`mlcache rehearse --json` in DIR/<stack>.json): None when there is
    none, {} when it did not finish (an empty or cut-off file)."""
    path = directory / f"{stack}.json" if directory else None
    if path is None or not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return document if valid_placement(document) else {}


def real_preview(directory: Path | None, stack: str) -> RealPreview | None:
    """The stack's real preview as the PR workflow leaves it in DIR/<stack>/: preview.txt and
    preview.rc (`pulumi preview --diff` and its exit status), access.txt and access.rc (`mlcache
    access`). None without DIR; not run when DIR has no folder for the stack."""
    if directory is None:
        return None
    folder = directory / stack
    if not folder.is_dir():
        return RealPreview(ran=False)

    def read(name: str) -> str:
        try:
            return (folder / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def status(name: str) -> int | None:
        text = read(name).strip()
        return int(text) if text.isdigit() else None

    return RealPreview(True, status("preview.rc"), read("preview.txt"), status("access.rc"), read("access.txt"))


def secure_values_or_none(stack: str, directory: Path) -> dict[str, str]:
    """secure_values, or none from a stack file that cannot be read: its render failed on it and
    says why, naming the file (exit 2)."""
    try:
        return secure_values(stack, directory)
    except StackConfigError:
        return {}


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.diff"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare the working tree against")
    parser.add_argument("--stack", action="append", help="stack (repeatable; default: every Pulumi.*.yaml)")
    parser.add_argument(
        "--fail-on-data-loss",
        action="store_true",
        help="exit 1 when a change wipes or strands the cache, is an update the API server will refuse, or the "
        "working tree violates a mandatory policy",
    )
    parser.add_argument("--markdown", action="store_true", help="print the pull request comment (summary first) instead")
    parser.add_argument(
        "--project",
        type=project_dir,
        default=CHECKOUT,
        metavar="DIR",
        help="the working tree and git repository to compare (default: this checkout)",
    )
    parser.add_argument(
        "--placement",
        type=Path,
        metavar="DIR",
        help="with --markdown: show DIR/<stack>.json (mlcache rehearse --json) as where each stack is placed",
    )
    parser.add_argument(
        "--real-preview",
        type=Path,
        metavar="DIR",
        help="with --markdown: show DIR/<stack>/ (preview.txt, preview.rc, access.txt, access.rc) as each stack's real "
        "pulumi preview; one that fails counts for --fail-on-data-loss",
    )
    args = parser.parse_args(argv)
    if args.placement and not args.markdown:
        raise UsageError("--placement shows rehearsals in the PR comment: use it with --markdown")
    if args.real_preview and not args.markdown:
        raise UsageError("--real-preview shows the real previews in the PR comment: use it with --markdown")
    if args.real_preview and not args.real_preview.is_dir():
        raise UsageError(f"--real-preview {args.real_preview}: not a directory (the real previews' DIR/<stack>/ folders)")
    project = args.project.resolve()
    # A working tree whose program is byte for byte these tools' renders in this process.
    here = same_program(project)
    with tempfile.TemporaryDirectory(prefix="mlcache-base-") as tmp:
        base_dir = Path(tmp)
        export_revision(args.base, base_dir, project)
        stacks = chosen_stacks(args.stack, base_dir, project)
        # One key for both sides: equal secrets show equal digests, and nothing else can read them.
        digest_key = secrets.token_hex(16)

        def render_head(stack: str, live: LiveCache | None = None) -> tuple[dict | None, str | None]:
            return render_json(project, stack, digest_key, live, in_process=here)

        copying = {stack for stack in stacks if moves_by_copy(stack, project)}
        if copying and not here:
            # A move is judged against the base's claim, which reaches only a render in this process.
            raise UsageError(
                f"--project {args.project}: its program differs from these tools' and stack(s) {', '.join(sorted(copying))} "
                "move the cache by copy; run that checkout's own mlcache diff"
            )
        if same_program(base_dir):
            # Only stack files differ: both sides render here, one after the other (a render is not thread-safe).
            base = [render_json(base_dir, stack, digest_key, in_process=True) for stack in stacks]
            head = {stack: render_head(stack) for stack in stacks if stack not in copying}
        else:
            with ThreadPoolExecutor(max_workers=2) as pool:
                # The base revision renders in subprocesses while the working tree renders here.
                rendering = pool.map(lambda stack: render_json(base_dir, stack, digest_key), stacks)
                head = {stack: render_head(stack) for stack in stacks if stack not in copying}
                base = list(rendering)
        another: dict[str, str] = {}  # stacks whose move renames the cache: why it is no move
        for stack, (old, _) in zip(stacks, base, strict=True):
            if stack in copying:
                # A move is decided against the live claim: the one the base revision deployed, bound,
                # when it is the working tree's cache (the guard reads it by the new cache.name).
                fresh = render_head(stack)
                live, why = live_cache_for(old, fresh[0])
                head[stack] = render_head(stack, live) if live else fresh
                if why:
                    another[stack] = why
        rendered = [side for stack, old in zip(stacks, base, strict=True) for side in (old, head[stack])]
        # Read while the base revision's files exist (they go with the temporary directory).
        hidden_by_stack = {
            stack: secret_changes(secure_values_or_none(stack, base_dir), secure_values_or_none(stack, project))
            for stack in stacks
        }
    gated = False
    reports, previews = [], []
    for index, stack in enumerate(stacks):
        (old, old_error), (new, new_error) = rendered[2 * index], rendered[2 * index + 1]
        real, placed, hidden = real_preview(args.real_preview, stack), rehearsed(args.placement, stack), hidden_by_stack[stack]
        sides = [(f"the base revision {args.base}", old_error), ("the working tree", new_error)]
        failed = [(side, error, unreadable_secret_of(error)) for side, error in sides if error]
        for side, error, unreadable in failed:
            if not unreadable:  # a failure of its own: the preview fails, naming it
                raise UsageError(f"stack {stack}: cannot render {side}: {error}")
        if failed:
            # A `secure:` value its checks refuse as a placeholder: only the real preview (which
            # decrypts it) can judge the stack. The line names the side, not the --secret hint.
            why = "; ".join(f"{side}: {unreadable}" for side, _, unreadable in failed)
            preview = StackPreview(stack, [], [], [], [], placed, real=real, unrendered=why)
            gated = gated or preview.gated
            reports.append(unrendered_report(stack, why))
            previews.append(preview)
            continue
        changes = plan(old, new, digest_key)
        if stack in another:
            explain_another_cache(changes, another[stack])
        warned = new_warnings(old, new)
        objects = (new or {}).get("objects", [])
        findings = policy_findings(objects) if args.markdown or args.fail_on_data_loss else []
        # A mandatory policy violation fails `pulumi up` as surely as the API server's refusal.
        refusing = [f for f in findings if f.level == MANDATORY]
        preview = StackPreview(stack, changes, findings, objects, hidden, placed, warnings=warned, real=real)
        # The API server refused it in a dry-run, or the program failed: `pulumi up` fails the same way.
        gated = gated or any(c.gated for c in changes) or bool(refusing) or preview.gated
        reports.append(report(stack, changes, hidden, warned, refusing if args.fail_on_data_loss else None))
        previews.append(preview)
    sys.stdout.write(markdown_report(args.base, previews) if args.markdown else "".join(reports))
    return 1 if args.fail_on_data_loss and gated else 0
