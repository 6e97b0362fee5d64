"""Check a deployed stack against the live cluster: the runbook's troubleshooting and
performance checks, automated.

    mlcache verify --stack STACK [--config KEY=VALUE]... [--context CONTEXT]

Reads the PVC, its PV, the training pod(s) and the nodes with the kubernetes client (your
kubeconfig), then decides with pure functions (`diagnose`): PVC phase (Pending is expected
before the first consumer under WaitForFirstConsumer), the class it used, the PV's node
affinity, the training pod's node and zone, and whether pod and volume share node and zone.
It also recognises node loss: the volume's only node is NotReady or gone, so the pod that
mounts the claim cannot be placed; it says what is lost and the command that heals it.
Exit 0 when everything holds, 1 on a mismatch (with the runbook's remedy), 2 on bad usage or
config, 3 when the cluster cannot be read (no kubeconfig, unreachable, forbidden).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bound_cache import (
    FAILED,
    VERIFIED,
    PlacementRecord,
    cache_generations,
    copy_state,
    has_taint,
    mounted_claims,
    node_zone,
    pinned_node_names,
    ready_condition,
)
from bound_cache import get as _get
from names import (
    COPY_LABEL,
    COPY_ROLE_LABEL,
    GPU_PRODUCT_LABEL,
    HOSTNAME_LABEL,
    MULTINODE_RUN_LABEL,
    OUT_OF_SERVICE_TAINT,
    PLACEMENT_ANNOTATION,
    RUN_LABEL,
    WORKER_LABEL,
    ZONE_LABEL,
    cache_name_of,
    copy_name,
)
from tools.cli import ArgumentParser, Unreachable, UsageError, entry_point
from tools.main import prog
from verification import linstor_resources_command

# Requests every pod makes; anything else a pod requests (GPUs) is an extended resource.
STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "pods"}
# Seconds per API request: an unreachable server fails the tool instead of hanging it.
REQUEST_TIMEOUT = 15
# How kube-scheduler says a bound volume's node affinity rules a node out (1.34 uses both).
VOLUME_CONFLICT = ("volume node affinity conflict", "didn't match PersistentVolume's node affinity")
OK, INFO, FAIL = "ok", "info", "FAIL"


@dataclass(frozen=True)
class Expectation:
    """What the stack asked for (from its outputs)."""

    pvc: str
    namespace: str
    storage_class: str
    backend: str
    zone: str | None
    job: str | None
    run: RunExpectation | None = None
    stack: str = "STACK"


@dataclass(frozen=True)
class RunExpectation:
    """A multi-node run (job.nodes > 1): its workers, each with its own cache claim."""

    name: str
    claims: tuple[str, ...]
    gpu_product: str
    gpu_resource: str
    gpus: int
    jobs: tuple[str, ...] = ()  # each worker's Job
    benchmark_jobs: tuple[str, ...] = ()

    @property
    def nodes(self) -> int:
        return len(self.claims)


@dataclass
class Snapshot:
    """The live objects as the API returns them (plain dicts, camelCase keys)."""

    pvc: dict | None
    pv: dict | None = None
    pods: list[dict] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)
    # Every pod bound to a node, any namespace (who holds the GPUs), and the events of the
    # stack's namespace (the scheduler's FailedScheduling verdicts): optional, for the reasons.
    bound_pods: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Finding:
    level: str
    check: str
    message: str
    remedy: str = ""


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


def scheduling_message(pod: dict, events: list[dict] = ()) -> str | None:
    """The scheduler's own reason a pod is not placed: its latest FailedScheduling event, else
    the PodScheduled condition it wrote."""
    failed = events_about(pod, list(events), "FailedScheduling")
    if failed and not _get(pod, "spec", "nodeName"):
        return failed[-1].get("message") or failed[-1].get("note")
    for condition in _get(pod, "status", "conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def lost_volume_node(snapshot: Snapshot) -> tuple[str, str] | None:
    """(node, how) when the volume's only node is gone or NotReady; None otherwise.

    A node with no Ready condition at all has not reported yet and is not judged."""
    pinned = pinned_node_names(snapshot.pv)
    if len(pinned) != 1:
        return None
    (name,) = pinned
    node = snapshot.nodes.get(name)
    if node is None:
        return name, "gone (its Node object no longer exists)"
    condition = ready_condition(node)
    if condition is None or condition.get("status") == "True":
        return None
    since = condition.get("lastTransitionTime") or "?"
    reason = "the kubelet stopped reporting" if condition.get("status") == "Unknown" else condition.get("reason") or "NotReady"
    marked = ", marked out-of-service" if has_taint(node, OUT_OF_SERVICE_TAINT) else ""
    return name, f"NotReady (Ready={condition.get('status')} since {since}: {reason}{marked})"


def node_loss_finding(snapshot: Snapshot, expect: Expectation, lost: tuple[str, str]) -> Finding:
    node, how = lost
    stuck = [
        _get(p, "metadata", "name")
        for p in snapshot.pods
        if not _get(p, "spec", "nodeName") or _get(p, "spec", "nodeName") == node
    ]
    pods = f"; pod(s) {', '.join(stuck)} cannot be placed (the volume exists only there)" if stuck else ""
    return Finding(
        FAIL,
        "node loss",
        f"the only node of volume {_get(snapshot.pv, 'metadata', 'name')}, {node}, is {how}{pods}",
        "what is lost: only cache data (models and datasets, re-downloaded by the warm-up: the cache is "
        f"rebuildable); the training run restarts from its last checkpoint. Heal: `mlcache heal --stack "
        f"{expect.stack}` (a dry run that says what it would do), then the same with --apply.",
    )


def _requirement_holds(labels: dict[str, str], expression: dict) -> bool:
    value, values = labels.get(expression.get("key")), expression.get("values") or []
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


def pod_node_terms(pod: dict) -> list[dict]:
    return (
        _get(pod, "spec", "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms") or []
    )


def pod_fits_labels(pod: dict, node: dict, ignore: set[str] = frozenset()) -> bool:
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


def _amount(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value)


def _pod_label(pod: dict) -> str:
    return f"{_get(pod, 'metadata', 'namespace') or 'default'}/{_get(pod, 'metadata', 'name')}"


def volume_nodes(pv: dict, nodes: dict[str, dict]) -> list[str] | None:
    """Nodes the PV's required node affinity admits, or None when it has none (network storage)."""
    terms = _get(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms")
    if not terms:
        return None
    return sorted(name for name, node in nodes.items() if selector_matches(node, terms))


def mounts_claim(pod: dict, claim: str) -> bool:
    return any(_get(v, "persistentVolumeClaim", "claimName") == claim for v in _get(pod, "spec", "volumes") or [])


def _wants_gpu(pod: dict) -> bool:
    requests_gpu = any(r not in STANDARD_RESOURCES for r in pod_requests(pod))
    return requests_gpu or any(
        e.get("key") == GPU_PRODUCT_LABEL for t in pod_node_terms(pod) for e in t.get("matchExpressions") or []
    )


def stranded_volume(pod: dict, expect: Expectation, snapshot: Snapshot) -> tuple[str, str]:
    """Why a volume node affinity conflict: where the volume is, who put it there, what that
    node lacks for this pod. Returns (explanation, remedy)."""
    remedy = (
        "PVC bound elsewhere. Delete the PVC and let the training pod create it (runbook step 2: this deletes the cached data)"
    )
    where = volume_nodes(snapshot.pv, snapshot.nodes) if snapshot.pv else None
    if not where:
        return (
            "the volume was created on a node (or zone) the pod cannot use",
            remedy + ", or pin mlcache:zone to the volume's zone.",
        )
    explanation = "the volume is on " + ", ".join(f"{n} (zone {node_zone(snapshot.nodes[n])})" for n in where)
    consumers = [
        p
        for p in snapshot.bound_pods
        if _get(p, "spec", "nodeName") in where
        and mounts_claim(p, expect.pvc)
        and (_get(p, "metadata", "namespace") or expect.namespace) == expect.namespace
    ]
    if consumers:
        consumer = consumers[0]
        explanation += f", where its consumer {_pod_label(consumer)} runs"
        if not _wants_gpu(consumer):
            explanation += " (no GPU request, no GPU affinity: it bound the volume wherever it landed)"
            remedy += (
                "; benchmark with `benchmark.enabled: true`, whose pod asks for the training pod's GPUs and placement, "
                "never with a hand-made pod"
            )
    needs = pod_requests(pod)
    for node_name in where:
        node = snapshot.nodes[node_name]
        free = free_on(node, snapshot.bound_pods)
        short = [
            f"{_amount(free.get(r, Decimal(0)))} of {_amount(q)} {r} free"
            for r, q in needs.items()
            if free.get(r, Decimal(0)) < q
        ]
        if not pod_fits_labels(pod, node, ignore={ZONE_LABEL}):
            product = (_get(node, "metadata", "labels") or {}).get(GPU_PRODUCT_LABEL, "none")
            explanation += f"; {node_name} does not match the pod's node affinity ({GPU_PRODUCT_LABEL}={product})"
        elif short:
            explanation += f"; {node_name} has {', '.join(short)}"
        elif not pod_fits_labels(pod, node):
            remedy += f", or pin mlcache:zone={node_zone(node)} to keep the data ({node_name} has room)"
    return explanation, remedy + "."


def capacity_shortage(pod: dict, expect: Expectation, snapshot: Snapshot) -> tuple[str, str] | None:
    """When the nodes the pod may use lack an extended resource (GPUs): who holds it, and where
    else the pod would fit. None without node allocatable data (a plain snapshot)."""
    needs = pod_requests(pod)
    extended = {r: q for r, q in needs.items() if r not in STANDARD_RESOURCES}
    candidates = {n: node for n, node in snapshot.nodes.items() if pod_fits_labels(pod, node)}
    if not extended or not candidates or not any(_get(n, "status", "allocatable") for n in candidates.values()):
        return None
    resource, wanted = next(iter(extended.items()))
    scope = f"zone {expect.zone}" if expect.zone else "the cluster"
    product = next(
        (
            v
            for t in pod_node_terms(pod)
            for e in t.get("matchExpressions") or []
            if e.get("key") == GPU_PRODUCT_LABEL
            for v in e.get("values") or []
        ),
        None,
    )
    described, best = [], Decimal(0)
    for node_name in sorted(candidates):
        node = candidates[node_name]
        allocatable = quantity((_get(node, "status", "allocatable") or {}).get(resource, 0))
        free = free_on(node, snapshot.bound_pods).get(resource, Decimal(0))
        best = max(best, free)
        holders = [
            f"{_pod_label(p)} {_amount(pod_requests(p)[resource])}"
            for p in pods_on(node_name, snapshot.bound_pods)
            if pod_requests(p).get(resource)
        ]
        held = f" (held by {', '.join(holders)})" if holders else ""
        described.append(f"{node_name} {_amount(free)}/{_amount(allocatable)} free{held}")
    what = f"{product} " if product else ""
    explanation = (
        f"{scope}'s {what}{resource} capacity is taken: {'; '.join(described)}; the pod needs {_amount(wanted)} on one node"
    )
    elsewhere = []
    for node_name, node in sorted(snapshot.nodes.items()):
        if node_name in candidates or not pod_fits_labels(pod, node, ignore={ZONE_LABEL}):
            continue
        free = free_on(node, snapshot.bound_pods)
        if all(free.get(r, Decimal(0)) >= q for r, q in needs.items()):
            elsewhere.append((node_zone(node), node_name, free.get(resource, Decimal(0))))
    fixes = [f"free {resource} in {scope} (the pods holding it above)"]
    if 0 < best < wanted:
        fixes.append(f"lower job.gpus to {_amount(best)} (the most free on one node)")
    if expect.zone and elsewhere:
        zones = {}
        for zone, node_name, free in elsewhere:
            zones.setdefault(zone, f"{node_name}: {_amount(free)} free")
        fixes.append("pin a zone with room: " + ", ".join(f"mlcache:zone={z} ({n})" for z, n in sorted(zones.items())))
        fixes.append("or unset mlcache:zone to let the scheduler choose")
    return explanation, "; ".join(fixes)


def diagnose_pending_pod(pod: dict, expect: Expectation, snapshot: Snapshot) -> Finding:
    name = _get(pod, "metadata", "name")
    message = scheduling_message(pod, snapshot.events) or "not scheduled yet"
    if lost_volume_node(snapshot):
        return Finding(INFO, "pod scheduling", f"pod {name} is Pending: {message} (see node loss)")
    if any(words in message for words in VOLUME_CONFLICT):
        explanation, remedy = stranded_volume(pod, expect, snapshot)
        return Finding(FAIL, "pod scheduling", f"pod {name} is Pending: {message} -> {explanation}", remedy)
    if expect.zone and not any(node_zone(n) == expect.zone for n in snapshot.nodes.values()):
        return Finding(
            FAIL,
            "pod scheduling",
            f"pod {name} is Pending and no node is in zone {expect.zone}: {message}",
            f"no nodes in the requested zone: check `kubectl get nodes -l {ZONE_LABEL}={expect.zone}`, "
            "fix mlcache:zone, or unset it to let the scheduler choose.",
        )
    shortage = capacity_shortage(pod, expect, snapshot) if "Insufficient" in message else None
    if shortage:
        explanation, remedy = shortage
        return Finding(FAIL, "pod scheduling", f"pod {name} is Pending: {message} -> {explanation}", remedy)
    if "Insufficient" in message or "didn't match" in message:
        return Finding(
            FAIL,
            "pod scheduling",
            f"pod {name} is Pending: {message}",
            "insufficient resources (GPUs of job.gpuProduct, cpu, memory) in the zone, or no node matches the "
            "GPU product: `kubectl describe pod` for details; lower job.gpus, change job.gpuProduct or mlcache:zone.",
        )
    return Finding(INFO, "pod scheduling", f"pod {name} is Pending: {message}")


def diagnose(snapshot: Snapshot, expect: Expectation) -> list[Finding]:
    """Every check, in the runbook's order. Pure: the tests feed it recorded API objects."""
    findings: list[Finding] = []
    pvc = snapshot.pvc
    if pvc is None:
        return [Finding(FAIL, "pvc", f"PVC {expect.namespace}/{expect.pvc} not found", "run `pulumi up` for the stack")]
    phase = _get(pvc, "status", "phase")
    used_class = _get(pvc, "spec", "storageClassName")
    if used_class == expect.storage_class:
        findings.append(Finding(OK, "storage class", f"PVC uses {used_class}"))
    else:
        findings.append(
            Finding(
                FAIL,
                "storage class",
                f"PVC uses {used_class}, the stack expects {expect.storage_class}",
                "the PVC predates the backend switch: follow the rollback procedure in docs/operations-and-rollback.md",
            )
        )
    pods = sorted(snapshot.pods, key=lambda p: _get(p, "metadata", "creationTimestamp") or "")
    running = [p for p in pods if _get(p, "spec", "nodeName")]
    if phase == "Pending":
        if not pods:
            findings.append(
                Finding(OK, "pvc", "PVC is Pending: expected under WaitForFirstConsumer until the training pod is scheduled")
            )
        else:
            findings.append(Finding(INFO, "pvc", "PVC is Pending while its consumer is being scheduled"))
    elif phase == "Bound":
        findings.append(Finding(OK, "pvc", f"PVC is Bound to {_get(pvc, 'spec', 'volumeName')}"))
    else:
        findings.append(Finding(FAIL, "pvc", f"PVC phase is {phase}", "`kubectl describe pvc` for the provisioner's events"))

    constraints = pv_constraints(snapshot.pv) if snapshot.pv else {}
    if snapshot.pv is not None:
        shown = ", ".join(f"{k} in {sorted(v)}" for k, v in sorted(constraints.items())) or "none"
        level = OK if constraints or expect.backend != "linstor" else FAIL
        remedy = "" if level == OK else "a LINSTOR volume without node affinity allows remote access: check the class"
        findings.append(Finding(level, "pv node affinity", f"PV {_get(snapshot.pv, 'metadata', 'name')}: {shown}", remedy))
        pv_zones = constraints.get(ZONE_LABEL, set())
        if expect.zone and pv_zones and expect.zone not in pv_zones:
            findings.append(
                Finding(
                    FAIL,
                    "volume zone",
                    f"the volume is in {sorted(pv_zones)}, the stack pins {expect.zone}",
                    "the PVC was bound before the zone was pinned: recreate it (data loss) or pin the volume's zone",
                )
            )

    lost = lost_volume_node(snapshot)
    if lost:
        findings.append(node_loss_finding(snapshot, expect, lost))
    if expect.job and not pods:
        findings.append(Finding(INFO, "training pod", f"no pod of Job {expect.job} (finished and cleaned up, or not created)"))
    for pod in pods:
        if not _get(pod, "spec", "nodeName"):
            findings.append(diagnose_pending_pod(pod, expect, snapshot))
    for pod in running:
        name, node_name = _get(pod, "metadata", "name"), _get(pod, "spec", "nodeName")
        node = snapshot.nodes.get(node_name)
        zone = node_zone(node)
        findings.append(Finding(OK, "training pod", f"pod {name} runs on {node_name} in zone {zone}"))
        if expect.zone and zone != expect.zone:
            findings.append(
                Finding(FAIL, "pod zone", f"pod {name} is in zone {zone}, the stack pins {expect.zone}", "check job affinity")
            )
        if constraints and node is not None:
            # `duplicates` pairs the Finding below with the storage-class one by shape: one
            # Finding per check is data, not repeated logic.
            if node_satisfies(node, constraints):
                findings.append(Finding(OK, "locality", f"pod {name} and its volume share node {node_name} and zone {zone}"))
            else:
                findings.append(
                    Finding(
                        FAIL,
                        "locality",
                        f"pod {name} runs on {node_name} (zone {zone}) but the volume is pinned to {shown}",
                        "the pod reads the cache remotely: with allowRemoteVolumeAccess false this should not "
                        "schedule; check the class parameters and recreate the PVC next to the pod",
                    )
                )
        elif expect.backend != "linstor":
            findings.append(
                Finding(INFO, "locality", "rook-ceph: the volume is network storage; reads may cross zones (rollback path)")
            )
    if expect.backend == "linstor" and _get(pvc, "spec", "volumeName"):
        volume = _get(pvc, "spec", "volumeName")
        findings.append(
            Finding(
                INFO,
                "linstor replicas",
                linstor_resources_command(volume),
            )
        )
    return findings


TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker of a run is, and where its cache is."""

    worker: int
    claim: str
    pod: str | None
    node: str | None
    zone: str | None
    cache_nodes: tuple[str, ...]
    cache_zones: tuple[str, ...]
    pending: str | None  # the scheduler's reason, while the pod waits


def worker_placement(worker: int, claim: str, snapshot: Snapshot) -> WorkerPlacement:
    pods = sorted(snapshot.pods, key=lambda p: _get(p, "metadata", "creationTimestamp") or "")
    live = [p for p in pods if _get(p, "status", "phase") not in TERMINAL] or pods
    pod = live[-1] if live else None
    node = _get(pod, "spec", "nodeName") if pod else None
    # The nodes the volume's node affinity admits (whatever keys the driver wrote: LINSTOR's own
    # linbit.com/hostname, or the zone); none for network storage.
    cache_nodes = (volume_nodes(snapshot.pv, snapshot.nodes) or []) if snapshot.pv else []
    cache_zones = sorted({node_zone(snapshot.nodes.get(n)) or "?" for n in cache_nodes})
    return WorkerPlacement(
        worker=worker,
        claim=claim,
        pod=_get(pod, "metadata", "name") if pod else None,
        node=node,
        zone=node_zone(snapshot.nodes.get(node)) if node else None,
        cache_nodes=tuple(cache_nodes),
        cache_zones=tuple(cache_zones),
        pending=(scheduling_message(pod, snapshot.events) or "not scheduled yet") if pod and not node else None,
    )


def requested(pod: dict, resource: str) -> int:
    total = 0
    for container in _get(pod, "spec", "containers") or []:
        value = _get(container, "resources", "requests", resource)
        total += int(value) if value is not None else 0
    return total


def free_worker_nodes(run: RunExpectation, nodes: dict[str, dict], pods: list[dict]) -> dict[str, list[str]]:
    """Zone -> nodes where one worker fits: the GPU product, and enough GPUs not taken by pods
    outside this run (the run's own workers would move with it)."""
    used: dict[str, int] = {}
    for pod in pods:
        node = _get(pod, "spec", "nodeName")
        if (
            not node
            or _get(pod, "status", "phase") in TERMINAL
            or (_get(pod, "metadata", "labels") or {}).get(MULTINODE_RUN_LABEL) == run.name
        ):
            continue
        used[node] = used.get(node, 0) + requested(pod, run.gpu_resource)
    fits: dict[str, list[str]] = {}
    for name, node in sorted(nodes.items()):
        labels = _get(node, "metadata", "labels") or {}
        allocatable = int(_get(node, "status", "allocatable", run.gpu_resource) or 0)
        if labels.get(GPU_PRODUCT_LABEL) == run.gpu_product and allocatable - used.get(name, 0) >= run.gpus:
            fits.setdefault(labels.get(ZONE_LABEL, "?"), []).append(name)
    return fits


def diagnose_run(
    placements: list[WorkerPlacement], expect: Expectation, nodes: dict[str, dict], pods: list[dict]
) -> list[Finding]:
    """Run-level checks of a multi-node run: each worker with its cache, one node each, one zone."""
    run = expect.run
    findings: list[Finding] = []
    for p in placements:
        cache = f"cache {p.claim} on {', '.join(p.cache_nodes) or 'no node yet'}"
        if p.node is None:
            why = p.pending if p.pod else "no pod"
            findings.append(Finding(FAIL if p.pod else INFO, f"worker {p.worker}", f"not placed ({why}); {cache}"))
        elif p.cache_nodes and p.node not in p.cache_nodes:
            findings.append(
                Finding(FAIL, f"worker {p.worker}", f"pod {p.pod} on {p.node} (zone {p.zone}) but its {cache}", "see locality")
            )
        else:
            findings.append(Finding(OK, f"worker {p.worker}", f"pod {p.pod} on {p.node} (zone {p.zone}) with its {cache}"))
    placed = [p for p in placements if p.node]
    shared = sorted({p.node for p in placed if sum(q.node == p.node for q in placed) > 1})
    if shared:
        findings.append(
            Finding(FAIL, "one node per worker", f"several workers on {', '.join(shared)}", "check the anti-affinity")
        )
    zones = sorted({p.zone for p in placed} | {z for p in placements for z in p.cache_zones})
    if len(zones) > 1:
        findings.append(
            Finding(
                FAIL,
                "one zone",
                f"the workers and their caches span zones {', '.join(zones)}",
                "NCCL across zones is slow: pin mlcache:zone, or delete the caches outside one zone (DATA LOSS) and re-run",
            )
        )
    elif len(placed) == run.nodes:
        findings.append(Finding(OK, "one zone", f"all {run.nodes} workers and their caches in zone {zones[0]}"))
    waiting = [p for p in placements if p.node is None and p.pod]
    if waiting:
        fits = free_worker_nodes(run, nodes, pods)
        # The zone the run is held in: the pinned one, else where its caches (then its pods) are.
        cache_zones = sorted({z for p in placements for z in p.cache_zones})
        placed_zones = sorted({p.zone for p in placed})
        here = expect.zone or next((z[0] for z in (cache_zones, placed_zones) if len(z) == 1), None)
        room = len(fits.get(here, [])) if here else 0
        reason = (
            f"zone {here} has {room} node(s) where a worker fits ({run.gpus} x {run.gpu_resource}, {run.gpu_product}) "
            f"for {run.nodes} workers"
            if here
            else "the run's workers are not in one zone yet"
        )
        others = sorted(
            ((z, n) for z, n in fits.items() if z != here and len(n) >= run.nodes), key=lambda item: (-len(item[1]), item[0])
        )
        room_elsewhere = "; ".join(f"{z} ({len(n)} free nodes)" for z, n in others)
        if expect.zone:
            remedy = f"free {run.gpu_product} nodes in {expect.zone}, or lower job.nodes"
            if others:
                remedy += f", or pin a zone with room for all {run.nodes}: {room_elsewhere}"
        elif others:
            bound = [p.claim for p in placements if p.cache_nodes]
            remedy = f"another zone would fit: {room_elsewhere}"
            if bound:
                held = here or ", ".join(cache_zones)
                remedy += f". The run stays in {held} while its caches are there: "
                remedy += f"delete {', '.join(bound)} (DATA LOSS) to move it"
        else:
            remedy = "no zone has room for every worker: free nodes, or lower job.nodes"
        findings.append(Finding(FAIL, "capacity", f"{len(waiting)} of {run.nodes} workers Pending: {reason}", remedy))
    return findings


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"[{finding.level:>4}] {finding.check}: {finding.message}")
        if finding.remedy:
            lines.append(f"       remedy: {finding.remedy}")
    return "\n".join(lines)


def expectation_from(run: Any, config: Any, kube_namespace: str, stack: str = "STACK") -> Expectation:
    """What a rendered stack (ProgramRun, StackConfig) asks for; the kubeconfig's namespace when it sets none."""
    return expectation_from_outputs(run.outputs, config.values.get("mlcache:namespace") or kube_namespace, stack)


def expectation_from_outputs(outputs: dict[str, Any], namespace: str, stack: str = "STACK") -> Expectation:
    """What the stack asked for, from its outputs (`pulumi stack output`, or the mock engine's)."""
    run_out = outputs.get("run") or {}
    run = None
    if run_out.get("nodes", 1) > 1:
        run = RunExpectation(
            name=run_out["name"],
            claims=tuple(run_out["cacheClaims"]),
            gpu_product=run_out["gpuProduct"],
            gpu_resource=run_out["gpuResource"],
            gpus=run_out["gpusPerNode"],
            jobs=tuple(run_out["jobs"]),
            benchmark_jobs=tuple(run_out["benchmarkJobs"]),
        )
    return Expectation(
        pvc=outputs["pvcName"],
        namespace=namespace,
        storage_class=outputs["storageClass"],
        backend=outputs["backend"],
        zone=None if outputs["zone"] == "scheduler-chosen" else outputs["zone"],
        job=outputs.get("jobName"),
        run=run,
        stack=stack,
    )


def read_snapshot(expect: Expectation, core: Any, serialize) -> Snapshot:
    """The live objects, read with a kubernetes CoreV1Api."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    timeout = {"_request_timeout": REQUEST_TIMEOUT}
    try:
        pvc = serialize(core.read_namespaced_persistent_volume_claim(expect.pvc, expect.namespace, **timeout))
    except ApiException as err:
        if err.status == 404:
            return Snapshot(pvc=None)
        raise
    volume = _get(pvc, "spec", "volumeName")
    pv = serialize(core.read_persistent_volume(volume, **timeout)) if volume else None
    pods = []
    if expect.run:
        worker = expect.run.claims.index(expect.pvc)
        selector = f"{RUN_LABEL}={expect.run.name},{WORKER_LABEL}={worker}"
        pods = serialize(core.list_namespaced_pod(expect.namespace, label_selector=selector, **timeout).items)
    elif expect.job:
        pods = serialize(core.list_namespaced_pod(expect.namespace, label_selector=f"job-name={expect.job}", **timeout).items)
    nodes = {n["metadata"]["name"]: n for n in serialize(core.list_node(**timeout).items)}
    bound = serialize(core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=", **timeout).items)
    events = serialize(core.list_namespaced_event(expect.namespace, **timeout).items)
    return Snapshot(pvc=pvc, pv=pv, pods=pods, nodes=nodes, bound_pods=bound, events=events)


def connect(expect_for, context: str | None) -> tuple[Expectation, Any, Any]:
    """The stack's expectation (`expect_for(namespace)`, config checked first, offline), a CoreV1Api
    and its serializer, logged in to `context`; a kubeconfig that cannot be used as Unreachable,
    an unknown context as UsageError."""
    from kubernetes import client, config  # noqa: PLC0415
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

    try:
        contexts, active = config.list_kube_config_contexts()
        if not isinstance(contexts, list) or not all(isinstance(c, dict) for c in contexts):
            raise ConfigException("contexts is not a list of contexts")
    except Exception as err:  # no kubeconfig, or one the client cannot parse (its errors are of many types)
        raise Unreachable(f"no usable kubeconfig ({type(err).__name__}: {err})") from None
    if context is not None and context not in {c.get("name") for c in contexts}:
        names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
        raise UsageError(f"--context {context!r} is not in the kubeconfig; contexts: {names}")
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    expect = expect_for((chosen or {}).get("context", {}).get("namespace") or "default")
    try:
        config.load_kube_config(context=context)
    except Exception as err:  # a context whose cluster, user or certificate files cannot be loaded
        which = f"context {context}" if context else "the current context"
        raise Unreachable(f"cannot load {which} from the kubeconfig ({type(err).__name__}: {err})") from None
    api = client.ApiClient()
    return expect, client.CoreV1Api(api), api.sanitize_for_serialization


@contextmanager
def cluster_errors() -> Iterator[None]:
    """The API server's refusals and the network's failures, as Unreachable (exit 3)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    try:
        yield
    except ApiException as err:
        raise Unreachable(f"the API server answered {err.status} {err.reason}") from None
    except (OSError, HTTPError) as err:
        raise Unreachable(str(err)) from None


def read_cluster(expect_for, context: str | None) -> tuple[Expectation, list[Finding]]:
    """The stack's expectation and the findings on the live objects (errors as in `connect`)."""
    expect, core, serialize = connect(expect_for, context)
    with cluster_errors():
        if expect.run is None:
            # After a move the cache is a later generation of the claim: check the one training mounts.
            expect, moving = read_move(expect, core, serialize)
            return expect, moving + verify(expect, core, serialize)
        return expect, verify(expect, core, serialize)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("tools.verify"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    args = parser.parse_args(argv)
    from tools.render import render_or_refuse  # noqa: PLC0415

    rendered = render_or_refuse(args.stack, args.config, [])  # bad config fails here, before the cluster is asked
    expect, findings = read_cluster(lambda namespace: expectation_from(*rendered, namespace, args.stack), args.context)
    print(f"stack {args.stack}: PVC {expect.namespace}/{expect.pvc}, class {expect.storage_class}, zone {expect.zone or 'any'}")
    print(render_findings(findings))
    return 1 if any(f.level == FAIL for f in findings) else 0


# --- moves: which generation of the claim training mounts now ------------------------------------

# The last progress line of the copy (workloads/cache_copy.py prints them on stderr).
COPY_PROGRESS_PREFIX = "cache_copy: "


def follow_move(
    expect: Expectation, claims: list[dict], copy_job: dict | None, mounted: str | None, progress: str | None
) -> tuple[Expectation, list[Finding]]:
    """The expectation for the claim training mounts now, and what a move under way says. `claims`:
    the namespace's claims; `mounted`: the claim the training Job mounts (None: no Job yet)."""
    base = cache_name_of(expect.pvc)
    generations = cache_generations(base, claims)
    if not generations:
        return expect, []
    (newest_number, newest), older = generations[-1], (generations[-2][1] if len(generations) > 1 else None)
    new_name = _get(newest, "metadata", "name")
    if older is None:
        return replace(expect, pvc=new_name), []
    old_name = _get(older, "metadata", "name")
    state, attempt = copy_state(copy_job)
    job = copy_name(base, newest_number)
    current = mounted if mounted in (old_name, new_name) else (new_name if state == VERIFIED else old_name)
    if current == old_name:
        # Until the switch, training runs where the old claim was made for.
        record = PlacementRecord.parse(_get(older, "metadata", "annotations", PLACEMENT_ANNOTATION))
        expect = replace(expect, storage_class=_get(older, "spec", "storageClassName"), zone=record.zone if record else None)
    expect = replace(expect, pvc=current)
    where = f"{expect.namespace}/{old_name} -> {expect.namespace}/{new_name}"
    if state == FAILED:
        finding = Finding(
            FAIL,
            "move",
            f"the copy {where} failed (Job {job}, attempt {attempt}); the old cache and training are untouched",
            f"read `kubectl logs -n {expect.namespace} job/{job}`, then `pulumi up` retries it, resuming",
        )
    elif state == VERIFIED and current == old_name:
        finding = Finding(INFO, "move", f"the copy {where} is verified", "run `pulumi up` to switch training to the new claim")
    elif state == VERIFIED:
        finding = Finding(
            INFO, "move", f"training runs on {new_name}; the old claim {old_name} is kept while cache.protect is true"
        )
    else:
        finding = Finding(
            INFO,
            "move",
            f"copying {where} (Job {job}, attempt {attempt}): {progress or 'no progress reported yet'}; "
            f"training stays on {old_name}",
            "run `pulumi up` again once this says verified",
        )
    return expect, [finding]


def read_move(expect: Expectation, core: Any, serialize) -> tuple[Expectation, list[Finding]]:
    """follow_move on the live claims, the copy Job, the training Job and the copy pod's last progress line."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    timeout = {"_request_timeout": REQUEST_TIMEOUT}
    claims = serialize(core.list_namespaced_persistent_volume_claim(expect.namespace, **timeout).items)
    base = cache_name_of(expect.pvc)
    generations = cache_generations(base, claims)
    if len(generations) < 2:
        return follow_move(expect, claims, None, None, None)
    batch = client.BatchV1Api(core.api_client)
    job_name = copy_name(base, generations[-1][0])

    def job(name: str | None) -> dict | None:
        try:
            return serialize(batch.read_namespaced_job(name, expect.namespace, **timeout)) if name else None
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    mounted = next(iter(mounted_claims(job(expect.job))), None)
    progress = None
    selector = f"{COPY_LABEL}={job_name},{COPY_ROLE_LABEL} in (receiver,local)"
    for pod in core.list_namespaced_pod(expect.namespace, label_selector=selector, **timeout).items:
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, expect.namespace, tail_lines=20, **timeout)
        except ApiException:
            continue  # not started yet, or no log kept (a kwok node runs nothing)
        lines = [line.removeprefix(COPY_PROGRESS_PREFIX) for line in log.splitlines() if line.startswith(COPY_PROGRESS_PREFIX)]
        progress = lines[-1] if lines else progress
    return follow_move(expect, claims, job(job_name), mounted, progress)


def verify(expect: Expectation, core: Any, serialize) -> list[Finding]:
    """Every finding for the stack: its cache and training pod, or each worker's and the run's."""
    if expect.run is None:
        return diagnose(read_snapshot(expect, core, serialize), expect)
    snapshots = [read_snapshot(replace(expect, pvc=claim), core, serialize) for claim in expect.run.claims]
    timeout = {"_request_timeout": REQUEST_TIMEOUT}
    pods = serialize(core.list_pod_for_all_namespaces(**timeout).items)
    findings, _ = diagnose_workers(expect, snapshots, snapshots[0].nodes, pods)
    return findings


def diagnose_workers(
    expect: Expectation, snapshots: list[Snapshot], nodes: dict[str, dict], pods: list[dict]
) -> tuple[list[Finding], list[WorkerPlacement]]:
    """A multi-node run: each worker's cache checks (prefixed with the worker), then the run's.
    `snapshots` in worker order, each with that worker's claim, volume and training pods."""
    findings: list[Finding] = []
    placements = []
    for worker, (claim, snapshot) in enumerate(zip(expect.run.claims, snapshots, strict=True)):
        worker_expect = replace(expect, pvc=claim)
        findings += [replace(f, check=f"worker {worker} {f.check}") for f in diagnose(snapshot, worker_expect)]
        placements.append(worker_placement(worker, claim, snapshot))
    return findings + diagnose_run(placements, expect, nodes, pods), placements


if __name__ == "__main__":
    sys.exit(main())
