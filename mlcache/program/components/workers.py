"""Multi-node training (job.nodes > 1): one worker per node, each with its own zone-local cache
claim, all workers in one zone. Pure builders; the components call them.

No workload API gives each worker of a run-to-completion job its own claim (PyTorchJob and
Trainer share one pod template; JobSet's volumeClaimPolicies make one claim per template), so a
run is composed of one pod template per worker: N Jobs (engine `jobs`) or one JobSet with one
replicated job per worker (engine `jobset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlcache.program.components.common import metadata
from mlcache.program.names import (
    HOSTNAME_LABEL,
    MULTINODE_RUN_LABEL,
    WORKER_LABEL,
    WORKERS_POLICY,
    ZONE_LABEL,
    replicated_job_name,
    worker_hostname,
    worker_job_name,
    workers_service_name,
)

# torchrun's default rendezvous port.
MASTER_PORT = 29500
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"


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
PEER_STOP_SKIP = {
    "CKV_K8S_38": "engine jobs, several nodes: a failed worker ends its peers' Jobs through the API; its "
    "ServiceAccount may only get and patch this run's worker Jobs"
}


@dataclass(frozen=True)
class Worker:
    """Worker `index` of a multi-node run of `nodes` workers: the facts its pods are built from
    (the training pod and, before it, the benchmark that binds its claim)."""

    run_name: str
    index: int
    nodes: int
    engine: str  # "jobs" (one Job per worker, ours to connect) or "jobset" (JobSet connects them)
    pinned: bool  # mlcache:zone set: the zone is fixed, no need to follow the first worker

    @property
    def labels(self) -> dict[str, str]:
        return worker_labels(self.run_name, self.index)

    @property
    def affinity(self) -> dict[str, Any]:
        return worker_affinity(self.run_name, self.index, self.pinned)

    def launch_env(self, gpus: int) -> dict[str, str]:
        return launch_env(self.nodes, self.index, master_addr(self.run_name, self.engine), gpus)

    @property
    def ends_peers(self) -> bool:
        """Engine jobs: nothing above the Jobs ends a run whose worker failed, so its wrapper does."""
        return self.engine == "jobs"

    @property
    def peers(self) -> list[str]:
        return [worker_job_name(self.run_name, i) for i in range(self.nodes) if i != self.index]

    @property
    def network(self) -> dict[str, str]:
        """Engine jobs: the worker's stable name in the headless Service (JobSet sets it itself)."""
        if self.engine != "jobs":
            return {}
        return {
            "hostname": worker_hostname(self.run_name, self.index, self.engine),
            "subdomain": workers_service_name(self.run_name),
        }


def run_workers(run_name: str, nodes: int, engine: str, pinned: bool) -> list[Worker]:
    return [Worker(run_name, index, nodes, engine, pinned) for index in range(nodes)]


def service_account_name(run_name: str) -> str:
    """The workers' ServiceAccount (engine jobs): it may end the run's other worker Jobs."""
    return f"{run_name}-workers"


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
