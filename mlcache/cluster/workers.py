"""A multi-node run's workers in the live cluster: where each worker and its cache are, and the
run-level checks (one node each, one zone, enough GPUs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.bound_cache import (
    node_zone,
    reports_not_ready,
    volume_terms,
)
from mlcache.cluster.diagnosis import FAIL, INFO, OK, Expectation, Finding, RunExpectation, Snapshot, diagnose, scheduling_message
from mlcache.cluster.objects import TERMINAL, requested, volume_nodes
from mlcache.program.names import (
    GPU_PRODUCT_LABEL,
    MULTINODE_RUN_LABEL,
    ZONE_LABEL,
)


@dataclass(frozen=True)
class WorkerLocation:
    """Where one worker of a run is, and where its cache is."""

    worker: int
    claim: str
    pod: str | None
    node: str | None
    zone: str | None
    cache_nodes: tuple[str, ...]
    cache_zones: tuple[str, ...]
    pending: str | None  # the scheduler's reason, while the pod waits
    network: bool = False  # its volume has no node affinity: any node reaches it

    def cache_text(self) -> str:
        where = "any node (network storage)" if self.network else ", ".join(self.cache_nodes) or "no node yet"
        return f"cache {self.claim} on {where}"


def worker_location(worker: int, claim: str, snapshot: Snapshot) -> WorkerLocation:
    pods = sorted(snapshot.pods, key=lambda p: _get(p, "metadata", "creationTimestamp") or "")
    live = [p for p in pods if _get(p, "status", "phase") not in TERMINAL] or pods
    pod = live[-1] if live else None
    node = _get(pod, "spec", "nodeName") if pod else None
    # The nodes the volume's node affinity admits (whatever keys the driver wrote: LINSTOR's own
    # linbit.com/hostname, or the zone); none for network storage.
    cache_nodes = (volume_nodes(snapshot.pv, snapshot.nodes) or []) if snapshot.pv else []
    cache_zones = sorted({node_zone(snapshot.nodes.get(n)) or "?" for n in cache_nodes})
    return WorkerLocation(
        worker=worker,
        claim=claim,
        pod=_get(pod, "metadata", "name") if pod else None,
        node=node,
        zone=node_zone(snapshot.nodes.get(node)) if node else None,
        cache_nodes=tuple(cache_nodes),
        cache_zones=tuple(cache_zones),
        pending=(scheduling_message(pod, snapshot.events) or "not scheduled yet") if pod and not node else None,
        network=snapshot.pv is not None and not volume_terms(snapshot.pv),
    )


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


def _is_lost(nodes: dict[str, dict], name: str) -> bool:
    """Gone, or saying it is not Ready (when any node was read at all)."""
    return bool(nodes) and (name not in nodes or reports_not_ready(nodes[name]))


def diagnose_run(locations: list[WorkerLocation], expect: Expectation, nodes: dict[str, dict], pods: list[dict]) -> list[Finding]:
    """Run-level checks of a multi-node run: each worker with its cache, one node each, one zone."""
    run = expect.run
    assert run is not None, "a multi-node run's expectation has its run"
    findings: list[Finding] = []
    for p in locations:
        cache = p.cache_text()
        if p.node is None:
            why = p.pending if p.pod else "no pod"
            findings.append(Finding(FAIL if p.pod else INFO, f"worker {p.worker}", f"not placed ({why}); {cache}"))
        elif p.cache_nodes and p.node not in p.cache_nodes:
            findings.append(
                Finding(FAIL, f"worker {p.worker}", f"pod {p.pod} on {p.node} (zone {p.zone}) but its {cache}", "see locality")
            )
        elif _is_lost(nodes, p.node):
            findings.append(
                Finding(
                    FAIL,
                    f"worker {p.worker}",
                    f"pod {p.pod} on {p.node} (zone {p.zone}), which is not Ready, with its {cache}",
                    f"see worker {p.worker} node loss, if its volume is there",
                )
            )
        else:
            findings.append(Finding(OK, f"worker {p.worker}", f"pod {p.pod} on {p.node} (zone {p.zone}) with its {cache}"))
    placed = [p for p in locations if p.node]
    workers_on = Counter(p.node for p in locations if p.node)
    shared = sorted(node for node, count in workers_on.items() if count > 1)
    if shared:
        findings.append(
            Finding(FAIL, "one node per worker", f"several workers on {', '.join(shared)}", "check the anti-affinity")
        )
    # A worker's node without a zone label is in zone "?", as a cache's is (None would not sort among zones).
    zones = sorted({p.zone or "?" for p in placed} | {z for p in locations for z in p.cache_zones})
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
    waiting = [p for p in locations if p.node is None and p.pod]
    if waiting:
        fits = free_worker_nodes(run, nodes, pods)
        # The zone the run is held in: the pinned one, else where its caches (then its pods) are.
        cache_zones = sorted({z for p in locations for z in p.cache_zones})
        placed_zones = sorted({p.zone for p in placed if p.zone})
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
            bound = [p.claim for p in locations if p.cache_nodes]
            remedy = f"another zone would fit: {room_elsewhere}"
            if bound:
                held = here or ", ".join(cache_zones)
                remedy += f". The run stays in {held} while its caches are there: "
                remedy += f"delete {', '.join(bound)} (DATA LOSS) to move it"
        else:
            remedy = "no zone has room for every worker: free nodes, or lower job.nodes"
        findings.append(Finding(FAIL, "capacity", f"{len(waiting)} of {run.nodes} workers Pending: {reason}", remedy))
    return findings


def diagnose_workers(
    expect: Expectation, snapshots: list[Snapshot], nodes: dict[str, dict], pods: list[dict]
) -> tuple[list[Finding], list[WorkerLocation]]:
    """A multi-node run: each worker's cache checks (prefixed with the worker), then the run's.
    `snapshots` in worker order, each with that worker's claim, volume and training pods."""
    assert expect.run is not None, "a multi-node run's expectation has its run"
    findings: list[Finding] = []
    locations = []
    for worker, (claim, snapshot) in enumerate(zip(expect.run.claims, snapshots, strict=True)):
        worker_expect = replace(expect, pvc=claim)
        findings += [replace(f, check=f"worker {worker} {f.check}") for f in diagnose(snapshot, worker_expect)]
        locations.append(worker_location(worker, claim, snapshot))
    return findings + diagnose_run(locations, expect, nodes, pods), locations
