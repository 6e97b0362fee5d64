"""Validate a stack's rendered manifests strictly against Kubernetes OpenAPI schemas.

    python -m tools.validate --stack dev [--config KEY=VALUE]... [--kubernetes-version 1.33]...

Strict mode rejects unknown fields, so a misspelt field fails here instead of being
silently dropped by the API server.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import kubernetes_validate

from tools.render import RENDER_ERRORS, documents, render

# The Kubernetes minors the manifests must be valid for (oldest supported, newest in use);
# MLCACHE_KUBERNETES_VERSIONS="1.31,1.34" retargets the tool and the test suite.
DEFAULT_VERSIONS = ("1.30", "1.33")
TARGET_VERSIONS = tuple(v.strip() for v in os.environ.get("MLCACHE_KUBERNETES_VERSIONS", ",".join(DEFAULT_VERSIONS)).split(","))


def core_documents(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the core schemas can check: the object, or for a JobSet (a CRD, validated by the API
    server against its own schema in the integration tests) the Job of each replicated job."""
    if doc.get("kind") != "JobSet":
        return [doc]
    name = doc["metadata"]["name"]
    return [
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-{r['name']}-0"}, "spec": r["template"]["spec"]}
        for r in doc["spec"]["replicatedJobs"]
    ]


def validation_errors(documents: list[dict[str, Any]], versions: tuple[str, ...] = TARGET_VERSIONS) -> list[str]:
    errors = []
    for version in versions:
        for doc in (d for document in documents for d in core_documents(document)):
            try:
                kubernetes_validate.validate(doc, f"{version}.0", strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path) or "(root)"
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}) at {path}: {err.message}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        metavar="MINOR",
        help=f"target version (repeatable; default {', '.join(TARGET_VERSIONS)})",
    )
    args = parser.parse_args(argv)
    try:
        run, _ = render(args.stack, args.config, [])
    except RENDER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    objects = documents(run)
    versions = tuple(args.versions or TARGET_VERSIONS)
    errors = validation_errors(objects, versions)
    for error in errors:
        print(f"invalid: {error}", file=sys.stderr)
    if errors:
        return 1
    kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in objects)
    print(f"{args.stack}: {len(objects)} objects valid (strict) for Kubernetes {', '.join(versions)}: {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
