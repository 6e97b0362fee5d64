"""Render a stack offline: every Kubernetes object the program would send, as YAML.

    python -m tools.render --stack dev [--config KEY=VALUE]... [--secret KEY=VALUE]...
                           [--out DIR] [--summary]

Runs `__main__.py` under the Pulumi SDK's mock engine with the stack's config (Pulumi.yaml
defaults, then Pulumi.<stack>.yaml, then the overrides). Bad config exits 2 with one line
on stderr and nothing on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import pulumi
import yaml

from tools.mock_engine import ProgramRun, Registration, run_program
from tools.stack_config import StackConfig, load_stack_config

REDACTED = "<redacted>"
# What a stack that cannot be rendered raises: bad config (the program's ConfigError is a
# RunError), an unknown stack, a malformed override or an unknown key.
RENDER_ERRORS = (pulumi.RunError, FileNotFoundError, ValueError)
# Keys printed first, in this order; the rest sorted, so the output is stable for review.
_FIRST = ("apiVersion", "kind", "metadata", "name", "key")
# Apply order of `kubectl apply -f`: what others reference comes first.
KIND_ORDER = ("Namespace", "StorageClass", "Secret", "ConfigMap", "PersistentVolumeClaim", "Job")


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        keys = [k for k in _FIRST if k in value] + sorted(k for k in value if k not in _FIRST)
        return {k: _ordered(value[k]) for k in keys}
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value


def ordered_objects(run: ProgramRun) -> list[Registration]:
    """Kubernetes objects in a stable order (registration order varies with async RPCs)."""
    rank = {kind: index for index, kind in enumerate(KIND_ORDER)}
    return sorted(run.kubernetes_objects(), key=lambda r: (rank.get(r.kind, len(rank)), r.kind, r.object_name))


def manifest(registration: Registration) -> dict[str, Any]:
    """The object as sent, head fields first; Secret payloads redacted."""
    inputs = dict(registration.inputs)
    if inputs.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if field in inputs:
                inputs[field] = {key: REDACTED for key in inputs[field]}
    return _ordered(inputs)


def documents(run: ProgramRun) -> list[dict[str, Any]]:
    """Every Kubernetes object of a run, as printed: stable order, Secret payloads redacted."""
    return [manifest(r) for r in ordered_objects(run)]


def secret_values(config: StackConfig) -> list[str]:
    """Plain-text secret config values (leaves of secret keys), to scrub from any output."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and len(value) >= 4:
            found.append(value)

    for key in config.secret_keys:
        walk(config.values.get(key))
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """Belt and braces: no secret value leaves this tool, in plain text or base64."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
        text = text.replace(base64.b64encode(secret.encode()).decode(), REDACTED)
    return text


def to_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120)


def file_name(index: int, registration: Registration) -> str:
    return f"{index:02d}-{registration.kind.lower()}-{registration.object_name}.yaml"


def summary(run: ProgramRun) -> str:
    """What the engine sees beyond the manifests: options, dependencies, warnings, outputs."""
    names = {r.urn: r.name for r in run.registrations}
    lines = ["resources:"]
    for r in sorted(run.registrations, key=lambda r: r.urn):
        label = f"{r.kind}/{r.object_name}" if r.is_kubernetes_object else "component"
        lines.append(f"  - {r.name} ({r.type}) {label}")
        extra_deps = sorted(names.get(u, u) for u in r.dependencies if u != r.parent)
        property_deps = {k: sorted(names.get(u, u) for u in v) for k, v in r.property_dependencies.items() if v}
        annotations = r.inputs.get("metadata", {}).get("annotations", {})
        details = {
            "parent": names.get(r.parent, "stack"),
            "protect": r.protect,
            "deleteBeforeReplace": r.delete_before_replace,
            "replaceOnChanges": r.replace_on_changes,
            "ignoreChanges": r.ignore_changes,
            "dependsOn": extra_deps,
            "propertyDependencies": property_deps,
            "customTimeouts": r.custom_timeouts,
            "importId": r.import_id,
            "skipAwait": annotations.get("pulumi.com/skipAwait") == "true",
        }
        for key, value in details.items():
            if value or (key in ("protect", "skipAwait") and r.is_kubernetes_object):
                lines.append(f"      {key}: {value}")
    lines.append("outputs:")
    for name, value in run.outputs.items():
        if name in run.secret_outputs:
            lines.append(f"  {name}: [secret]")
        elif isinstance(value, dict):
            lines.append(f"  {name}:")
            lines.extend(f"    {key}: {item}" for key, item in value.items())
        else:
            lines.append(f"  {name}: {value}")
    lines.append("warnings:")
    lines.extend(f"  - {warning}" for warning in run.warnings)
    lines.append("notes:")
    lines.extend(f"  - {note}" for note in run.notes)
    return "\n".join(lines) + "\n"


def as_json(run: ProgramRun) -> dict[str, Any]:
    """Machine-readable plan: each object with the options the engine sees (for tools.diff)."""
    names = {r.urn: r.name for r in run.registrations}
    return {
        "objects": [
            {
                "urn": r.urn,
                "manifest": manifest(r),
                "protect": r.protect,
                "deleteBeforeReplace": r.delete_before_replace,
                "replaceOnChanges": r.replace_on_changes,
                "ignoreChanges": r.ignore_changes,
                "propertyDependencies": sorted({u for urns in r.property_dependencies.values() for u in urns}),
                "dependencies": sorted(u for u in r.dependencies if u != r.parent and u in names),
            }
            for r in ordered_objects(run)
        ],
        "outputs": {name: "[secret]" if name in run.secret_outputs else value for name, value in run.outputs.items()},
        "warnings": run.warnings,
    }


def render(stack: str, overrides: list[str], secrets: list[str]) -> tuple[ProgramRun, StackConfig]:
    config = load_stack_config(stack, overrides, secrets)
    return run_program(config.engine_config(), sorted(config.secret_keys), stack), config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name (Pulumi.<stack>.yaml)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key as `pulumi config set --path` would; empty VALUE unsets it",
    )
    parser.add_argument(
        "--secret", action="append", default=[], metavar="KEY=VALUE", help="supply a secret config value (never printed)"
    )
    parser.add_argument("--out", type=Path, help="write one file per object into DIR instead of stdout")
    parser.add_argument("--summary", action="store_true", help="print resource options, outputs and warnings")
    parser.add_argument("--json", action="store_true", help="print objects with their engine options as JSON")
    args = parser.parse_args(argv)

    try:
        run, config = render(args.stack, args.config, args.secret)
    except RENDER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    secrets = secret_values(config)
    for warning in run.warnings:
        print(scrub(f"warning: {warning}", secrets), file=sys.stderr)
    if args.summary:
        sys.stdout.write(scrub(summary(run), secrets))
    elif args.json:
        sys.stdout.write(scrub(json.dumps(as_json(run), indent=1), secrets) + "\n")
    elif args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for index, registration in enumerate(ordered_objects(run), start=1):
            path = args.out / file_name(index, registration)
            path.write_text(scrub(to_yaml([manifest(registration)]), secrets))
            print(path, file=sys.stderr)
    else:
        sys.stdout.write(scrub(to_yaml(documents(run)), secrets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
