"""Node constraints shared by every pod that mounts the cache."""

from __future__ import annotations

from typing import Any

from mlcache.program.names import GPU_PRODUCT_LABEL, HOSTNAME_LABEL, ZONE_LABEL
from mlcache.program.settings import JobSettings, Placement


def node_affinity(placement: Placement) -> dict[str, Any]:
    """Required node affinity: the GPU product and, when pinned, the zone.

    Terms are ORed and expressions within a term ANDed, so both constraints sit in the one
    term: two terms would let a pod land on any GPU node *or* any node of the zone.
    """
    expressions = [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [placement.gpu_product]}]
    if placement.zone:
        expressions.insert(0, {"key": ZONE_LABEL, "operator": "In", "values": [placement.zone]})
    return required_node_term(expressions)


def required_node_term(expressions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }


def tolerations(job: JobSettings) -> list[dict[str, Any]]:
    wire = []
    for t in job.tolerations:
        fields = {
            "key": t.key,
            "operator": t.operator,
            "value": t.value,
            "effect": t.effect,
            "tolerationSeconds": t.toleration_seconds,
        }
        wire.append({k: v for k, v in fields.items() if v is not None})
    return wire


def pod_scheduling(job: JobSettings, placement: Placement) -> dict[str, Any]:
    """Where the training pod may run: every other pod on the cache copies it exactly."""
    scheduling: dict[str, Any] = {"affinity": node_affinity(placement)}
    if job.tolerations:
        scheduling["tolerations"] = tolerations(job)
    if job.priority_class_name:
        scheduling["priorityClassName"] = job.priority_class_name
    return scheduling


# A cordoned node's taint. The data on a node-local volume can only be read on its node, and a
# cordon is often why the cache moves off it: like a DaemonSet's pods, the pods beside the volume
# still go there (a drain evicts them as it evicts any other pod).
CORDON_TOLERATION = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}


def node_pinning(job: JobSettings, hostnames: tuple[str, ...]) -> dict[str, Any]:
    """Where a pod beside a node-local volume may run: on its node(s) only, cordoned or not,
    tolerating what training tolerates (GPU taints). No priority class: such a pod holds no GPU."""
    expressions = [{"key": HOSTNAME_LABEL, "operator": "In", "values": list(hostnames)}]
    return {"affinity": required_node_term(expressions), "tolerations": [*tolerations(job), CORDON_TOLERATION]}


def training_resources(job: JobSettings) -> dict[str, Any]:
    """The training pod's resources, requests == limits: extended resources (GPUs) demand it,
    and it keeps the pod Guaranteed. A pod asking for exactly these fits only where training fits."""
    resources = {"cpu": job.cpu, "memory": job.memory, job.gpu_resource: str(job.gpus)}
    return {"requests": dict(resources), "limits": dict(resources)}
