"""`mlcache access` asks the API server itself: an admin may dry-run every update of the stack; a
ServiceAccount bound to the built-in `view` role may not, and each missing right is named."""

from __future__ import annotations

import os
import subprocess

import yaml
from kubernetes import client

from tests.integration.conftest import ROOT


def access(kubeconfig) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "venv" / "bin" / "mlcache"), "access", "--stack", "dev"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_admin_can_dry_run_and_a_viewer_cannot_with_what_is_missing_named(cluster, tmp_path):
    admin = access(cluster.kubeconfig)
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.startswith("stack dev: pulumi preview can dry-run every update on the API server")

    core, rbac = client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
    core.create_namespaced_service_account(
        "default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="preview-reader"))
    )
    rbac.create_namespaced_role_binding(
        "default",
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="preview-reader-view"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="preview-reader", namespace="default")],
        ),
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token("preview-reader", "default", request).status.token
    viewer = yaml.safe_load(cluster.kubeconfig.read_text())
    viewer["users"] = [{"name": "admin", "user": {"token": token}}]
    (tmp_path / "viewer").write_text(yaml.safe_dump(viewer))

    result = access(tmp_path / "viewer")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("stack dev: pulumi preview cannot dry-run on the API server with these credentials")
    # `view` reads namespaced objects (not Secrets) and applies nothing; cluster-scoped kinds not even read.
    assert "  create, patch persistentvolumeclaims in namespace default" in lines
    assert "  create, patch jobs.batch in namespace default" in lines
    assert "  get, create, patch storageclasses.storage.k8s.io (cluster-wide)" in lines
