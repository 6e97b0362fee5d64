"""`mlcache access`: which rights a dry-run preview needs, and the report of those missing (the
answers of the API server itself are taken in tests/integration/test_access.py)."""

from __future__ import annotations

import pytest

from mlcache.cluster.access import NotServed, Rights, missing, needed, report
from mlcache.preview.render import as_json, render

RESOURCES = {
    ("storage.k8s.io/v1", "StorageClass"): ("storageclasses", False),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("v1", "Namespace"): ("namespaces", False),
}


def resource_of(api_version: str, kind: str) -> tuple[str, bool]:
    if (api_version, kind) not in RESOURCES:
        raise NotServed(f"the cluster does not serve {kind} ({api_version})")
    return RESOURCES[(api_version, kind)]


def manifests(stack: str) -> list[dict]:
    return [entry["manifest"] for entry in as_json(render(stack, [], [])[0])["objects"]]


def test_every_kind_the_render_holds_is_needed_once_in_its_namespace():
    objects = manifests("dev")
    wanted = needed(objects, resource_of, "default")
    assert {(r.kind, r.namespace) for r in wanted} >= {
        ("StorageClass", None),
        ("Job", "default"),  # dev sets no namespace: the context's
        ("PersistentVolumeClaim", "default"),
    }
    assert len(wanted) == len({o["kind"] for o in objects})
    assert next(r for r in wanted if r.kind == "Job").group == "batch"


def test_an_object_without_a_namespace_is_in_the_contexts():
    (rights,) = needed([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}], resource_of, "team-a")
    assert rights.namespace == "team-a"


def test_a_kind_the_cluster_does_not_serve_is_said():
    with pytest.raises(NotServed, match="JobSet"):
        needed([{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "x"}}], resource_of, "ns")


def test_the_report_names_each_denied_verb_and_says_what_the_preview_loses():
    wanted = [Rights("", "persistentvolumeclaims", "ml", "PersistentVolumeClaim"), Rights("batch", "jobs", "ml", "Job")]
    gaps = missing(wanted, lambda verb, rights: verb == "get" or rights.resource == "jobs")
    assert [gap.line() for gap in gaps] == ["create, patch persistentvolumeclaims in namespace ml"]
    text = report("dev", wanted, gaps)
    assert text.splitlines()[0].startswith("stack dev: pulumi preview cannot dry-run") and "PVC shrink" in text
    assert report("dev", wanted, []).startswith("stack dev: pulumi preview can dry-run every update")


def test_a_secret_kubeconfig_is_not_used_as_a_path_and_kubeconfig_is_said(monkeypatch, capsys):
    """Offline a secret `kubernetes:kubeconfig` is a placeholder: KUBECONFIG is used instead, saying so."""
    from mlcache.cli import access  # noqa: PLC0415
    from mlcache.preview.stack_config import SECURE_PLACEHOLDER  # noqa: PLC0415

    run, config = render("dev", [], [])
    config.values["kubernetes:kubeconfig"] = SECURE_PLACEHOLDER
    config.secret_keys.add("kubernetes:kubeconfig")
    monkeypatch.setattr("mlcache.preview.render.render_or_refuse", lambda *args: (run, config))
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert access.main(["--stack", "dev"]) == 3
    err = capsys.readouterr().err
    assert "kubernetes:kubeconfig is a secret" in err and "/nonexistent/kubeconfig" in err and SECURE_PLACEHOLDER not in err


def test_the_guards_reads_are_checked_and_a_reader_without_them_is_told_preview_and_up_fail():
    from mlcache.cluster.access import guard_gaps, guard_report  # noqa: PLC0415

    namespaced_reader = guard_gaps("ml", lambda verb, rights: rights.namespace == "ml" and verb in ("get", "list"))
    assert [gap.line() for gap in namespaced_reader] == [
        "get persistentvolumes (cluster-wide)",
        "list nodes (cluster-wide)",
        "get storageclasses.storage.k8s.io (cluster-wide)",
    ]
    assert guard_gaps("ml", lambda verb, rights: True) == []
    assert [gap.line() for gap in guard_gaps("ml", lambda verb, rights: verb == "get")][:2] == [
        "list persistentvolumeclaims in namespace ml",
        "list jobs.batch in namespace ml",
    ]
    text = guard_report("dev", namespaced_reader)
    assert "pulumi preview and pulumi up then fail before anything is registered" in text.splitlines()[0]
