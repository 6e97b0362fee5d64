"""Strict validation of rendered manifests against Kubernetes' OpenAPI schemas, per target minor
version (the library of `mlcache validate`).
"""

from __future__ import annotations

import argparse
import os
import re
from functools import cache
from typing import Any

import jsonschema
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

from mlcache.errors import UsageError

# The Kubernetes minors the manifests must be valid for (oldest supported, newest in use);
# MLCACHE_KUBERNETES_VERSIONS="1.31,1.34" retargets the tool and the test suite.
DEFAULT_VERSIONS = ("1.30", "1.33")


TARGET_VERSIONS = tuple(v.strip() for v in os.environ.get("MLCACHE_KUBERNETES_VERSIONS", ",".join(DEFAULT_VERSIONS)).split(","))


def core_documents(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the core schemas can check: the object, or for a JobSet (a CRD, checked against its own
    schema by tests/integration/test_jobset_crd.py) the Job of each replicated job."""
    if doc.get("kind") != "JobSet":
        return [doc]
    name = doc["metadata"]["name"]
    return [
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-{r['name']}-0"}, "spec": r["template"]["spec"]}
        for r in doc["spec"]["replicatedJobs"]
    ]


@cache
def _validator(minor: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """The strict validator kubernetes_validate.validate builds for this kind and version (the newest
    schema not newer than `minor`), built once: the library re-reads its multi-megabyte definitions
    file on every call, which made validation most of the test suite's time."""
    wanted = tuple(map(int, minor.split(".")))
    schema_version = [v for v in all_versions() if tuple(map(int, major_minor(v).split("."))) <= wanted][-1]
    schema_dir = f"kubernetes-json-schema/v{schema_version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1 -> rbac-v1
    schema = schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", minor)
    registry = Resource.from_contents(schema_contents(f"{schema_dir}/_definitions.json", minor)) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(
    documents: list[dict[str, Any]], versions: tuple[str, ...] = TARGET_VERSIONS, holds_secret: list[bool] | None = None
) -> list[str]:
    """Schema errors of the objects as sent; for an object that holds a secret, where but not what
    (the schema's message quotes the value)."""
    errors = []
    for version in versions:
        for index, doc in ((i, d) for i, document in enumerate(documents) for d in core_documents(document)):
            try:
                _validator(version, doc["kind"], doc["apiVersion"]).validate(doc)
            except jsonschema.ValidationError as err:
                path = ".".join(str(p) for p in err.path) or "(root)"
                secret = holds_secret is not None and holds_secret[index]
                message = "invalid (not shown: the object holds a secret)" if secret else err.message
                name = "[secret]" if secret else doc["metadata"]["name"]
                errors.append(f"{doc['kind']}/{name} (Kubernetes {version}) at {path}: {message}")
    return errors


def kubernetes_minor(text: str) -> str:
    """argparse type: a minor version the schemas cover, such as 1.33."""
    known = sorted({v.rpartition(".")[0] for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    if text not in known:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes minor with schemas here: {known[0]} to {known[-1]}")
    return text


def kubernetes_minor_from_env(text: str) -> str:
    try:
        return kubernetes_minor(text)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"MLCACHE_KUBERNETES_VERSIONS: {err}") from None
