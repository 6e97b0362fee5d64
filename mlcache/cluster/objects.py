"""Pure helpers over live API objects (plain dicts, camelCase keys, as the API returns them):
node selection and affinity, resource requests, what is free on a node, events.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mlcache.cluster.bound_cache import get as _get
from mlcache.program.names import (
    GPU_PRODUCT_LABEL,
    HOSTNAME_LABEL,
)

# Requests every pod makes; anything else a pod requests (GPUs) is an extended resource.
STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "pods"}


def pv_constraints(pv: dict) -> dict[str, set[str]]:
    """Label key -> allowed values from the PV's required node affinity (ORed terms merged)."""
    allowed: dict[str, set[str]] = {}
    for term in _get(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("operator") == "In":
                allowed.setdefault(expression["key"], set()).update(expression.get("values") or [])
    return allowed


def node_satisfies(node: dict, constraints: dict[str, set[str]]) -> bool:
    labels = _get(node, "metadata", "labels") or {}
    name = _get(node, "metadata", "name")
    for key, values in constraints.items():
        value = name if key == HOSTNAME_LABEL and key not in labels else labels.get(key)
        if value not in values:
            return False
    return True


def event_time(event: dict) -> datetime:
    """When an event (core/v1 or events.k8s.io shape) was last seen."""
    stamp = (
        _get(event, "series", "lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or _get(event, "metadata", "creationTimestamp")
    )
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return datetime.fromisoformat(stamp) if stamp else datetime.min.replace(tzinfo=UTC)


def events_about(obj: dict, events: list[dict], reason: str) -> list[dict]:
    """Events with this reason about this object, oldest first."""
    name, uid = _get(obj, "metadata", "name"), _get(obj, "metadata", "uid")
    found = [
        event
        for event in events
        if event.get("reason") == reason
        and _get(event, "involvedObject", "name") == name
        and (uid is None or _get(event, "involvedObject", "uid") in (None, uid))
    ]
    return sorted(found, key=event_time)


def _requirement_holds(labels: dict[str, str], expression: dict) -> bool:
    key, values = expression.get("key"), expression.get("values") or []
    value = labels.get(key) if key is not None else None  # no key: no label's value
    operator = expression.get("operator")
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and values:
        try:
            return int(value) > int(values[0]) if operator == "Gt" else int(value) < int(values[0])
        except ValueError:
            return False
    return False


def term_matches(node: dict, term: dict) -> bool:
    """A node selector term as the scheduler reads it: expressions ANDed, on labels and fields."""
    labels = _get(node, "metadata", "labels") or {}
    fields = {"metadata.name": _get(node, "metadata", "name")}
    return all(_requirement_holds(labels, e) for e in term.get("matchExpressions") or []) and all(
        _requirement_holds(fields, e) for e in term.get("matchFields") or []
    )


def selector_matches(node: dict, terms: list[dict]) -> bool:
    """Node selector terms are ORed; no terms means any node."""
    return not terms or any(term_matches(node, term) for term in terms)


def tolerates(toleration: dict, taint: dict) -> bool:
    """Kubernetes' ToleratesTaint: the effect (empty: every effect), then the key (empty with
    Exists: every key), then the value (Exists: any; Equal, the default: the same)."""
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    if toleration.get("key") and toleration.get("key") != taint.get("key"):
        return False
    if toleration.get("operator") == "Exists":
        return True
    return bool(toleration.get("key")) and (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taints(pod: dict, node: dict) -> list[dict]:
    """The node's taints that keep the pod off it (NoSchedule, NoExecute) and that it does not tolerate."""
    tolerations = _get(pod, "spec", "tolerations") or []
    return [
        taint
        for taint in _get(node, "spec", "taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(tolerates(t, taint) for t in tolerations)
    ]


def pod_node_terms(pod: dict) -> list[dict]:
    return (
        _get(pod, "spec", "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms") or []
    )


def pod_fits_labels(pod: dict, node: dict, ignore: Collection[str] = frozenset()) -> bool:
    """Whether the pod's nodeSelector and required node affinity admit the node (keys in
    `ignore` left out, e.g. the zone, to ask "where else would it fit")."""
    labels = _get(node, "metadata", "labels") or {}
    selector = _get(pod, "spec", "nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items() if key not in ignore):
        return False
    terms = [
        {**term, "matchExpressions": [e for e in term.get("matchExpressions") or [] if e.get("key") not in ignore]}
        for term in pod_node_terms(pod)
    ]
    return selector_matches(node, terms)


def quantity(value: Any) -> Decimal:
    from kubernetes.utils.quantity import parse_quantity  # noqa: PLC0415  (imports the client: only when needed)

    return parse_quantity(value)


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """What the scheduler counts for a pod: the sum over its containers, or the largest init
    container's request if that is more."""
    total: dict[str, Decimal] = {}
    for container in _get(pod, "spec", "containers") or []:
        for name, value in (_get(container, "resources", "requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    for container in _get(pod, "spec", "initContainers") or []:
        for name, value in (_get(container, "resources", "requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), quantity(value))
    return total


def pods_on(node_name: str, bound_pods: list[dict]) -> list[dict]:
    """Pods that hold resources on the node (bound, not finished)."""
    return [
        p
        for p in bound_pods
        if _get(p, "spec", "nodeName") == node_name and _get(p, "status", "phase") not in ("Succeeded", "Failed")
    ]


def free_on(node: dict, bound_pods: list[dict]) -> dict[str, Decimal]:
    """Allocatable minus what the pods on the node request."""
    free = {name: quantity(value) for name, value in (_get(node, "status", "allocatable") or {}).items()}
    for pod in pods_on(_get(node, "metadata", "name"), bound_pods):
        for name, value in pod_requests(pod).items():
            if name in free:
                free[name] -= value
    return free


def amount_text(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value)


def pod_label(pod: dict) -> str:
    return f"{_get(pod, 'metadata', 'namespace') or 'default'}/{_get(pod, 'metadata', 'name')}"


def volume_nodes(pv: dict, nodes: dict[str, dict]) -> list[str] | None:
    """Nodes the PV's required node affinity admits, or None when it has none (network storage)."""
    terms = _get(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms")
    if not terms:
        return None
    return sorted(name for name, node in nodes.items() if selector_matches(node, terms))


def mounts_claim(pod: dict, claim: str) -> bool:
    return any(_get(v, "persistentVolumeClaim", "claimName") == claim for v in _get(pod, "spec", "volumes") or [])


def wants_gpu(pod: dict) -> bool:
    requests_gpu = any(r not in STANDARD_RESOURCES for r in pod_requests(pod))
    return requests_gpu or any(
        e.get("key") == GPU_PRODUCT_LABEL for t in pod_node_terms(pod) for e in t.get("matchExpressions") or []
    )


TERMINAL = ("Succeeded", "Failed")


def requested(pod: dict, resource: str) -> int:
    total = 0
    for container in _get(pod, "spec", "containers") or []:
        value = _get(container, "resources", "requests", resource)
        total += int(value) if value is not None else 0
    return total
