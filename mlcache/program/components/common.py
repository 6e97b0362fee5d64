"""Helpers shared by the components: object metadata, and turning wire-format specs into constructor kwargs."""

from __future__ import annotations

import re
from typing import Any

from mlcache.program.names import LABELS


def metadata(
    name: str, namespace: str | None = None, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**LABELS, **(labels or {})}}
    if namespace:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def constructor_kwargs(manifest: dict[str, Any]) -> dict[str, Any]:
    """Top-level camelCase manifest fields as the snake_case kwargs pulumi_kubernetes takes."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): value for key, value in manifest.items()}


# What kubectl-made objects never have: our labels and annotations. Ignored while adopting, so
# the import compares only what matters (the spec); the next `up` without adopt adds them.
ADOPTION_IGNORED = ["metadata.labels", "metadata.annotations"]


def adoption_options(import_id: str, adopt: bool) -> dict[str, Any]:
    """Resource options that import an existing object (id `name` or `namespace/name`) instead of creating it."""
    if not adopt:
        return {}
    return {"import_": import_id, "ignore_changes": list(ADOPTION_IGNORED)}
