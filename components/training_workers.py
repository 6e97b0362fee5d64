"""Multi-node training (job.nodes > 1): the training Job's pod template once per worker, each on
its own cache claim, all in one zone, launched as one ms-swift run (see components/workers.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cache_pod import CachePod
from components.common import constructor_kwargs, metadata
from components.hub_credentials import HubCredentials, secret_env
from components.security import checkov_skips, namespace_skip, with_checkov_skips
from components.training_job import (
    APP_LABEL,
    BLOCK_MODE_WARNING,
    CONTAINER,
    completion_marker,
    job_options,
    run_once_script,
    training_job_manifest,
)
from components.workers import (
    as_worker,
    headless_service_manifest,
    jobset_manifest,
    peer_ingress_manifest,
    with_launch,
)
from names import QUEUE_LABEL, RUN_LABEL, SKIP_AWAIT, replicated_job_name, worker_job_name
from settings import JobSettings

# The provider's await for a custom resource: the JobSet's own Completed condition.
JOBSET_WAIT_FOR = {"pulumi.com/waitFor": "condition=Completed"}

# Engine jobs: a worker whose training fails ends the run's other workers, with core Kubernetes
# only. It sets activeDeadlineSeconds: 1 on their Jobs (a mutable field), so the job controller
# fails them (DeadlineExceeded) and stops their pods. Its ServiceAccount may get and patch exactly
# those Jobs, nothing else.
STOP_PEERS_PY = """\
import json, os, ssl, sys, urllib.request
sa = os.environ.get("MLCACHE_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
def read(name):
    with open(os.path.join(sa, name)) as f:
        return f.read().strip()
api = "https://%s:%s" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))
body = json.dumps({"spec": {"activeDeadlineSeconds": 1}}).encode()
for job in sys.argv[1:]:
    url = "%s/apis/batch/v1/namespaces/%s/jobs/%s" % (api, read("namespace"), job)
    headers = {"Authorization": "Bearer " + read("token"), "Content-Type": "application/merge-patch+json"}
    urllib.request.urlopen(urllib.request.Request(url, body, headers, method="PATCH"), context=context, timeout=10)
    print("mlcache: ended worker Job " + job, flush=True)
"""
STOP_PEERS = f"""\
if [ "$status" -ne 0 ] && [ -n "$MLCACHE_PEER_JOBS" ]; then
  echo "mlcache: this worker failed (exit $status): ending the run's other workers: $MLCACHE_PEER_JOBS"
  python3 - $MLCACHE_PEER_JOBS <<'MLCACHE_PY' || echo "mlcache: could not end the other workers (torch ends them)"
{STOP_PEERS_PY}MLCACHE_PY
fi
"""
UNPINNED_WARNING = (
    "job.nodes is {nodes} and mlcache:zone is unset: the first worker the scheduler places chooses the zone "
    "for the whole run, without knowing the others. In a zone with fewer than {nodes} free {product} nodes "
    "the other workers wait (Pending). Pin mlcache:zone to a zone with room; `mlcache rehearse` shows "
    "where a run lands, `mlcache verify` which zone would fit."
)
TOKEN_SKIP = {
    "CKV_K8S_38": "engine jobs, several nodes: a failed worker ends its peers' Jobs through the API; its "
    "ServiceAccount may only get and patch this run's worker Jobs"
}


def queue_labels(job: JobSettings) -> dict[str, str]:
    return {QUEUE_LABEL: job.queue} if job.queue else {}


def worker_job_manifests(
    pod: CachePod, claim_names: list[pulumi.Input[str]], token_env: list[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """One Job per worker: the single-node training Job with the worker's claim, labels,
    affinities and launch env. A worker's Job fails at its first failed pod (backoffLimit 0):
    one worker restarted alone cannot rejoin a torch group that is already running."""
    job = pod.job
    manifests = []
    for index, claim_name in enumerate(claim_names):
        manifest = training_job_manifest(dataclasses.replace(pod, claim_name=claim_name), token_env)
        template = as_worker(manifest["spec"]["template"], job.run_name, index, pinned=pod.placement.zone is not None)
        template = with_launch(
            template, CONTAINER, run_name=job.run_name, index=index, nodes=job.nodes, gpus=job.gpus, engine=job.engine
        )
        if job.engine == "jobs":
            template = with_peer_stop(template, job, index)
            manifest["metadata"]["annotations"] = with_checkov_skips(manifest["metadata"]["annotations"], TOKEN_SKIP)
        manifest["metadata"]["name"] = worker_job_name(job.run_name, index)
        manifest["metadata"]["labels"].update(queue_labels(job))
        manifest["spec"] = {**manifest["spec"], "backoffLimit": 0, "template": template}
        manifests.append(manifest)
    return manifests


def service_account_name(job: JobSettings) -> str:
    return f"{job.run_name}-workers"


def with_peer_stop(template: dict[str, Any], job: JobSettings, index: int) -> dict[str, Any]:
    """Engine jobs: the worker's wrapper ends the other workers' Jobs when its training fails."""
    peers = " ".join(worker_job_name(job.run_name, i) for i in range(job.nodes) if i != index)

    def stopping(container: dict[str, Any]) -> dict[str, Any]:
        if container["name"] != CONTAINER or container["command"][:2] != ["/bin/sh", "-c"]:
            return container  # Block mode runs the command bare: no wrapper to end the others
        command = [*container["command"][:2], run_once_script(STOP_PEERS), *container["command"][3:]]
        return {**container, "command": command, "env": [*container["env"], {"name": "MLCACHE_PEER_JOBS", "value": peers}]}

    spec = template["spec"]
    spec = {
        **spec,
        "serviceAccountName": service_account_name(job),
        "automountServiceAccountToken": True,
        "containers": [stopping(c) for c in spec["containers"]],
    }
    return {**template, "spec": spec}


def peer_stop_rbac(
    job: JobSettings, namespace: str | None, service_account_namespace: pulumi.Input[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Role that lets a worker end its peers (get and patch on exactly the run's worker Jobs),
    and its binding to the workers' ServiceAccount."""
    name = service_account_name(job)
    jobs = [worker_job_name(job.run_name, i) for i in range(job.nodes)]
    rule = {"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": jobs, "verbs": ["get", "patch"]}
    role = {"metadata": metadata(name, namespace), "rules": [rule]}
    binding = {
        "metadata": metadata(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": service_account_namespace}],
    }
    return role, binding


class TrainingWorkers(pulumi.ComponentResource):
    """One ms-swift run on job.nodes nodes: per-worker Jobs (engine jobs) or one JobSet."""

    def __init__(
        self,
        name: str,
        pod: CachePod,
        *,
        claim_names: list[pulumi.Input[str]],
        credentials: HubCredentials | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:TrainingWorkers", name, None, opts)
        job, cache, namespace = pod.job, pod.cache, pod.namespace
        token_env = secret_env(credentials.secret_name, credentials.keys) if credentials else []
        manifests = worker_job_manifests(pod, claim_names, token_env)
        skips = checkov_skips(namespace_skip(namespace)) or None
        self.peer_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-peers",
            opts=pulumi.ResourceOptions(parent=self),
            **constructor_kwargs(peer_ingress_manifest(namespace, skips)),
        )
        if job.engine == "jobset":
            wait = JOBSET_WAIT_FOR if job.wait_for_completion else SKIP_AWAIT
            jobset = jobset_manifest(
                job.run_name,
                namespace,
                manifests,
                max_restarts=job.backoff_limit,
                labels={**APP_LABEL, **queue_labels(job)},
                annotations=dict(wait),
            )
            # JobSet refuses most spec updates: a changed run is a new JobSet.
            options = job_options(self, job).merge(pulumi.ResourceOptions(replace_on_changes=["spec"]))
            self.jobset = k8s.apiextensions.CustomResource(
                f"{name}-jobset",
                api_version=jobset["apiVersion"],
                kind=jobset["kind"],
                metadata=jobset["metadata"],
                spec=jobset["spec"],
                opts=options,
            )
            self.name = self.jobset.metadata["name"]
            # The Jobs JobSet makes: <jobset>-<replicated job>-<job index>.
            self.names = [f"{job.run_name}-{replicated_job_name(i)}-0" for i in range(job.nodes)]
        else:
            selector = {RUN_LABEL: job.run_name}
            self.service = k8s.core.v1.Service(
                f"{name}-service",
                opts=pulumi.ResourceOptions(parent=self),
                **constructor_kwargs(headless_service_manifest(job.run_name, namespace, selector, skips)),
            )
            account = {"metadata": metadata(service_account_name(job), namespace), "automountServiceAccountToken": False}
            self.service_account = k8s.core.v1.ServiceAccount(
                f"{name}-account", opts=pulumi.ResourceOptions(parent=self), **constructor_kwargs(account)
            )
            role, binding = peer_stop_rbac(job, namespace, self.service_account.metadata.namespace)
            self.role = k8s.rbac.v1.Role(f"{name}-role", opts=pulumi.ResourceOptions(parent=self), **constructor_kwargs(role))
            self.role_binding = k8s.rbac.v1.RoleBinding(
                f"{name}-role-binding", opts=pulumi.ResourceOptions(parent=self), **constructor_kwargs(binding)
            )
            self.jobs = [
                k8s.batch.v1.Job(f"{name}-worker-{index}", opts=job_options(self, job), **constructor_kwargs(manifest))
                for index, manifest in enumerate(manifests)
            ]
            self.names = [j.metadata.name for j in self.jobs]
            self.name = self.names[0]
        if cache.is_block:
            pulumi.log.warn(BLOCK_MODE_WARNING.format(device=cache.device_path), resource=self)
        if pod.placement.zone is None:
            pulumi.log.warn(UNPINNED_WARNING.format(nodes=job.nodes, product=job.gpu_product), resource=self)
        self.run_marker = completion_marker(job, cache)
        self.register_outputs({"names": self.names, "run_marker": self.run_marker})
