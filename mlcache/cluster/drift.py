"""Drift: the objects a `pulumi preview --refresh --expect-no-changes --json` would change, and the
fields that differ (the library of `mlcache drift`).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcache.cluster.bound_cache import MOVE_NOTE_PREFIX
from mlcache.errors import error_line

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


def guard_notes(preview: dict[str, Any]) -> list[str]:
    """The bound-cache guard's notes in the preview that announce a move's next step (its changes
    are the stack's own, not hand edits); its other notes (where the claim is bound) are left out."""
    messages = ((d.get("message") or "").strip() for d in preview.get("diagnostics") or [])
    return [m for m in messages if m.startswith(MOVE_NOTE_PREFIX)]


def summary(stack: str, drifts: list[Drift], markdown: bool = False, notes: list[str] | None = None) -> str:
    if not drifts:
        return f"stack {stack}: no drift (the live cluster matches the stack)\n"
    head = f"stack {stack}: DRIFT in {len(drifts)} object(s): the live cluster differs from the stack"
    lines = [f"### {head}" if markdown else head]
    for drift in drifts:
        fields = ", ".join(drift.fields) or "(no field detail)"
        lines.append(f"- `{drift.label}` ({drift.op}): {fields}" if markdown else f"  {drift.op:<8} {drift.label}: {fields}")
    edited = "Someone edited these objects outside Pulumi"
    if notes:
        lines += [f"> {note}" if markdown else f"  {note}" for note in notes]
        lines.append(
            "The notes above are the bound-cache guard's, about a move of the cache: a change they announce (a move's "
            f"new claim and copy, a retry, the switch, the old claim's retirement) is the stack's own next step, which "
            f"`pulumi up --stack {stack}` takes; `mlcache verify --stack {stack}` shows the move."
        )
        edited = "Any other object listed was edited outside Pulumi"
    lines.append(
        f"{edited}. To put the stack's values back: `{restore_command(stack)}` (--refresh reads the edited values "
        f"first: without it `pulumi up` compares against its state and sees nothing to change; {PATCH_FORCE} takes "
        "the fields over where the editor applied them server-side); or make the edit part of the stack's config."
    )
    return "\n".join(lines) + "\n"


def restore_command(stack: str) -> str:
    """What puts the stack's values back over hand edits."""
    return f"{PATCH_FORCE}=true pulumi up --refresh --stack {stack}"


def failure_line(stderr: str, document: dict[str, Any] | None) -> str:
    """Why a preview failed: its error diagnostic (the --json document's, or an `error:` line on
    stderr), not the last line printed (a plugin's warning, the document's closing brace)."""
    for event in (document or {}).get("diagnostics") or []:
        if event.get("severity") == "error" and str(event.get("message", "")).strip():
            return " ".join(str(event["message"]).split())
    return error_line(stderr)


def run_preview(stack: str, cwd: Path) -> tuple[int, dict[str, Any] | None, str]:
    command = ["pulumi", "preview", "--refresh", "--expect-no-changes", "--json", "--non-interactive", "--stack", stack]
    env = {**os.environ, PATCH_FORCE: "true"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        document = None
    return result.returncode, document, failure_line(result.stderr, document) if result.returncode else ""
