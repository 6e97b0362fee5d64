"""Multi-node training (job.nodes > 1): the training Job's pod template once per worker, each on
its own cache claim, all in one zone, launched as one ms-swift run (see components/workers.py)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.common import SKIP_AWAIT, constructor_kwargs
from components.hub_credentials import HubCredentials, secret_env
from components.security import checkov_skips, namespace_skip
from components.training_job import APP_LABEL, CONTAINER, JOB_LABEL, completion_marker, job_manifest, job_options
from components.workers import (
    QUEUE_LABEL,
    as_worker,
    headless_service_manifest,
    jobset_manifest,
    peer_ingress_manifest,
    replicated_job_name,
    with_launch,
    worker_job_name,
)
from settings import CacheSettings, JobSettings, Placement

# The provider's await for a custom resource: the JobSet's own Completed condition.
JOBSET_WAIT_FOR = {"pulumi.com/waitFor": "condition=Completed"}


def queue_labels(job: JobSettings) -> dict[str, str]:
    return {QUEUE_LABEL: job.queue} if job.queue else {}


def worker_job_manifests(
    job: JobSettings,
    cache: CacheSettings,
    placement: Placement,
    namespace: str | None,
    claim_names: list[pulumi.Input[str]],
    token_env: list[dict[str, Any]] = (),
    scripts: pulumi.Input[str] | None = None,
) -> list[dict[str, Any]]:
    """One Job per worker: the single-node training Job with the worker's claim, labels,
    affinities and launch env. A worker's Job fails at its first failed pod (backoffLimit 0):
    one worker restarted alone cannot rejoin a torch group that is already running."""
    manifests = []
    for index, claim_name in enumerate(claim_names):
        manifest = job_manifest(job, cache, placement, namespace, claim_name, token_env, scripts)
        template = as_worker(manifest["spec"]["template"], job.run_name, index, pinned=placement.zone is not None)
        template = with_launch(
            template, CONTAINER, run_name=job.run_name, index=index, nodes=job.nodes, gpus=job.gpus, engine=job.engine
        )
        manifest["metadata"]["name"] = worker_job_name(job.run_name, index)
        manifest["metadata"]["labels"].update(queue_labels(job))
        manifest["spec"] = {**manifest["spec"], "backoffLimit": 0, "template": template}
        manifests.append(manifest)
    return manifests


class TrainingWorkers(pulumi.ComponentResource):
    """One ms-swift run on job.nodes nodes: per-worker Jobs (engine jobs) or one JobSet."""

    def __init__(
        self,
        name: str,
        job: JobSettings,
        *,
        cache: CacheSettings,
        placement: Placement,
        namespace: str | None,
        claim_names: list[pulumi.Input[str]],
        credentials: HubCredentials | None = None,
        scripts: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:TrainingWorkers", name, None, opts)
        token_env = secret_env(credentials.secret_name, credentials.keys) if credentials else []
        manifests = worker_job_manifests(job, cache, placement, namespace, claim_names, token_env, scripts)
        skips = checkov_skips(namespace_skip(namespace)) or None
        self.peer_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-peers",
            opts=pulumi.ResourceOptions(parent=self),
            **constructor_kwargs(peer_ingress_manifest(f"{job.run_name}-peers", job.run_name, namespace, skips)),
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
            selector = {JOB_LABEL: job.run_name}
            self.service = k8s.core.v1.Service(
                f"{name}-service",
                opts=pulumi.ResourceOptions(parent=self),
                **constructor_kwargs(headless_service_manifest(job.run_name, namespace, selector, skips)),
            )
            self.jobs = [
                k8s.batch.v1.Job(f"{name}-worker-{index}", opts=job_options(self, job), **constructor_kwargs(manifest))
                for index, manifest in enumerate(manifests)
            ]
            self.names = [j.metadata.name for j in self.jobs]
            self.name = self.names[0]
        self.run_marker = completion_marker(job, cache)
        self.register_outputs({"names": self.names, "run_marker": self.run_marker})
