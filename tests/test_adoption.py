"""Adopting the runbook's kubectl-made StorageClass and PVC with `mlcache:adopt` (import_)."""

from __future__ import annotations

import pytest

from mlcache.program.settings import ConfigError, parse_settings
from tests.conftest import only, rendered


def test_adopt_imports_the_class_and_the_pvc_with_their_kubernetes_ids():
    run = rendered("prod", "adopt=true")
    storage_class, pvc = only(run, "StorageClass"), only(run, "PersistentVolumeClaim")
    assert storage_class.import_id == "linstor-fast-cache"
    assert pvc.import_id == "ml-training/ms-swift-cache-pvc"
    # kubectl-made objects have none of our labels or annotations: the import compares the spec.
    for r in (storage_class, pvc):
        assert r.ignore_changes == ["metadata.labels", "metadata.annotations"]


def test_adopt_leaves_the_job_and_everything_else_to_be_created():
    run = rendered("prod", "adopt=true")
    assert only(run, "Job").import_id == "" and only(run, "NetworkPolicy").import_id == ""
    assert only(run, "PersistentVolumeClaim").protect  # still protected once adopted


def test_without_adopt_nothing_is_imported_or_ignored_but_the_caches_placement_record(stack):
    for r in rendered(stack).kubernetes_objects():
        record = ['metadata.annotations["mlcache/placement"]'] if r.kind == "PersistentVolumeClaim" else []
        assert r.import_id == "" and r.ignore_changes == record, r.name


def test_adopt_follows_configured_names():
    run = rendered("prod", "adopt=true", "cache.name=shared-cache", "linstor.storageClassName=fast-local")
    assert only(run, "StorageClass").import_id == "fast-local"
    assert only(run, "PersistentVolumeClaim").import_id == "ml-training/shared-cache"


def test_adopt_with_rook_ceph_imports_only_the_pvc():
    run = rendered("prod", "adopt=true", "backend=rook-ceph")
    assert run.find("StorageClass") == [] and only(run, "PersistentVolumeClaim").import_id


def test_adopt_needs_a_namespace():
    with pytest.raises(ConfigError) as err:
        parse_settings({"adopt": "true"})
    assert err.value.key == "mlcache:adopt" and "mlcache:namespace" in str(err.value)


def test_adopt_must_be_a_boolean():
    with pytest.raises(ConfigError, match="true or false"):
        parse_settings({"adopt": "yes", "namespace": "ml"})
