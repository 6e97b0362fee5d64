"""Multi-node training (job.nodes > 1): one worker per node, each with its own zone-local cache
claim, all workers in one zone. Pure builders; the components call them.

No workload API gives each worker of a run-to-completion job its own claim (PyTorchJob and
Trainer share one pod template; JobSet's volumeClaimPolicies make one claim per template), so a
run is composed of one pod template per worker: N Jobs (engine `jobs`) or one JobSet with one
replicated job per worker (engine `jobset`).
"""

from __future__ import annotations

from typing import Any

from components.common import metadata
from names import (
    HOSTNAME_LABEL,
    MULTINODE_RUN_LABEL,
    WORKER_LABEL,
    WORKERS_POLICY,
    ZONE_LABEL,
    replicated_job_name,
    worker_hostname,
    workers_service_name,
)

# torchrun's default rendezvous port.
MASTER_PORT = 29500
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"


def master_addr(run_name: str, engine: str) -> str:
    """Worker 0, reachable by name through the headless Service (resolved in the pod's namespace)."""
    return f"{worker_hostname(run_name, 0, engine)}.{workers_service_name(run_name)}"


def launch_env(nodes: int, index: int, master: str, gpus: int) -> dict[str, str]:
    """ms-swift's static multi-node launch (torchrun with a fixed rendezvous on worker 0)."""
    return {
        "NNODES": str(nodes),
        "NODE_RANK": str(index),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(MASTER_PORT),
        "NPROC_PER_NODE": str(gpus),
    }


def worker_labels(run_name: str, index: int) -> dict[str, str]:
    return {MULTINODE_RUN_LABEL: run_name, WORKER_LABEL: str(index)}


def worker_affinity(run_name: str, index: int, pinned: bool) -> dict[str, Any]:
    """Pod (anti-)affinities that keep a run's workers in one zone, one worker per node.

    One node per worker: no pod of another worker of this run on the same host (a worker's
    benchmark shares its node, it reads the same cache). Unpinned, one zone: every pod of the run
    selects every other (not only worker 0), so whichever lands first chooses the zone; the
    first one matches its own term, which the scheduler accepts when no peer exists yet.
    Pinned, the zone node affinity every worker already carries is the one zone.
    """
    other_workers = {
        "matchLabels": {MULTINODE_RUN_LABEL: run_name},
        "matchExpressions": [{"key": WORKER_LABEL, "operator": "NotIn", "values": [str(index)]}],
    }
    affinity: dict[str, Any] = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": other_workers, "topologyKey": HOSTNAME_LABEL}]
        }
    }
    if not pinned:
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {MULTINODE_RUN_LABEL: run_name}}, "topologyKey": ZONE_LABEL}
            ]
        }
    return affinity


def as_worker(pod_template: dict[str, Any], run_name: str, index: int, pinned: bool) -> dict[str, Any]:
    """A copy of a pod template (training or benchmark) placed as worker `index` of the run."""
    # Copied along the changed paths only: the template holds Outputs (claim names), which do not deep-copy.
    spec = pod_template["spec"]
    labels = {**pod_template["metadata"]["labels"], **worker_labels(run_name, index)}
    return {
        **pod_template,
        "metadata": {**pod_template["metadata"], "labels": labels},
        "spec": {**spec, "affinity": {**spec.get("affinity", {}), **worker_affinity(run_name, index, pinned)}},
    }


def with_launch(
    pod_template: dict[str, Any], container_name: str, *, run_name: str, index: int, nodes: int, gpus: int, engine: str
) -> dict[str, Any]:
    """The training pod template of worker `index`: launch env and, for engine jobs, its stable
    hostname in the headless Service's subdomain (JobSet sets both itself)."""
    env = launch_env(nodes, index, master_addr(run_name, engine), gpus)

    def launched(container: dict[str, Any]) -> dict[str, Any]:
        if container["name"] != container_name:
            return container
        kept = [e for e in container["env"] if e["name"] not in env]
        return {**container, "env": kept + [{"name": name, "value": value} for name, value in env.items()]}

    spec = {**pod_template["spec"], "containers": [launched(c) for c in pod_template["spec"]["containers"]]}
    if engine == "jobs":
        spec["hostname"] = worker_hostname(run_name, index, engine)
        spec["subdomain"] = workers_service_name(run_name)
    return {**pod_template, "spec": spec}


def headless_service_manifest(
    run_name: str, namespace: str | None, selector: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Stable DNS names for the workers (engine jobs). Not-ready addresses are published: a
    worker must resolve worker 0 before any readiness could be reported."""
    return {
        "metadata": metadata(workers_service_name(run_name), namespace, annotations=annotations),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": dict(selector)},
    }


def peer_ingress_manifest(namespace: str | None, annotations: dict[str, str] | None) -> dict[str, Any]:
    """The one exception to the cache pods' ingress isolation: the workers of multi-node runs reach
    each other (rendezvous on MASTER_PORT, then NCCL on ports it picks). Selected by the label's
    presence, not the run's name, so no setting flows into it (a secret job.name stays out)."""
    workers = {"matchExpressions": [{"key": MULTINODE_RUN_LABEL, "operator": "Exists"}]}
    return {
        "metadata": metadata(WORKERS_POLICY, namespace, annotations=annotations),
        "spec": {"podSelector": workers, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": workers}]}]},
    }


def jobset_manifest(
    run_name: str,
    namespace: str | None,
    worker_jobs: list[dict[str, Any]],
    *,
    max_restarts: int,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    """One JobSet, one replicated job per worker (one replica each, since each has its own claim).

    All or nothing: a worker's Job fails at its first failed pod (backoffLimit 0) and JobSet then
    re-creates every worker's Job, up to `max_restarts` times; the run succeeds when all complete.
    """
    replicated = []
    for index, job in enumerate(worker_jobs):
        spec = {**job["spec"], "backoffLimit": 0, "completions": 1, "parallelism": 1}
        replicated.append(
            {"name": replicated_job_name(index), "replicas": 1, "template": {"metadata": {"labels": dict(labels)}, "spec": spec}}
        )
    return {
        "apiVersion": JOBSET_API_VERSION,
        "kind": "JobSet",
        "metadata": metadata(run_name, namespace, labels=labels, annotations=annotations),
        "spec": {
            "network": {
                "enableDNSHostnames": True,
                "publishNotReadyAddresses": True,
                "subdomain": workers_service_name(run_name),
            },
            "successPolicy": {"operator": "All"},
            "failurePolicy": {"maxRestarts": max_restarts},
            "replicatedJobs": replicated,
        },
    }
