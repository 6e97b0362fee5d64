"""The offline render: the stack's config read as the CLI reads it, the program run under the mock
engine, and what it would send as manifests, a summary or JSON (the library of `mlcache render`).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import yaml

from mlcache import CHECKOUT
from mlcache.errors import UsageError
from mlcache.preview.cli_yaml import resolve_plain
from mlcache.preview.mock_engine import ProgramRun, Registration, run_program
from mlcache.preview.stack_config import StackConfig, load_stack_config, split_key

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
    """The object as sent, head fields first; every value the engine received as a secret shown as
    <redacted> (where secrets flow decides, not what their text looks like: components/secret_flow.py)."""
    return _ordered(registration.shown(REDACTED))


def documents(run: ProgramRun) -> list[dict[str, Any]]:
    """Every Kubernetes object of a run, as printed: stable order, secrets redacted."""
    return [manifest(r) for r in ordered_objects(run)]


def sent_documents(run: ProgramRun) -> list[tuple[dict[str, Any], bool]]:
    """Every object as the API server would receive it, secrets in the clear (to check, never to print),
    each with whether it holds a secret."""
    return [(_ordered(r.inputs), r.shown(None) != r.shown(REDACTED)) for r in ordered_objects(run)]


# Plain scalars a YAML 1.2 reader (and kubectl's Go YAML) types as numbers, booleans or null that
# PyYAML (YAML 1.1) would print unquoted: "1e-4", "0o17", "1." stay strings only when quoted.
_NOT_TEXT_IN_YAML_12 = re.compile(
    r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)|true|True|TRUE|false|False|FALSE|~|null|Null|NULL"
)


# libyaml's emitter (PyYAML's wheels carry it) writes the same documents 15x faster than the pure
# Python one: 1.7 ms against 26.7 ms for dev's manifests; the representers stay PyYAML's.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# What Go's YAML readers type besides: yaml.v3 (the Pulumi CLI's) per resolve_plain, which follows
# Go's number syntax (0X1F, -0o17, 0o1_7, 1_000), and yaml.v2's booleans (kubectl's sigs.k8s.io/yaml).
_BOOLEANS_IN_GO_YAML_V2 = frozenset({"y", "Y", "n", "N"})


def _typed_by_go_yaml(data: str) -> bool:
    return data in _BOOLEANS_IN_GO_YAML_V2 or (data != "" and "\n" not in data and resolve_plain(data) != data)


class _ManifestDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    def represent_str(self, data: str) -> yaml.ScalarNode:
        if _NOT_TEXT_IN_YAML_12.fullmatch(data) or _typed_by_go_yaml(data):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="'")
        if "\n" in data:
            # A file (the scripts ConfigMap's Python) as its lines, as kubectl shows it; the emitter
            # falls back to a quoted scalar where a block cannot hold the text exactly.
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="|")
        return super().represent_str(data)


_ManifestDumper.add_representer(str, _ManifestDumper.represent_str)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """The manifests as YAML that every reader (YAML 1.1 or 1.2, kubectl) reads back with the same types."""
    return yaml.dump_all(documents, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, width=120)


def file_name(index: int, registration: Registration) -> str:
    return f"{index:02d}-{registration.kind.lower()}-{registration.shown_name}.yaml"


# The record --out keeps in DIR of the files it wrote and their digests: only those are ever replaced
# or removed. No extension, so `kubectl apply -f DIR` passes it by.
RENDER_RECORD = ".mlcache-render"


def out_dir(text: str) -> Path:
    """argparse type of --out: a directory path (created if missing), never the empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a directory, got an empty path")
    return Path(text)


def _digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def _read_own(path: Path) -> bytes | None:
    """A regular file's bytes, opened without following a link; None if absent, a link or not regular."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link planted under the name
            return None
        raise
    with os.fdopen(descriptor, "rb") as file:
        return file.read() if stat.S_ISREG(os.fstat(file.fileno()).st_mode) else None


def _write_fresh(directory: Path, name: str, data: bytes) -> None:
    """Write a file that did not exist (O_EXCL: never through a link), then rename it over `name`:
    a link or file planted under the name is replaced, never written through."""
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as file:
        file.write(data)
    os.replace(temporary, directory / name)


def write_out(directory: Path, files: dict[str, str]) -> None:
    """Write `files` into `directory` and remove the files of an earlier render that this one did not
    write (a stale benchmark Job would otherwise be applied by `kubectl apply -f DIR`). A file is
    replaced or removed only if an earlier render wrote it and nobody changed it since (RENDER_RECORD
    holds their digests); anything else under one of our names stops the render before it writes."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out {directory}: not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        record_bytes = _read_own(directory / RENDER_RECORD)
        try:
            earlier = json.loads(record_bytes) if record_bytes else {}
        except ValueError:
            earlier = {}
        earlier = earlier if isinstance(earlier, dict) else {}
        ours = {name for name, digest in earlier.items() if (data := _read_own(directory / name)) and _digest(data) == digest}
        foreign = sorted(n for n in files if n not in ours and os.path.lexists(directory / n))
        if foreign:
            raise UsageError(
                f"--out {directory}: {foreign[0]} exists and was not written by an earlier render (or was changed since); "
                "move it away or choose an empty directory"
            )
        encoded = {name: text.encode() for name, text in files.items()}
        for name, data in encoded.items():
            _write_fresh(directory, name, data)
        for name in sorted(ours - set(files)):
            (directory / name).unlink()
        record = json.dumps({name: _digest(data) for name, data in encoded.items()}, indent=1, sort_keys=True)
        _write_fresh(directory, RENDER_RECORD, record.encode())
    except OSError as err:
        raise UsageError(f"--out {directory}: cannot write there: {err.strerror or err}") from None


def summary(run: ProgramRun) -> str:
    """What the engine sees beyond the manifests: options, dependencies, warnings, outputs."""
    names = {r.urn: r.name for r in run.registrations}
    lines = ["resources:"]
    for r in sorted(run.registrations, key=lambda r: r.urn):
        label = f"{r.kind}/{r.shown_name}" if r.is_kubernetes_object else "component"
        lines.append(f"  - {r.name} ({r.type}) {label}")
        extra_deps = sorted(names.get(u, u) for u in r.dependencies if u != r.parent)
        property_deps = {k: sorted(names.get(u, u) for u in v) for k, v in r.property_dependencies.items() if v}
        annotations = r.inputs.get("metadata", {}).get("annotations", {})  # skipAwait: a constant, never secret
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


# Set by mlcache diff for its two renders (a random key, never printed): each secret value is then
# shown with a keyed digest, so that a change inside a secret is seen without its value.
DIGEST_KEY_ENV = "MLCACHE_SECRET_DIGEST_KEY"


def keyed_digest(key: str) -> Callable[[Any], str]:
    def shown(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str).encode()
        return f"{REDACTED} {hmac.new(key.encode(), text, hashlib.sha256).hexdigest()[:20]}"

    return shown


def property_path_parts(path: str) -> list[str]:
    """A Pulumi property path (`a.b["c/d"]`, `a[0]`) as its keys (parsed as `pulumi config set --path` does)."""
    top, rest = split_key(path)
    return [top.partition(":")[2], *(str(part) for part in rest)]


def as_json(run: ProgramRun, digest_key: str | None = None) -> dict[str, Any]:
    """Machine-readable plan: each object with the options the engine sees (for mlcache diff)."""
    names = {r.urn: r.name for r in run.registrations}
    key = digest_key or os.environ.get(DIGEST_KEY_ENV)
    secret_as = keyed_digest(key) if key else REDACTED
    return {
        "objects": [
            {
                "urn": r.urn,
                "id": r.id,  # namespace/name as the provider makes it (the namespace: the manifest's, else the stack's)
                "manifest": _ordered(r.shown(secret_as)),
                "protect": r.protect,
                "deleteBeforeReplace": r.delete_before_replace,
                "replaceOnChanges": r.replace_on_changes,
                "ignoreChanges": r.ignore_changes,
                # The manifest without the fields the engine ignores, for what changed (inside a
                # secret the manifest's digest covers them, and the diff cannot take them out).
                **(
                    {"ignoring": _ordered(r.shown(secret_as, [property_path_parts(p) for p in r.ignore_changes]))}
                    if r.ignore_changes
                    else {}
                ),
                "propertyDependencies": sorted({u for urns in r.property_dependencies.values() for u in urns}),
                "dependencies": sorted(u for u in r.dependencies if u != r.parent and u in names),
            }
            for r in ordered_objects(run)
        ],
        "outputs": {name: "[secret]" if name in run.secret_outputs else value for name, value in run.outputs.items()},
        "warnings": run.warnings,
    }


def render(stack: str, overrides: list[str], secrets: list[str], project_dir: Path = CHECKOUT) -> tuple[ProgramRun, StackConfig]:
    config = load_stack_config(stack, overrides, secrets, project_dir)
    run = run_program(config.engine_config(), sorted(config.secret_keys), stack, project_dir=project_dir)
    run.warnings[:0] = config.warnings
    return run, config


def render_or_refuse(
    stack: str, overrides: list[str], secrets: list[str], project_dir: Path = CHECKOUT
) -> tuple[ProgramRun, StackConfig]:
    """render() for a command line: input it cannot render is a UsageError (exit 2, one line)."""
    try:
        return render(stack, overrides, secrets, project_dir)
    except RENDER_ERRORS as err:
        raise UsageError(str(err)) from None
