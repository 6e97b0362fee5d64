"""Rendered manifests validate strictly against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import itertools

import pytest

from mlcache.preview.render import sent_documents
from mlcache.preview.validate import DEFAULT_VERSIONS, TARGET_VERSIONS, validation_errors
from tests.conftest import rendered

VARIANTS = list(
    itertools.product(
        ("backend=linstor", "backend=rook-ceph"),
        ("cache.volumeMode=Filesystem", "cache.volumeMode=Block"),
        ("zone=", "zone=sdsu"),
        ("job.enabled=true", "job.enabled=false"),
    )
)


def _documents(stack, *overrides, secrets=()):
    return [doc for doc, _ in sent_documents(rendered(stack, *overrides, secrets=secrets))]


def test_default_target_versions():
    assert DEFAULT_VERSIONS == ("1.30", "1.33")


@pytest.mark.parametrize("overrides", VARIANTS, ids=["-".join(v.split("=")[1] or "any" for v in o) for o in VARIANTS])
def test_every_variant_is_valid(stack, overrides):
    assert validation_errors(_documents(stack, *overrides)) == []


def test_with_secret_tolerations_and_env():
    docs = _documents(
        "prod",
        "job.tolerations[0].key=nvidia.com/gpu",
        "job.tolerations[0].operator=Exists",
        "job.env.WANDB_MODE=offline",
        secrets=("hfToken=hf_x", "modelscopeToken=ms_y"),
    )
    assert {d["kind"] for d in docs} == {"StorageClass", "Secret", "ConfigMap", "PersistentVolumeClaim", "Job", "NetworkPolicy"}
    assert validation_errors(docs) == []


def test_a_misspelt_field_is_caught():
    docs = _documents("dev")
    job = next(d for d in docs if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    errors = validation_errors([job])
    assert len(errors) == len(TARGET_VERSIONS)
    assert "volumeMount" in errors[0] and "sft-qwen3vl-fire-4gpu" in errors[0]
