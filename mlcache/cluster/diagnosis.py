"""What the live objects say about a stack's cache and training pod: the runbook's troubleshooting
checks as pure functions (`diagnose`), from what the stack asked for (`Expectation`, read from its
outputs) and what the cluster holds (`Snapshot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from mlcache.cluster.bound_cache import (
    FAILED,
    VERIFIED,
    PlacementRecord,
    cache_generations,
    copy_state,
    has_taint,
    heal_command,
    is_cordoned,
    is_ready,
    node_zone,
    pinned_node_names,
    ready_condition,
    relocate_key_hint,
    reports_not_ready,
    volume_mode,
)
from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.objects import (
    STANDARD_RESOURCES,
    amount_text,
    events_about,
    free_on,
    mounts_claim,
    node_satisfies,
    pod_fits_labels,
    pod_label,
    pod_node_terms,
    pod_requests,
    pods_on,
    pv_constraints,
    quantity,
    untolerated_taints,
    volume_nodes,
    wants_gpu,
)
from mlcache.program.names import (
    COPY_CACHE_NAME_MAX,
    COPY_NEEDS_NAME_ROOM,
    GPU_PRODUCT_LABEL,
    MULTINODE_RUN_LABEL,
    OUT_OF_SERVICE_TAINT,
    PLACEMENT_ANNOTATION,
    SWITCHED_ANNOTATION,
    ZONE_LABEL,
    cache_name_of,
    copy_name,
)
from mlcache.program.outputs import DurableOutput, StackOutputs
from mlcache.program.schema import names_fit_after
from mlcache.program.verification import linstor_resources_command

# How kube-scheduler says a bound volume's node affinity rules a node out (1.34 uses both).
VOLUME_CONFLICT = ("volume node affinity conflict", "didn't match PersistentVolume's node affinity")
# The scheduler's reasons (its FailedScheduling message lists each with the count of nodes it ruled
# out) and the setting that answers each, in the order a user would try them.
SCHEDULER_REASON_FIXES = (
    (
        "untolerated taint",
        "nodes with taints the pod does not tolerate: add the taint to job.tolerations if training may run "
        "there (`kubectl describe node` shows it), or free other nodes",
    ),
    (
        "did not have enough free storage",
        "the storage pool of the nodes that fit has less free space than cache.size: lower cache.size or free "
        "space in the LINSTOR pool (`kubectl get csistoragecapacities -A`)",
    ),
    (
        "Insufficient",
        "too few free GPUs of job.gpuProduct, cpu or memory: lower job.gpus, or change job.gpuProduct or mlcache:zone",
    ),
    (
        "didn't match Pod's node affinity",
        "no node with job.gpuProduct in the zone: change job.gpuProduct or mlcache:zone "
        f"(`kubectl get nodes -L {ZONE_LABEL} -L {GPU_PRODUCT_LABEL}`)",
    ),
)


# Taints Kubernetes puts on a node that is down (the node lifecycle controller) or shut down for good
# (out-of-service): tolerating them would only place training on a dead node.
DOWN_NODE_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready", OUT_OF_SERVICE_TAINT)


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
    # The durable copy's claim and refresh Job (None: cache.durableCopy is off).
    durable: DurableOutput | None = None
    # cache.protect: heal re-creates the claim only with --allow-protected.
    protected: bool = False


@dataclass(frozen=True)
class DurableState:
    """The durable copy (cache.durableCopy) as the cluster has it: its claim, whether it is bound,
    its refresh Job's state (absent, running, failed, complete) and when it last completed (None:
    never, so it holds no verified copy)."""

    claim: str
    bound: bool
    refresh: str
    refreshed: str | None = None


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


def scheduling_message(pod: dict, events: Sequence[dict] = ()) -> str | None:
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
    if not reports_not_ready(node):
        return None
    condition = ready_condition(node) or {}
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
    lost_data = (
        "what is lost: only cache data (models and datasets, re-downloaded by the warm-up: the cache is "
        "rebuildable); the training run restarts from its last checkpoint. "
    )
    if expect.run is not None and expect.pvc != expect.run.claims[0]:
        # mlcache heal re-creates worker 0's claim (the stack's cache) only: the other workers' by hand.
        ns = f" -n {expect.namespace}" if expect.namespace else ""
        remedy = (
            f"{lost_data}mlcache heal re-creates worker 0's claim only; for this worker's, once node {node} is proven "
            f"gone: `kubectl delete pod{ns} --force --grace-period=0 POD` for each pod still bound to it, "
            f"`kubectl delete pvc{ns} {expect.pvc}`, then `pulumi up --refresh --stack {expect.stack}` re-creates the "
            "claim; the run ended with its worker: a new job.runId starts it again"
        )
    else:
        remedy = (
            f"{lost_data}Heal: `{heal_command(expect.stack, expect.protected)}` (a dry run that says what it would do), "
            "then the same with --apply."
        )
    return Finding(
        FAIL, "node loss", f"the only node of volume {_get(snapshot.pv, 'metadata', 'name')}, {node}, is {how}{pods}", remedy
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
        explanation += f", where its consumer {pod_label(consumer)} runs"
        if not wants_gpu(consumer):
            explanation += " (no GPU request, no GPU affinity: it bound the volume wherever it landed)"
            remedy += (
                "; benchmark with `benchmark.enabled: true`, whose pod asks for the training pod's GPUs and placement, "
                "never with a hand-made pod"
            )
    needs = pod_requests(pod)
    # What keeps the pod off a node of its volume that suits it: passing, so the cache is intact.
    passing: list[str] = []
    for node_name in where:
        node = snapshot.nodes[node_name]
        if not pod_fits_labels(pod, node, ignore={ZONE_LABEL}):
            product = (_get(node, "metadata", "labels") or {}).get(GPU_PRODUCT_LABEL, "none")
            explanation += f"; {node_name} does not match the pod's node affinity ({GPU_PRODUCT_LABEL}={product})"
            continue
        if not is_ready(node):  # not a passing reason: node loss (or a node that lost its status) is heal's
            explanation += f"; {node_name} is not Ready"
            continue
        free = free_on(node, snapshot.bound_pods)
        short = {r: q for r, q in needs.items() if free.get(r, Decimal(0)) < q}
        allocatable = _get(node, "status", "allocatable") or {}
        never = [r for r in short if allocatable and quantity(allocatable.get(r, 0)) < needs[r]]
        reasons = []
        if never:  # asks more than the node has: waiting never helps
            explanation += f"; {node_name} has {', '.join(f'{amount_text(quantity(allocatable.get(r, 0)))} {r}' for r in never)}"
            explanation += f" in all, the pod asks {', '.join(amount_text(needs[r]) for r in never)}"
            continue
        if is_cordoned(node):
            explanation += f"; {node_name} is cordoned"
            reasons.append(f"`kubectl uncordon {node_name}` once it may run pods again")
        if short:
            on_node = pods_on(node_name, snapshot.bound_pods)
            holders = [pod_label(p) for p in on_node if any(pod_requests(p).get(r) for r in short)]
            explanation += f"; {node_name} has " + ", ".join(
                f"{amount_text(free.get(r, Decimal(0)))} of {amount_text(q)} {r} free" for r, q in short.items()
            )
            held = f" (held by {', '.join(holders)})" if holders else ""
            reasons.append(f"free {', '.join(short)} on {node_name}{held}, or wait for it")
        if not pod_fits_labels(pod, node):  # the pinned zone is not the volume's
            room = f" ({node_name} has room)" if not reasons else ""
            remedy += f", or pin mlcache:zone={node_zone(node)} to keep the data{room}"
        elif reasons:
            passing.append(" and ".join(reasons))
    if passing and len(passing) == len(where):
        # Every node of the volume suits the pod but for a passing reason: deleting the claim would
        # lose the cache for nothing.
        return explanation, "the cache is intact on its node: " + "; or ".join(passing) + " (keep the PVC: it holds the cache)."
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
            f"{pod_label(p)} {amount_text(pod_requests(p)[resource])}"
            for p in pods_on(node_name, snapshot.bound_pods)
            if pod_requests(p).get(resource)
        ]
        held = f" (held by {', '.join(holders)})" if holders else ""
        described.append(f"{node_name} {amount_text(free)}/{amount_text(allocatable)} free{held}")
    what = f"{product} " if product else ""
    explanation = (
        f"{scope}'s {what}{resource} capacity is taken: {'; '.join(described)}; the pod needs {amount_text(wanted)} on one node"
    )
    elsewhere = []
    for node_name, node in sorted(snapshot.nodes.items()):
        if node_name in candidates or not pod_fits_labels(pod, node, ignore={ZONE_LABEL}):
            continue
        node_free = free_on(node, snapshot.bound_pods)
        if all(node_free.get(r, Decimal(0)) >= q for r, q in needs.items()):
            elsewhere.append((node_zone(node), node_name, node_free.get(resource, Decimal(0))))
    fixes = [f"free {resource} in {scope} (the pods holding it above)"]
    if 0 < best < wanted:
        fixes.append(f"lower job.gpus to {amount_text(best)} (the most free on one node)")
    if expect.zone and elsewhere:
        zones: dict[str | None, str] = {}
        for zone, node_name, free in elsewhere:
            zones.setdefault(zone, f"{node_name}: {amount_text(free)} free")
        fixes.append("pin a zone with room: " + ", ".join(f"mlcache:zone={z} ({n})" for z, n in sorted(zones.items())))
        fixes.append("or unset mlcache:zone to let the scheduler choose")
    return explanation, "; ".join(fixes)


def scheduler_fixes(pod: dict, message: str, snapshot: Snapshot) -> list[str]:
    """The fix for each reason the scheduler gives, read against the nodes of the pod's placement:
    a reason that only counts nodes outside it asks for no setting while some node of it is up, and
    the taints of its nodes that are down ask for none either."""
    placed = {name: node for name, node in snapshot.nodes.items() if pod_fits_labels(pod, node)}
    # A multi-node run's worker may not share a node with another of its run (its anti-affinity).
    run = (_get(pod, "metadata", "labels") or {}).get(MULTINODE_RUN_LABEL)
    taken = {
        _get(p, "spec", "nodeName")
        for p in snapshot.bound_pods
        if run and (_get(p, "metadata", "labels") or {}).get(MULTINODE_RUN_LABEL) == run
    }
    up = [
        name for name, node in sorted(placed.items()) if not is_cordoned(node) and not _has_down_taint(node) and name not in taken
    ]
    fixes = []
    for words, fix in SCHEDULER_REASON_FIXES:
        if words not in message:
            continue
        if words == "didn't match Pod's node affinity" and up:
            continue  # nodes of the placement are up: the others are left out as asked
        if words == "untolerated taint" and (down := _down_taints(pod, placed)):
            fix = (
                f"the nodes of the placement tainted {', '.join(down)} are down: tolerating that would place "
                "training on a dead node" + ("; the pod needs room on those that are up" if up else "; none of them is up")
            )
        elif words == "did not have enough free storage" and up:
            fix = fix.replace("the nodes that fit", f"the nodes that fit ({', '.join(up)})", 1)
        fixes.append(fix)
    return fixes


def _has_down_taint(node: dict) -> bool:
    return any(has_taint(node, key) for key in DOWN_NODE_TAINTS)


def _down_taints(pod: dict, placed: dict[str, dict]) -> list[str]:
    """The keys of the taints that keep the pod off the nodes of its placement, when each is one
    Kubernetes puts on a node that is down; [] if any other taint is in the way (or none is)."""
    keys = {str(taint.get("key")) for node in placed.values() for taint in untolerated_taints(pod, node)}
    return sorted(keys) if keys and keys <= set(DOWN_NODE_TAINTS) else []


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
    fixes = scheduler_fixes(pod, message, snapshot)
    if fixes:
        return Finding(FAIL, "pod scheduling", f"pod {name} is Pending: {message}", "; ".join(fixes) + ".")
    return Finding(INFO, "pod scheduling", f"pod {name} is Pending: {message}")


def move_remedy(pvc: dict, expect: Expectation, why: str, put_back: str) -> str:
    """The way out for a cache that is not where the stack says: a move by copy, which keeps the
    cached models, where the guard allows one; else what it allows."""
    back = f"set {put_back} back to the claim's"
    fresh = (
        f"re-create it empty with `{relocate_key_hint('fresh')}` (and cache.protect false on a protected stack) and "
        "`pulumi up` (DATA LOSS)"
    )
    if volume_mode(pvc) == "Block":
        return f"{why}: a Block-mode cache holds no files to copy, so it cannot be moved with its data: {back}, or {fresh}"
    if not names_fit_after(cache_name_of(expect.pvc), COPY_CACHE_NAME_MAX):
        return f"{why}: it cannot be moved with its data ({COPY_NEEDS_NAME_ROOM}): {back}, or {fresh}"
    single_node = (
        ""
        if expect.run is None
        else "set job.enabled false and job.nodes 1 (a move copies a single-node cache; training goes back on after "
        "the switch), then "
    )
    return (
        f"{why}: {single_node}move the cache with `{relocate_key_hint('copy')}` and `pulumi "
        f"up` (copied and verified, the old claim kept until then: docs/moving-the-cache.md), or {back}"
    )


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
                move_remedy(
                    pvc,
                    expect,
                    "the claim was made before the class changed (a backend switch or rollback not yet applied, or "
                    "the kept claim heal restores from; a class this stack made keeps its name until a move is over)",
                    "backend (or the backend's storageClassName)",
                ),
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
        # A single-replica LINSTOR volume names its node only (linbit.com/hostname): its zone is its nodes'
        # (not on a lost node: nothing is left to move, and node loss says what is).
        pv_zones = constraints.get(ZONE_LABEL, set())
        if not pv_zones and not lost_volume_node(snapshot):
            nodes = volume_nodes(snapshot.pv, snapshot.nodes) or []
            pv_zones = {zone for name in nodes if (zone := node_zone(snapshot.nodes[name]))}
        if expect.zone and pv_zones and expect.zone not in pv_zones:
            findings.append(
                Finding(
                    FAIL,
                    "volume zone",
                    f"the volume is in {sorted(pv_zones)}, the stack pins {expect.zone}",
                    move_remedy(pvc, expect, "the volume was bound where the stack pinned it before", "zone"),
                )
            )

    lost = lost_volume_node(snapshot)
    if lost:
        findings.append(node_loss_finding(snapshot, expect, lost))
    elif snapshot.pv is not None:
        cordoned = [n for n in volume_nodes(snapshot.pv, snapshot.nodes) or [] if is_cordoned(snapshot.nodes[n])]
        if cordoned:
            findings.append(
                Finding(
                    INFO,
                    "volume node",
                    f"the volume's node {', '.join(cordoned)} is cordoned: a pod that starts now (a retry, the next run) "
                    f"cannot land beside the cache until `kubectl uncordon {' '.join(cordoned)}`",
                )
            )
    if expect.job and not pods:
        findings.append(Finding(INFO, "training pod", f"no pod of Job {expect.job} (finished and cleaned up, or not created)"))
    for pod in pods:
        if not _get(pod, "spec", "nodeName"):
            findings.append(diagnose_pending_pod(pod, expect, snapshot))
    for pod in running:
        name, node_name = _get(pod, "metadata", "name"), _get(pod, "spec", "nodeName")
        node = snapshot.nodes.get(node_name)
        zone = node_zone(node)
        if lost and node_name == lost[0]:
            # Its node is gone or NotReady: the pod is not running, whatever its phase still says.
            findings.append(Finding(INFO, "training pod", f"pod {name} is bound to {node_name}, the lost node (see node loss)"))
            continue
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


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"[{finding.level:>4}] {finding.check}: {finding.message}")
        if finding.remedy:
            lines.append(f"       remedy: {finding.remedy}")
    return "\n".join(lines)


def expectation_from(run: Any, config: Any, kube_namespace: str, stack: str = "STACK") -> Expectation:
    """What a rendered stack (ProgramRun, StackConfig) asks for; the kubeconfig's namespace when it sets none."""
    expect = expectation_from_outputs(run.outputs, config.values.get("mlcache:namespace") or kube_namespace, stack)
    return replace(expect, protected=any(r.protect for r in run.find("PersistentVolumeClaim")))


def expectation_from_outputs(outputs: dict[str, Any], namespace: str, stack: str = "STACK") -> Expectation:
    """What the stack asked for, from its outputs (`pulumi stack output`, or the mock engine's)."""
    read = StackOutputs.read(outputs)
    run = None
    if read.run.nodes > 1:
        run = RunExpectation(
            name=read.run.name,
            claims=read.run.cache_claims,
            gpu_product=read.run.gpu_product,
            gpu_resource=read.run.gpu_resource,
            gpus=read.run.gpus_per_node,
            jobs=read.run.jobs,
            benchmark_jobs=read.run.benchmark_jobs,
        )
    return Expectation(
        pvc=read.pvc_name,
        namespace=namespace,
        storage_class=read.storage_class,
        backend=read.backend,
        zone=read.zone,
        job=read.job_name,
        run=run,
        stack=stack,
        durable=read.durable,
    )


def durable_finding(state: DurableState, refresh_job: str, namespace: str) -> Finding:
    """What verify says of the durable copy: whether node loss would be restored from it."""
    if not state.bound:
        return Finding(
            FAIL, "durable copy", f"claim {state.claim} is not bound", f"`kubectl describe pvc -n {namespace} {state.claim}`"
        )
    if state.refresh == "complete":
        return Finding(OK, "durable copy", f"{state.claim} refreshed {state.refreshed}: node loss restores from it")
    if state.refresh == "failed":
        return Finding(
            FAIL,
            "durable copy",
            f"the refresh Job {refresh_job} failed: node loss restores the last verified refresh if there was one, "
            "else downloads",
            f"read `kubectl logs -n {namespace} job/{refresh_job}`; `kubectl delete job -n {namespace} {refresh_job}` "
            "and `pulumi up --refresh` retry it",
        )
    if state.refresh == "running":
        return Finding(
            INFO,
            "durable copy",
            f"the refresh Job {refresh_job} runs: it waits for the warm-up, then copies (until it ends, node loss "
            "restores the last verified refresh if there was one)",
        )
    return Finding(
        INFO,
        "durable copy",
        f"no refresh Job {refresh_job}: node loss restores the last verified refresh on {state.claim} if there was "
        "one, else downloads",
        "run `pulumi up` once the cache is bound, with job.enabled true: the refresh is registered beside it",
    )


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
    state, attempt = copy_state(copy_job, newest)
    job = copy_name(base, newest_number)
    switched = _get(newest, "metadata", "annotations", SWITCHED_ANNOTATION) is not None
    if switched:
        state, current = VERIFIED, new_name  # switched: the copy Job is gone, the Job may be too
    elif mounted is not None and mounted in (old_name, new_name):
        current, switched = mounted, mounted == new_name
    else:
        current = new_name if state == VERIFIED else old_name
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
    elif state == VERIFIED and not switched:
        finding = Finding(
            INFO,
            "move",
            f"the copy {where} is verified",
            "run `pulumi up` to switch training to the new claim (it waits while a Job still runs on the old one)",
        )
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
