"""`mlcache access` asks the API server itself: an admin may dry-run every update of the stack; a
ServiceAccount that may only read may not, and each missing right is named."""

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
    # A reader: get, list and watch on the namespaced kinds, nothing else (what a read-only CI role gives).
    rbac.create_namespaced_role(
        "default",
        client.V1Role(
            metadata=client.V1ObjectMeta(name="preview-reader"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["", "batch", "networking.k8s.io"],
                    resources=["configmaps", "persistentvolumeclaims", "jobs", "networkpolicies"],
                    verbs=["get", "list", "watch"],
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        "default",
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="preview-reader"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="preview-reader"),
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
    # It may read the namespaced objects but apply none; the cluster-scoped class it may not even read.
    # Exactly what docs/previews-and-ci.md shows.
    assert lines[1:] == [
        "  create, patch configmaps in namespace default",
        "  create, patch persistentvolumeclaims in namespace default",
        "  create, patch jobs.batch in namespace default",
        "  create, patch networkpolicies.networking.k8s.io in namespace default",
        "  get, create, patch storageclasses.storage.k8s.io (cluster-wide)",
        # And the program's guard, which reads before every preview and up, lacks the cluster-scoped reads.
        "stack dev: the program's bound-cache guard cannot read the cache's claims and Jobs with these credentials: "
        "pulumi preview and pulumi up then fail before anything is registered. Missing:",
        "  get persistentvolumes (cluster-wide)",
        "  list nodes (cluster-wide)",
        "  get storageclasses.storage.k8s.io (cluster-wide)",
    ], result.stdout
