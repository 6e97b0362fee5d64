"""Where the scheduler put the cache and the pods that mount it: the rehearsal's settle test and
placement report, as pure functions over API objects (plain dicts, camelCase keys, the API
server's JSON as mlcache.cluster.kube reads it). mlcache rehearse reads the cluster and
prints; tests/test_rehearse.py feeds these functions recorded objects.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.bound_cache import node_zone
from mlcache.cluster.diagnosis import (
    FAIL,
    Expectation,
    Finding,
    Snapshot,
    diagnose,
    diagnose_pending_pod,
    render_findings,
    scheduling_message,
)
from mlcache.cluster.objects import event_time, events_about, mounts_claim, volume_nodes
from mlcache.cluster.workers import WorkerLocation, diagnose_workers
from mlcache.program.names import RUN_LABEL, WORKER_LABEL

SELECTED_NODE = "volume.kubernetes.io/selected-node"
JOB_NAME_LABEL = "job-name"
# Scheduler verdicts that only say "not yet": the pod waits on a claim that is still binding.
TRANSIENT_VERDICTS = (
    "unbound immediate PersistentVolumeClaims",
    "PreBind",
    "waiting for",
    "node.kubernetes.io/not-ready",
)


@dataclass
class ClusterView:
    """The objects a rehearsal looks at: nodes, every pod (capacity is per node, any
    namespace), the stack namespace's claims, Jobs and events, the PVs and StorageClasses, and
    the storage capacity the provisioner publishes (CSIStorageCapacity)."""

    nodes: dict[str, dict] = field(default_factory=dict)
    pods: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    volumes: dict[str, dict] = field(default_factory=dict)
    classes: dict[str, dict] = field(default_factory=dict)
    jobs: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    capacities: list[dict] = field(default_factory=list)


def name_of(obj: dict) -> str:
    return _get(obj, "metadata", "name")


def label(obj: dict) -> str:
    namespace = _get(obj, "metadata", "namespace")
    return f"{namespace}/{name_of(obj)}" if namespace else name_of(obj)


def is_placed(pod: dict) -> bool:
    """Bound to a node and started (or already finished) there."""
    return bool(_get(pod, "spec", "nodeName")) and _get(pod, "status", "phase") in ("Running", "Succeeded", "Failed")


def unschedulable(pod: dict) -> bool:
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in _get(pod, "status", "conditions") or []
    )


def job_pods(view: ClusterView, namespace: str, job: str) -> list[dict]:
    return [
        p
        for p in view.pods
        if _get(p, "metadata", "namespace") == namespace and (_get(p, "metadata", "labels") or {}).get(JOB_NAME_LABEL) == job
    ]


def claim_of(view: ClusterView, namespace: str, name: str) -> dict | None:
    return next((c for c in view.claims if name_of(c) == name and _get(c, "metadata", "namespace") == namespace), None)


def volume_of(view: ClusterView, claim: dict | None) -> dict | None:
    volume = _get(claim, "spec", "volumeName")
    return view.volumes.get(volume) if volume else None


def binding_mode(view: ClusterView, claim: dict) -> str:
    storage_class = view.classes.get(_get(claim, "spec", "storageClassName") or "")
    return (storage_class or {}).get("volumeBindingMode") or "Immediate"


def still_moving(view: ClusterView, namespace: str, jobs: list[str], rechecking: Collection[str] = frozenset()) -> list[str]:
    """What has not reached a state the scheduler, binder and provisioner would leave alone.
    Empty = settled: every Job has its pods, every pod is placed or has the scheduler's final
    verdict, every claim is Bound or waits for a consumer. `rechecking`: pods whose verdict
    predates the last change of volumes or storage capacity (the scheduler re-tries them)."""
    moving = []
    for job in jobs:
        if not job_pods(view, namespace, job):
            moving.append(f"Job {namespace}/{job}: no pod yet (job controller)")
    for claim in view.claims:
        phase = _get(claim, "status", "phase") or "Pending"
        if phase != "Pending" or _get(claim, "metadata", "deletionTimestamp"):
            continue
        selected = (_get(claim, "metadata", "annotations") or {}).get(SELECTED_NODE)
        failures = events_about(claim, view.events, "ProvisioningFailed")
        failed = f"; last provisioner error: {failures[-1].get('message')}" if failures else ""
        if selected:
            moving.append(f"claim {label(claim)}: volume being provisioned on node {selected}{failed}")
        elif binding_mode(view, claim) != "WaitForFirstConsumer":
            moving.append(f"claim {label(claim)}: waiting for the provisioner (Immediate binding){failed}")
    for pod in view.pods:
        if _get(pod, "metadata", "namespace") != namespace:
            continue
        node = _get(pod, "spec", "nodeName")
        if _get(pod, "metadata", "deletionTimestamp"):
            moving.append(f"pod {label(pod)}: terminating")
        elif node and not is_placed(pod):
            moving.append(f"pod {label(pod)}: bound to {node}, starting")
        elif not node and not unschedulable(pod):
            moving.append(f"pod {label(pod)}: waiting for the scheduler (volume binding)")
        elif not node:
            verdict = scheduling_message(pod, view.events) or ""
            if any(marker in verdict for marker in TRANSIENT_VERDICTS):
                moving.append(f"pod {label(pod)}: scheduler retrying ({verdict})")
            elif name_of(pod) in rechecking:
                moving.append(f"pod {label(pod)}: scheduler re-checking after a volume or the storage capacity changed")
    return moving


@dataclass(frozen=True)
class VolumeLocation:
    claim: str
    phase: str
    storage_class: str
    volume: str | None
    volume_mode: str | None
    size: str | None
    nodes: list[str] | None  # None: no node affinity (network storage, usable from any node)
    zones: list[str]


@dataclass(frozen=True)
class PodLocation:
    pod: str
    role: str  # training, benchmark, other
    phase: str
    node: str | None
    zone: str | None
    mounts_cache: bool
    with_cache: bool | None  # None: not placed, or no cache mounted
    reason: str | None  # the scheduler's, when not placed


# The fix of a Pending pod whose reasons have none of their own.
DESCRIBE_POD = "`kubectl describe pod` for its events"


@dataclass(frozen=True)
class Problem:
    subject: str
    what: str
    fix: str


@dataclass
class Report:
    stack: str
    expect: Expectation
    volume: VolumeLocation | None
    pods: list[PodLocation]
    problems: list[Problem]
    findings: list[Finding]
    moving: list[str]
    # A multi-node run: every worker's cache (worker order) and where each worker is.
    volumes: list[VolumeLocation] = field(default_factory=list)
    workers: list[WorkerLocation] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every pod that mounts the cache is placed with it; 1 otherwise."""
        failed = self.problems or self.moving or any(f.level == FAIL for f in self.findings)
        return 1 if failed else 0


def placement_document(report: Report) -> dict[str, Any]:
    """What `mlcache rehearse --json` prints (and `mlcache diff --placement` shows in the PR comment):
    where the cache's volumes and the pods landed, and what is wrong."""
    volumes = report.volumes or ([report.volume] if report.volume else [])
    return {
        "stack": report.stack,
        "ok": report.exit_code == 0,
        "volumes": [asdict(volume) for volume in volumes],
        "pods": [asdict(pod) for pod in report.pods],
        "problems": [asdict(problem) for problem in report.problems],
        # What else makes `ok` false: verify's failed checks and a move still under way.
        "failed": [finding.message for finding in report.findings if finding.level == FAIL],
        "moving": list(report.moving),
    }


def volume_location(view: ClusterView, claim: dict) -> VolumeLocation:
    volume = volume_of(view, claim)
    nodes = volume_nodes(volume, view.nodes) if volume else []
    zones = sorted({node_zone(view.nodes[n]) or "none" for n in nodes or []})
    return VolumeLocation(
        claim=label(claim),
        phase=_get(claim, "status", "phase") or "Pending",
        storage_class=_get(claim, "spec", "storageClassName") or "",
        volume=name_of(volume) if volume else None,
        volume_mode=_get(volume, "spec", "volumeMode") if volume else _get(claim, "spec", "volumeMode"),
        size=(_get(volume, "spec", "capacity") or {}).get("storage") if volume else None,
        nodes=nodes,
        zones=zones,
    )


def role_of(pod: dict, expect: Expectation, benchmark_job: str | None) -> str:
    labels = _get(pod, "metadata", "labels") or {}
    job = labels.get(JOB_NAME_LABEL)
    if expect.run and job and WORKER_LABEL in labels:
        if job in expect.run.jobs:
            return f"worker {labels[WORKER_LABEL]}"
        if job in expect.run.benchmark_jobs:
            return f"benchmark {labels[WORKER_LABEL]}"
    if job and job == expect.job:
        return "training"
    if job and job == benchmark_job:
        return "benchmark"
    return "other"


def training_pods(view: ClusterView, expect: Expectation) -> list[dict]:
    """The pods that train on `expect.pvc`: the Job's, or the worker's of a multi-node run."""
    if expect.run:
        worker = str(expect.run.claims.index(expect.pvc))
        return [
            p
            for p in view.pods
            if _get(p, "metadata", "namespace") == expect.namespace
            and (_get(p, "metadata", "labels") or {}).get(RUN_LABEL) == expect.run.name
            and (_get(p, "metadata", "labels") or {}).get(WORKER_LABEL) == worker
        ]
    return job_pods(view, expect.namespace, expect.job) if expect.job else []


def snapshot_of(view: ClusterView, expect: Expectation) -> Snapshot:
    """mlcache verify's input, from the same objects."""
    claim = claim_of(view, expect.namespace, expect.pvc)
    return Snapshot(
        pvc=claim,
        pv=volume_of(view, claim),
        pods=training_pods(view, expect),
        nodes=view.nodes,
        bound_pods=[p for p in view.pods if _get(p, "spec", "nodeName")],
        events=[e for e in view.events if _get(e, "involvedObject", "namespace") in (None, expect.namespace)],
    )


def pod_location(pod: dict, view: ClusterView, cache: VolumeLocation | None, role: str) -> PodLocation:
    node_name = _get(pod, "spec", "nodeName")
    zone = node_zone(view.nodes.get(node_name)) if node_name else None
    mounts = cache is not None and mounts_claim(pod, cache.claim.split("/")[-1])
    with_cache = None
    if cache is not None and mounts and node_name and cache.volume:
        with_cache = cache.nodes is None or node_name in cache.nodes
    return PodLocation(
        pod=label(pod),
        role=role,
        phase=_get(pod, "status", "phase") or "Pending",
        node=node_name,
        zone=zone,
        mounts_cache=mounts,
        with_cache=with_cache,
        reason=None if node_name else scheduling_message(pod, view.events),
    )


def build_report(
    view: ClusterView, expect: Expectation, stack: str, benchmark_job: str | None = None, moving: Sequence[str] = ()
) -> Report:
    # Every cache of the stack: one, or one per worker of a multi-node run.
    claims = list(expect.run.claims) if expect.run else [expect.pvc]
    expects = {name: replace(expect, pvc=name) for name in claims}
    snapshots = {name: snapshot_of(view, expects[name]) for name in claims}
    caches = {name: volume_location(view, s.pvc) for name, s in snapshots.items() if s.pvc is not None}
    in_namespace = [p for p in view.pods if _get(p, "metadata", "namespace") == expect.namespace]
    ordered = sorted(in_namespace, key=lambda p: (_get(p, "metadata", "creationTimestamp") or "", name_of(p)))
    mounted = [next((name for name in claims if mounts_claim(p, name)), claims[0]) for p in ordered]
    pods = [
        pod_location(p, view, caches.get(name), role_of(p, expect, benchmark_job))
        for p, name in zip(ordered, mounted, strict=True)
    ]
    problems = [
        Problem(f"claim {expect.namespace}/{name}", "not found", "run the stack's `pulumi up`")
        for name in claims
        if name not in caches
    ]
    jobs = [*expect.run.jobs, *expect.run.benchmark_jobs] if expect.run else [j for j in (expect.job, benchmark_job) if j]
    for job in jobs:
        if not job_pods(view, expect.namespace, job):
            problems.append(
                Problem(f"Job {expect.namespace}/{job}", "has no pod", "`kubectl describe job` for the job controller's events")
            )
    for raw, placed, name in zip(ordered, pods, mounted, strict=True):
        if not placed.mounts_cache:
            continue
        cache = caches[name]
        if placed.node is None:
            # The scheduler's words are in the report's Pending section; here what they mean.
            finding = diagnose_pending_pod(raw, expects[name], snapshots[name])
            _, arrow, meaning = finding.message.partition(" -> ")
            what = f"is not placed: {meaning}" if arrow else "is not placed (the scheduler's reason: see Pending)"
            problems.append(Problem(f"pod {placed.pod}", what, finding.remedy or DESCRIBE_POD))
        elif placed.with_cache is False:
            assert cache.nodes is not None, "a pod is away from its cache only when the volume has nodes"
            problems.append(
                Problem(
                    f"pod {placed.pod}",
                    f"runs on {placed.node} (zone {placed.zone}) but its volume is on {', '.join(cache.nodes)} "
                    f"(zone {', '.join(cache.zones)})",
                    "with allowRemoteVolumeAccess false this cannot schedule: check the class parameters, then delete "
                    "the PVC so the volume is re-created next to the pod (this deletes the cached data)",
                )
            )
        elif cache.nodes and placed.zone not in cache.zones:
            problems.append(
                Problem(
                    f"pod {placed.pod}",
                    f"is in zone {placed.zone}, its volume in {', '.join(cache.zones)}: every read crosses zones",
                    "pin mlcache:zone to the volume's zone, or re-create the PVC next to the pod",
                )
            )
    workers: list[WorkerLocation] = []
    if expect.run:
        findings, workers = diagnose_workers(expect, [snapshots[name] for name in claims], view.nodes, view.pods)
        # A worker held back by the run's own affinities (one zone, one node each) has no fix of its
        # own: the run's capacity finding says which zone has room for all of them.
        capacity = next((f for f in findings if f.check == "capacity" and f.remedy), None)
        if capacity is not None:
            fix = f"{capacity.remedy} ({capacity.message})"
            problems = [replace(p, fix=fix) if p.fix == DESCRIBE_POD else p for p in problems]
    else:
        findings = diagnose(snapshots[expect.pvc], expect)
    return Report(
        stack=stack,
        expect=expect,
        volume=caches.get(claims[0]),
        pods=pods,
        problems=problems,
        findings=findings,
        moving=list(moving),
        volumes=[caches[name] for name in claims if name in caches] if expect.run else [],
        workers=workers,
    )


def _where(nodes: list[str] | None, view_zones: list[str]) -> str:
    if nodes is None:
        return "any node (no node affinity: network storage)"
    if not nodes:
        return "no node (its node affinity matches none)"
    return f"{', '.join(nodes)} (zone {', '.join(view_zones)})"


def training_verdict(report: Report) -> str:
    training = [p for p in report.pods if p.role == "training"]
    if not report.expect.job:
        return "no training Job (job.enabled is false)"
    if not training:
        return f"no pod of Job {report.expect.job} yet"
    lines = []
    for pod in training:
        if pod.node is None:
            lines.append(f"{pod.pod} is not placed")
        elif pod.with_cache and report.volume and report.volume.nodes is None:
            lines.append(f"{pod.pod} on {pod.node} (zone {pod.zone}); the cache is network storage, reachable from there")
        elif pod.with_cache:
            lines.append(f"{pod.pod} shares node {pod.node} and zone {pod.zone} with its cache: yes")
        else:
            lines.append(f"{pod.pod} on {pod.node} (zone {pod.zone}) shares node and zone with its cache: NO")
    return "; ".join(lines)


def workers_section(report: Report) -> list[str]:
    """A multi-node run: each worker's node and zone with its cache's node, and the one-zone verdict."""
    run = report.expect.run
    assert run is not None, "a report has workers for a multi-node run only"
    lines = [f"Workers (run {run.name}: {run.nodes} nodes, {run.gpus} x {run.gpu_resource} each)"]
    for w in report.workers:
        where = f"on {w.node} (zone {w.zone})" if w.node else f"not placed ({w.pending or 'no pod yet'})"
        cache = w.cache_text()
        verdict = "with it" if w.node and w.node in w.cache_nodes else ("ELSEWHERE" if w.node and w.cache_nodes else "")
        lines.append(f"  worker {w.worker}: {w.pod or 'no pod'} {where}; {cache}{f': {verdict}' if verdict else ''}")
    zones = sorted({w.zone for w in report.workers if w.zone} | {z for w in report.workers for z in w.cache_zones})
    placed = all(w.node for w in report.workers)
    if len(zones) == 1 and placed:
        lines.append(f"All workers in one zone: yes ({zones[0]}), each on its own node with its cache")
    elif len(zones) > 1:
        lines.append(f"All workers in one zone: NO ({', '.join(zones)})")
    else:
        lines.append(f"All workers in one zone: not yet ({sum(not w.node for w in report.workers)} not placed)")
    return lines


def render_report(report: Report) -> str:
    expect = report.expect
    zone = expect.zone or "scheduler's choice"
    lines = [
        f"Placement rehearsal: stack {report.stack} (backend {expect.backend}, class {expect.storage_class}, zone {zone})",
        "",
        "Volume",
    ]
    volumes: Sequence[VolumeLocation | None] = report.volumes or [report.volume]
    for volume in volumes:
        if volume is None:
            lines.append(f"  claim {expect.namespace}/{expect.pvc}: not found")
            continue
        details = ", ".join(x for x in (volume.volume_mode, volume.size) if x)
        bound = f" -> {volume.volume} ({details})" if volume.volume else ""
        lines.append(f"  claim {volume.claim}: {volume.phase}{bound}, class {volume.storage_class}")
        if volume.volume:
            lines.append(f"    on {_where(volume.nodes, volume.zones)}")
    lines += ["", "Pods"]
    if not report.pods:
        lines.append("  (none)")
    for pod in report.pods:
        where = f"node {pod.node} zone {pod.zone}" if pod.node else "not placed"
        cache = ""
        if pod.mounts_cache:
            cache = {True: "  cache: with it", False: "  cache: ELSEWHERE", None: "  cache: mounts it"}[pod.with_cache]
        lines.append(f"  {pod.pod} [{pod.role}] {pod.phase}  {where}{cache}")
    if report.workers:
        lines += ["", *workers_section(report)]
    else:
        lines += ["", f"Training pod and cache: {training_verdict(report)}"]
    pending = [p for p in report.pods if p.node is None]
    if pending:
        lines += ["", "Pending (the scheduler's reason)"]
        for pod in pending:
            lines.append(f"  {pod.pod}: {pod.reason or 'not scheduled yet'}")
    if report.problems:
        lines += ["", "Problems"]
        for problem in report.problems:
            lines.append(f"  {problem.subject} {problem.what}")
            lines.append(f"    fix: {problem.fix}")
    if report.moving:
        lines += ["", "Still moving when the wait ended"]
        lines += [f"  {item}" for item in report.moving]
    findings = render_findings(report.findings).splitlines()
    lines += ["", "findings (as mlcache verify prints them)", *("  " + line for line in findings), ""]
    if report.exit_code == 0:
        lines.append("Result: every pod that mounts the cache is placed with it (exit 0)")
    else:
        lines.append("Result: NOT placed as intended, see above (exit 1)")
    return "\n".join(lines) + "\n"


def latest_verdicts(view: ClusterView, namespace: str) -> dict[str, tuple[str | None, datetime | None]]:
    """Per unplaced pod of the namespace: the scheduler's current message and the time of its
    latest FailedScheduling event (what changes when the scheduler re-tries and says more)."""
    verdicts = {}
    for pod in view.pods:
        if _get(pod, "metadata", "namespace") == namespace and not _get(pod, "spec", "nodeName"):
            failed = events_about(pod, view.events, "FailedScheduling")
            verdicts[name_of(pod)] = (scheduling_message(pod, view.events), event_time(failed[-1]) if failed else None)
    return verdicts


def storage_changed_at(view: ClusterView) -> datetime | None:
    """When the stack's claims, the volumes or the published storage capacity last changed
    (created or updated: a claim given a node or bound, a volume provisioned, capacity published),
    by the API server's clock: the scheduler re-tries unschedulable pods on each of these."""
    times = [
        datetime.fromisoformat(stamp)
        for obj in [*view.claims, *view.volumes.values(), *view.capacities]
        for stamp in [
            _get(obj, "metadata", "creationTimestamp"),
            *(entry.get("time") for entry in _get(obj, "metadata", "managedFields") or []),
        ]
        if stamp
    ]
    return max(times, default=None)


def storage_rechecks(
    view: ClusterView, verdicts: dict[str, tuple[str | None, datetime | None]], now: datetime, backoff: float
) -> tuple[set[str], float]:
    """Of the unplaced pods' `verdicts` (latest_verdicts), those no newer than the last storage
    change (storage_changed_at; whole seconds on both sides, so the same second counts), and for
    how many more seconds the scheduler may re-try them (its maximum backoff after the change).
    The server's clock, not the moment a watch saw the change: a provisioner publishes a new
    class's capacity, and the scheduler selects a node for a claim, moments before or after its
    first verdict on the pod, possibly before the rehearsal starts watching."""
    changed = storage_changed_at(view)
    if changed is None:
        return set(), 0.0
    left = (changed - now).total_seconds() + backoff
    stale = {pod for pod, (_, at) in verdicts.items() if at is not None and at <= changed} if left > 0 else set()
    return (stale, left) if stale else (set(), 0.0)


def volume_state(view: ClusterView) -> tuple:
    """What the scheduler re-tries unschedulable pods on: claims binding, volumes appearing."""
    claims = []
    for claim in view.claims:
        selected = (_get(claim, "metadata", "annotations") or {}).get(SELECTED_NODE)
        claims.append((label(claim), _get(claim, "status", "phase"), _get(claim, "spec", "volumeName"), selected))
    return tuple(sorted(claims, key=str)), tuple(sorted(view.volumes))
