"""Multi-node training (job.nodes > 1): the training Job's pod template once per worker, each on
its own cache claim, all in one zone, launched as one ms-swift run (see components/workers.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.cache_pod import CachePod
from mlcache.program.components.common import constructor_kwargs, metadata
from mlcache.program.components.hub_credentials import HubCredentials, SecretEnv, secret_env_entries
from mlcache.program.components.security import checkov_skips, namespace_skip
from mlcache.program.components.training_job import (
    APP_LABEL,
    BLOCK_MODE_WARNING,
    completion_marker,
    job_options,
    queue_labels,
    too_many_gpus_warning,
    training_job_manifest,
)
from mlcache.program.components.workers import (
    headless_service_manifest,
    jobset_manifest,
    peer_ingress_manifest,
    run_workers,
    service_account_name,
)
from mlcache.program.names import RUN_LABEL, SKIP_AWAIT, replicated_job_name, worker_job_name
from mlcache.program.settings import JobSettings, hide_secrets

# The provider's await for a custom resource: the JobSet's own Completed condition.
JOBSET_WAIT_FOR = {"pulumi.com/waitFor": "condition=Completed"}

UNPINNED_WARNING = (
    "job.nodes is {nodes} and mlcache:zone is unset: the first worker the scheduler places chooses the zone "
    "for the whole run, without knowing the others. In a zone with fewer than {nodes} free {product} nodes "
    "the other workers wait (Pending). Pin mlcache:zone to a zone with room; `mlcache rehearse` shows "
    "where a run lands, `mlcache verify` which zone would fit."
)


def worker_job_manifests(
    pod: CachePod, claim_names: list[pulumi.Input[str]], token_env: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """One Job per worker, each built as worker `index` on its own claim."""
    job = pod.job
    workers = run_workers(job.run_name, job.nodes, job.engine, pinned=pod.placement.zone is not None)
    return [
        training_job_manifest(dataclasses.replace(pod, claim_name=claim_name, worker=worker), token_env)
        for worker, claim_name in zip(workers, claim_names, strict=True)
    ]


def peer_stop_rbac(
    job: JobSettings, namespace: str | None, service_account_namespace: pulumi.Input[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Role that lets a worker end its peers (get and patch on exactly the run's worker Jobs),
    and its binding to the workers' ServiceAccount."""
    name = service_account_name(job.run_name)
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
        secret_env: SecretEnv | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:TrainingWorkers", name, None, opts)
        job, cache, namespace = pod.job, pod.cache, pod.namespace
        token_env = secret_env_entries(credentials, secret_env)
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
            account = {"metadata": metadata(service_account_name(job.run_name), namespace), "automountServiceAccountToken": False}
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
            pulumi.log.warn(BLOCK_MODE_WARNING, resource=self)
        if warning := too_many_gpus_warning(job):
            pulumi.log.warn(warning, resource=self)
        if pod.placement.zone is None:
            # Logs are kept in the clear, and job.gpuProduct may be a secret.
            warning = UNPINNED_WARNING.format(nodes=job.nodes, product=hide_secrets(job.gpu_product))
            pulumi.log.warn(warning, resource=self)
        self.run_marker = completion_marker(job, cache)
        self.register_outputs({"names": self.names, "run_marker": self.run_marker})
