"""The bound cache: where the live claim's volume may be used, and whether a change may touch it.

A single-replica LINSTOR volume is pinned to one node (its PV's node affinity). A change of zone,
GPU product or pinning that the pinned node cannot satisfy leaves the training pod Pending for
ever; a shrink, or a growth the class does not allow, is refused by the API server half-way
through an `up`. `judge` decides, from the live objects, before any resource is registered.

Live state is read with the kubernetes client from the kubeconfig and context the provider uses
(`kubernetes:kubeconfig`, `kubernetes:context`, `kubernetes:cluster`, `kubernetes:namespace`,
else KUBECONFIG), synchronously, before the first registration (see docs/day2.md for why not
`PersistentVolumeClaim.get`), as the API server's JSON (mlcache.cluster.kube). Every decision
below is a pure function over API-shaped dicts (camelCase, as `kubectl get -o json` shows them),
shared with mlcache verify and mlcache heal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from mlcache.cluster.kube import CLAIMS, JOBS, NODES, STORAGE_CLASS, VOLUME, Kube, api_path
from mlcache.program.names import (
    BACKEND_ANNOTATION,
    COPY_ATTEMPT_ANNOTATION,
    COPY_CACHE_NAME_MAX,
    COPY_INTO_UID_ANNOTATION,
    COPY_LABEL,
    COPY_NEEDS_FILES,
    COPY_NEEDS_NAME_ROOM,
    COPY_NEEDS_ONE_NODE,
    COPY_ROLE_LABEL,
    GPU_PRODUCT_LABEL,
    HOSTNAME_LABEL,
    LABELS,
    PLACEMENT_ANNOTATION,
    SWITCHED_ANNOTATION,
    ZONE_LABEL,
    benchmark_job_name,
    claim_generation,
    claim_resource_name,
    copy_name,
    durable_claim_name,
    generation_claim_name,
)
from mlcache.program.outputs import UNPINNED_ZONE
from mlcache.program.schema import names_fit_after, parse_quantity

# Zone of a placement record created unpinned.
ANY_ZONE = "*"


def get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


# --- placement records ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementRecord:
    """Where pods that mount the cache may run: the zone (None = any) and the GPU product."""

    zone: str | None
    gpu_product: str

    def text(self) -> str:
        return f"zone={self.zone or ANY_ZONE} gpuProduct={self.gpu_product}"

    def describe(self) -> str:
        zone = f"zone {self.zone or UNPINNED_ZONE}"
        return f"{zone}, GPU product {self.gpu_product}"

    @staticmethod
    def parse(text: str | None) -> PlacementRecord | None:
        """The annotation's value back as a record; None when absent or not ours."""
        if not text:
            return None
        fields = dict(part.partition("=")[::2] for part in text.split())
        if "zone" not in fields or "gpuProduct" not in fields:
            return None
        zone = fields["zone"]
        return PlacementRecord(zone=None if zone == ANY_ZONE else zone, gpu_product=fields["gpuProduct"])


# --- volumes and nodes ------------------------------------------------------------------------


def volume_terms(pv: Mapping | None) -> list[dict[str, set[str]]]:
    """The PV's required node-selector terms (ORed), each as label key -> allowed values (ANDed)."""
    terms = []
    for term in get(pv, "spec", "nodeAffinity", "required", "nodeSelectorTerms") or []:
        constraints: dict[str, set[str]] = {}
        for expression in term.get("matchExpressions") or []:
            if expression.get("operator") == "In":
                constraints.setdefault(expression["key"], set()).update(expression.get("values") or [])
        if constraints:
            terms.append(constraints)
    return terms


def node_labels(node: Mapping) -> dict[str, str]:
    return dict(get(node, "metadata", "labels") or {})


def _label_value(node: Mapping, key: str) -> str | None:
    labels = node_labels(node)
    # Hostname keys (kubernetes.io/hostname, linbit.com/hostname) name the node when unlabelled.
    if key not in labels and key.endswith("/hostname"):
        return get(node, "metadata", "name")
    return labels.get(key)


def node_in_terms(node: Mapping, terms: list[dict[str, set[str]]]) -> bool:
    return any(all(_label_value(node, key) in values for key, values in term.items()) for term in terms)


def volume_nodes(pv: Mapping | None, nodes: Iterable[Mapping]) -> list[Mapping]:
    """The nodes (of those given) the volume may be used from."""
    terms = volume_terms(pv)
    return [n for n in nodes if node_in_terms(n, terms)]


def pinned_node_names(pv: Mapping | None) -> list[str]:
    """Node names the PV pins by hostname (one per diskful replica with remote access off)."""
    names: set[str] = set()
    for term in volume_terms(pv):
        for key, values in term.items():
            if key.endswith("/hostname"):
                names.update(values)
    return sorted(names)


def node_zone(node: Mapping | None) -> str | None:
    return get(node, "metadata", "labels", ZONE_LABEL)


def node_reaches(node: Mapping, placement: PlacementRecord) -> bool:
    labels = node_labels(node)
    if labels.get(GPU_PRODUCT_LABEL) != placement.gpu_product:
        return False
    return placement.zone is None or labels.get(ZONE_LABEL) == placement.zone


def ready_condition(node: Mapping | None) -> Mapping | None:
    return next((c for c in get(node, "status", "conditions") or [] if c.get("type") == "Ready"), None)


def is_ready(node: Mapping | None) -> bool:
    condition = ready_condition(node)
    return condition is not None and condition.get("status") == "True"


def reports_not_ready(node: Mapping | None) -> bool:
    """The node says it is not Ready (False or Unknown); one that reports no Ready condition yet is
    not judged."""
    condition = ready_condition(node)
    return condition is not None and condition.get("status") != "True"


def is_cordoned(node: Mapping | None) -> bool:
    return bool(get(node, "spec", "unschedulable"))


def has_taint(node: Mapping, key: str) -> bool:
    return any(t.get("key") == key for t in get(node, "spec", "taints") or [])


def describe_node(node: Mapping) -> str:
    labels = node_labels(node)
    return (
        f"node {get(node, 'metadata', 'name')} (zone {labels.get(ZONE_LABEL, '?')}, "
        f"GPU product {labels.get(GPU_PRODUCT_LABEL, 'none')})"
    )


# --- quantities -------------------------------------------------------------------------------


def quantity_bytes(text: str | None) -> Decimal | None:
    """A storage quantity as the API returns it ("500Gi", "1T", "536870912000"); None if absent."""
    return parse_quantity(str(text)) if text else None


def required_bytes(text: str | None) -> Decimal:
    """quantity_bytes of a quantity that is always there: a claim's request (the API requires it)
    or cache.size (a validated setting)."""
    value = quantity_bytes(text)
    assert value is not None, f"no storage quantity: {text!r}"
    return value


# --- the guard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """What the stack's settings ask of the cache, in the terms the guard needs."""

    stack: str
    claim: str
    storage_class: str
    volume_mode: str
    size: str
    placement: PlacementRecord
    relocate: str  # settings.RELOCATE_MODES
    protect: bool
    # The stack's own class setting (None: the class is not managed here, read it live).
    expansion_allowed: bool | None
    # A Job that mounts the cache is configured (training or benchmark).
    has_consumer: bool
    backend: str = "linstor"
    durable_copy: bool = False
    durable_class: str = ""  # rookCeph.storageClassName: the durable copy's class
    made_class: str | None = None  # the LINSTOR class the stack makes (linstor.*; None: it makes none)
    run: str | None = None  # the training Job the settings name (single-node runs; None: none)
    dropped: str | None = None  # the training Job this up deletes (job.enabled false): it holds no move
    benchmark: str | None = None  # the storage benchmark Job the settings name (worker 0's; None: none)
    nodes: int = 1  # job.nodes: a multi-node run's workers mount claims a move does not copy


def heal_command(stack: str, protected: bool) -> str:
    """The `mlcache heal` a stack's node loss needs: with --allow-protected on a protected cache."""
    return f"mlcache heal --stack {stack}" + (" --allow-protected" if protected else "")


@dataclass(frozen=True)
class LiveCache:
    """The live objects, as the API returns them: the claim (None = absent), its PV, the nodes the
    PV selects, and the claim's StorageClass (None when unread or absent)."""

    namespace: str
    claim: Mapping | None
    volume: Mapping | None = None
    nodes: list[Mapping] = field(default_factory=list)
    storage_class: Mapping | None = None
    # The claim's generation (names.generation_claim_name); while a move is under way, the
    # generation it copies from (still live) and the copy Job into this one (None: absent).
    generation: int = 0
    older: LiveCache | None = None
    copy_job: Mapping | None = None
    # The training Job (None: absent): a move neither starts nor switches while it runs.
    training_job: Mapping | None = None
    # Every Job but a copy's that mounts a generation of the cache (training runs, old and new, and
    # the benchmark): none may run when a move starts, and no new run may start on the old claim
    # during it. None: unknown (an offline preview whose base revision hides its Jobs as secret).
    consumers: tuple[Mapping, ...] | None = ()
    # The durable copy's claim and its StorageClass (None: absent or unread).
    durable: Mapping | None = None
    durable_class: Mapping | None = None


@dataclass(frozen=True)
class Unread:
    """The guard could not read the cluster: it stands aside and says why."""

    reason: str


@dataclass(frozen=True)
class Verdict:
    refusal: str | None = None
    notes: tuple[str, ...] = ()
    # The claim is known to be absent or not bound: no volume pins it yet, so its placement
    # record may follow the config (otherwise the record keeps the placement it was bound under).
    unbound: bool = False
    # The generation of the claim the settings describe, and the move into it (None: no move).
    generation: int = 0
    move: Move | None = None
    # The hostnames of the node(s) the bound cache's volume is pinned to (none: not bound, not
    # pinned, or moving): where a pod that reads it beside training goes (the durable refresh).
    nodes: tuple[str, ...] = ()
    # What the durable copy's claim asks for (None: cache.size): a live claim larger than cache.size
    # keeps its size, since no claim can shrink.
    durable_size: str | None = None
    # The claim training was switched from onto this generation's (None: no move has switched onto
    # it): the program marks the claim with it (SWITCHED_ANNOTATION), and keeps the mark.
    switched_from: str | None = None


PROTECT_FALSE = "pulumi config set --path mlcache:cache.protect false"


def relocate_key_hint(mode: str) -> str:
    return f"pulumi config set --path mlcache:cache.relocate {mode}"


def copy_unavailable(wanted: Wanted, live_mode: str) -> str | None:
    """Why a move by copy cannot carry this cache (the settings or the guard refuse `copy`), or None."""
    if "Block" in (live_mode, wanted.volume_mode):
        return COPY_NEEDS_FILES
    if wanted.nodes > 1:
        return COPY_NEEDS_ONE_NODE
    if not names_fit_after(wanted.claim, COPY_CACHE_NAME_MAX):
        return COPY_NEEDS_NAME_ROOM
    return None


def volume_mode(claim: Mapping | None) -> str:
    """A claim's volume mode, Kubernetes' default (Filesystem) where it names none."""
    return get(claim, "spec", "volumeMode") or "Filesystem"


# The ways out of a change the bound cache cannot follow, offered by every refusal: move it (kept
# until the copy is verified) where a copy can carry it, or re-create it empty.
def move_ways(wanted: Wanted, live: LiveCache) -> str:
    protected = f" plus `{PROTECT_FALSE}`" if wanted.protect else ""
    fresh = (
        f"re-create it empty with `{relocate_key_hint('fresh')}`{protected} "
        f"(DATA LOSS: re-downloaded by cache.prefetch), then set cache.relocate back to false"
    )
    if why_not := copy_unavailable(wanted, volume_mode(live.claim)):
        return f"{fresh} (no move by copy here: {why_not})"
    return (
        f"move the cache with `{relocate_key_hint('copy')}` (the cached models are copied and verified; the old "
        f"cache is kept until then), or {fresh}"
    )


def _replacement(wanted: Wanted, claim: Mapping) -> str | None:
    """Why this up re-creates the claim anyway (then nothing bound is stranded), or None."""
    live_class = get(claim, "spec", "storageClassName")
    if live_class != wanted.storage_class:
        return f"its storage class changes ({live_class} -> {wanted.storage_class})"
    live_mode = volume_mode(claim)
    if live_mode != wanted.volume_mode:
        return f"its volume mode changes ({live_mode} -> {wanted.volume_mode})"
    return None


def _relocation_trigger(wanted: Wanted, claim: Mapping) -> str | None:
    """With cache.relocate fresh, what makes this up re-create the claim (replaceOnChanges), or None."""
    if wanted.relocate != "fresh":
        return None
    recorded = get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION)
    if recorded != wanted.placement.text():
        was = PlacementRecord.parse(recorded)
        return f"its placement changes ({was.describe() if was else 'unrecorded'} -> {wanted.placement.describe()})"
    if quantity_bytes(get(claim, "spec", "resources", "requests", "storage")) != quantity_bytes(wanted.size):
        return f"its size changes ({get(claim, 'spec', 'resources', 'requests', 'storage')} -> {wanted.size})"
    return None


def judge(wanted: Wanted, live: LiveCache | Unread) -> Verdict:
    """Refuse (one message, before anything is registered) a change the bound cache cannot take."""
    if isinstance(live, Unread):
        return Verdict(notes=(f"bound-cache guard stood aside: {live.reason}",))
    refusal = _durable_refusal(wanted, live) or _durable_claim_refusal(wanted, live)
    if refusal:
        return Verdict(refusal=refusal)
    verdict = _marked(_judge_cache(wanted, live), live)
    kept = _kept_durable_size(wanted, live)
    if kept is None or verdict.refusal:
        return verdict
    note = (
        f"bound-cache guard: the durable copy's claim {durable_claim_name(wanted.claim)} keeps {kept} "
        f"(cache.size {wanted.size}: a claim cannot shrink)"
    )
    return replace(verdict, durable_size=kept, notes=(*verdict.notes, note))


def _marked(verdict: Verdict, live: LiveCache) -> Verdict:
    """The switch's mark on the claim of the verdict's generation: set by the up that switches, kept after."""
    if verdict.move is not None and verdict.move.switched:
        return replace(verdict, switched_from=verdict.move.source.name)
    claims = {live.generation: live.claim, **({live.older.generation: live.older.claim} if live.older else {})}
    mark = get(claims.get(verdict.generation), "metadata", "annotations", SWITCHED_ANNOTATION)
    return replace(verdict, switched_from=mark) if mark else verdict


def _judge_cache(wanted: Wanted, live: LiveCache) -> Verdict:
    claim = live.claim
    if claim is None:
        where = f"{live.namespace}/{wanted.claim}"
        return Verdict(
            notes=(f"bound-cache guard: claim {where} does not exist yet; its first consumer places it",),
            unbound=True,
            generation=live.generation,
        )
    where = f"{live.namespace}/{get(claim, 'metadata', 'name')}"
    if live.older is not None:
        return _judge_move_under_way(wanted, live)
    replaced = _replacement(wanted, claim)
    bound = get(claim, "status", "phase") == "Bound" and bool(get(claim, "spec", "volumeName"))
    if replaced and wanted.relocate == "copy" and bound:
        return _start_move(wanted, live, where, replaced)
    if replaced and bound and wanted.relocate == "false":
        return Verdict(
            refusal=(
                f"bound-cache guard: this change re-creates the bound claim {where}: {replaced}, which Kubernetes "
                f"cannot change on a claim, and the cached models would go with it. Nothing was changed. Either "
                f"{move_ways(wanted, live)}."
            )
        )
    if replaced:
        return Verdict(
            notes=(f"bound-cache guard: claim {where} is re-created by this change ({replaced})",),
            generation=live.generation,
        )
    relocating = _relocation_trigger(wanted, claim)
    if relocating:
        return _judge_relocation(wanted, live, where, relocating)
    phase = get(claim, "status", "phase")
    requested = get(claim, "spec", "resources", "requests", "storage")
    if not bound:
        if quantity_bytes(requested) != quantity_bytes(wanted.size):
            return Verdict(
                refusal=(
                    f"mlcache:cache.size = {wanted.size!r}: claim {where} is not bound yet (phase {phase}) and Kubernetes "
                    f"allows no size change before a claim is bound (it asks for {requested}). Nothing was changed. "
                    f"Either put cache.size back to {requested}, or re-create the claim at the new size with "
                    f"`{relocate_key_hint('fresh')}` (nothing is cached on an unbound claim), then set it back to false."
                )
            )
        return Verdict(
            notes=(f"bound-cache guard: claim {where} is not bound yet (phase {phase}); its first consumer places it",),
            unbound=True,
            generation=live.generation,
        )
    notes = [*_placement_notes(wanted, live, where)]
    stranded = _placement_refusal(wanted, live, where)
    refusal = stranded or _resize_refusal(wanted, live, where)
    lost = bool(volume_terms(live.volume)) and not volume_nodes(live.volume, live.nodes)
    moved = get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION) != wanted.placement.text()
    if wanted.relocate == "copy" and (refusal or (lost and moved)):
        reason = "the configured placement cannot reach its volume" if stranded or lost else "its size cannot change in place"
        return _start_move(wanted, live, where, reason)
    nodes = ClaimFacts.of(live).nodes if volume_terms(live.volume) else ()
    return Verdict(refusal=refusal, notes=tuple(notes), generation=live.generation, nodes=nodes)


def _durable_refusal(wanted: Wanted, live: LiveCache) -> str | None:
    """Turning cache.durableCopy on or off adds or removes the training pod's restore step: that
    replaces the training Job, so never while it runs."""
    if not is_running(live.training_job):
        return None
    if (durable_claim_name(wanted.claim) in mounted_claims(live.training_job)) == wanted.durable_copy:
        return None
    return (
        f"mlcache:cache.durableCopy = {str(wanted.durable_copy).lower()}: turning it "
        f"{'on' if wanted.durable_copy else 'off'} changes the training pod (its restore step), which replaces "
        f"(stops) the training Job {live.namespace}/{get(live.training_job, 'metadata', 'name')} that still runs. "
        f"Nothing was changed. Set it once the run has finished (`kubectl get job -n {live.namespace}`), or put it back."
    )


def _durable_claim_refusal(wanted: Wanted, live: LiveCache) -> str | None:
    """The durable copy's claim cannot change class, nor grow on a class that does not expand: the
    API server would refuse the update halfway through `up`."""
    if not wanted.durable_copy or live.durable is None:
        return None
    name = f"{live.namespace}/{get(live.durable, 'metadata', 'name')}"
    current = get(live.durable, "spec", "storageClassName")
    if current and current != wanted.durable_class:
        return (
            f"mlcache:rookCeph.storageClassName = {wanted.durable_class!r}: the durable copy's claim {name} is on "
            f"class {current!r}, and a claim's class cannot change. Nothing was changed. Put it back to {current!r}, "
            "or move the durable copy: set cache.durableCopy false and `pulumi up` (this deletes the durable copy; "
            "cache.protect false first if it is protected), then set the class and cache.durableCopy true."
        )
    requested = get(live.durable, "spec", "resources", "requests", "storage")
    if (quantity_bytes(requested) or 0) >= required_bytes(wanted.size):
        return None
    if get(live.durable, "status", "phase") != "Bound":
        return (
            f"mlcache:cache.size = {wanted.size!r}: the durable copy's claim {name} asks for {requested} and is not "
            "bound yet; Kubernetes resizes only a bound claim. Nothing was changed. Keep cache.size at most "
            f"{requested} until the durable claim is bound (`kubectl get pvc -n {live.namespace}`)."
        )
    if get(live.durable_class, "allowVolumeExpansion") is not True:
        return (
            f"mlcache:cache.size = {wanted.size!r}: the durable copy's claim {name} asks for {requested} on class "
            f"{current!r}, which does not allow volume expansion (allowVolumeExpansion), so it cannot grow with the "
            f"cache. Nothing was changed. Keep cache.size at most {requested}, or allow expansion on {current!r}."
        )
    return None


def _kept_durable_size(wanted: Wanted, live: LiveCache) -> str | None:
    requested = get(live.durable, "spec", "resources", "requests", "storage")
    if not wanted.durable_copy or not requested:
        return None
    return requested if (quantity_bytes(requested) or 0) > required_bytes(wanted.size) else None


def _bound_location(live: LiveCache) -> str:
    volume = get(live.volume, "metadata", "name") or get(live.claim, "spec", "volumeName")
    nodes = volume_nodes(live.volume, live.nodes)
    if nodes:
        return f"volume {volume} on " + " and ".join(describe_node(n) for n in nodes)
    pinned = pinned_node_names(live.volume)
    return f"volume {volume} on node {', '.join(pinned) or '?'} (not found in the cluster)"


def _placement_notes(wanted: Wanted, live: LiveCache, where: str) -> list[str]:
    terms = volume_terms(live.volume)
    if not terms:
        return [f"bound-cache guard: claim {where} is bound to network storage (no node affinity): any placement reaches it"]
    if not volume_nodes(live.volume, live.nodes):
        pinned = ", ".join(pinned_node_names(live.volume)) or "?"
        return [
            f"bound-cache guard: the node(s) of claim {where} ({pinned}) are gone: the cache is lost (node loss); "
            f"heal it with `{heal_command(wanted.stack, wanted.protect)}`"
        ]
    return [f"bound-cache guard: claim {where} is bound to {_bound_location(live)}"]


def _placement_refusal(wanted: Wanted, live: LiveCache, where: str) -> str | None:
    nodes = volume_nodes(live.volume, live.nodes)
    # Nothing is stranded while no Job is configured on the cache, unless the settings ask to move it
    # there by copy: a move follows the placement asked for, with or without a Job now.
    if not (wanted.has_consumer or wanted.relocate == "copy") or not volume_terms(live.volume) or not nodes:
        return None
    if any(node_reaches(n, wanted.placement) for n in nodes):
        return None
    bound = node_labels(nodes[0])
    return (
        f"bound-cache guard: the cache {where} is bound to {_bound_location(live)}; the configured placement "
        f"({wanted.placement.describe()}) cannot reach it: the training pod would stay Pending for ever "
        f"(volume node affinity conflict) holding its GPU quota. Nothing was changed. Either put the placement back "
        f"(mlcache:zone {bound.get(ZONE_LABEL, '?')} or unset, job.gpuProduct {bound.get(GPU_PRODUCT_LABEL, '?')}), "
        f"or {move_ways(wanted, live)}."
    )


def _resize_refusal(wanted: Wanted, live: LiveCache, where: str) -> str | None:
    claim = live.claim
    requested = get(claim, "spec", "resources", "requests", "storage")
    capacity = get(claim, "status", "capacity", "storage")
    new, old, held = required_bytes(wanted.size), required_bytes(requested), quantity_bytes(capacity)
    # The API server lets a request shrink only to recover from a failed expansion (above status.capacity).
    if new < old and (held is None or new <= held):
        return (
            f"mlcache:cache.size = {wanted.size!r} is smaller than the live claim {where} ({requested}): Kubernetes "
            f"cannot shrink a volume and the API server would refuse the update half-way through the up. Nothing was "
            f"changed. Either put cache.size back to {requested} or more, or, to have it at {wanted.size}, "
            f"{move_ways(wanted, live)}."
        )
    if new > old:
        allowed = wanted.expansion_allowed
        class_name = get(claim, "spec", "storageClassName")
        if allowed is None:
            allowed = get(live.storage_class, "allowVolumeExpansion")
        if allowed is False:
            allow = (
                "`pulumi config set --path mlcache:linstor.allowVolumeExpansion true`"
                if wanted.expansion_allowed is not None
                else f"ask the cluster admin to set allowVolumeExpansion: true on StorageClass {class_name}"
            )
            return (
                f"mlcache:cache.size = {wanted.size!r} grows the live claim {where} ({requested}) but StorageClass "
                f"{class_name} does not allow expansion: the API server would refuse the update. Nothing was changed. "
                f"Either put cache.size back to {requested}, allow expansion ({allow}; expansion keeps the data), or "
                f"{move_ways(wanted, live)}."
            )
    return None


def _judge_relocation(wanted: Wanted, live: LiveCache, where: str, trigger: str) -> Verdict:
    claim = live.claim
    growth_only = (
        get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION) == wanted.placement.text()
        and required_bytes(wanted.size) > required_bytes(get(claim, "spec", "resources", "requests", "storage"))
        and (wanted.expansion_allowed is not False)
        and (wanted.expansion_allowed or get(live.storage_class, "allowVolumeExpansion") is not False)
    )
    # Before the protection: unprotecting would only lead to this refusal.
    if growth_only and get(claim, "status", "phase") == "Bound":
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate is still fresh, so growing cache.size to {wanted.size!r} would re-create the "
                f"cache {where} (DATA LOSS) although it can expand in place. Nothing was changed. Set "
                f"`{relocate_key_hint('false')}` to expand it in place, keeping the data."
            )
        )
    if wanted.protect:
        why_not = copy_unavailable(wanted, volume_mode(claim))
        move = "" if why_not else f"`{relocate_key_hint('copy')}` to move it with its contents, "
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate = fresh re-creates the protected cache {where} ({trigger}): set "
                f"`{PROTECT_FALSE}` in the same change to accept the DATA LOSS, {move}or `{relocate_key_hint('false')}` "
                f"to keep it{f' (no move by copy here: {why_not})' if why_not else ''}. Nothing was changed."
            )
        )
    bound = _bound_location(live) if get(claim, "spec", "volumeName") else "no volume yet"
    return Verdict(
        notes=(
            f"bound-cache guard: relocating: claim {where} ({bound}) is deleted and re-created because {trigger}; "
            f"the Job's pod binds a fresh volume where it lands (DATA LOSS: cache.prefetch re-warms it)",
        ),
        generation=live.generation,
    )


# --- moves (cache.relocate copy) ----------------------------------------------------------------

# A move's states, as `up` and `mlcache verify` tell them.
COPYING, VERIFIED, FAILED = "copying", "verified", "failed"
# How every note and refusal of the guard begins, and how a note begins that announces a move's
# next step, which the up takes (`mlcache drift` tells those changes from hand edits by it).
NOTE_PREFIX = "bound-cache guard: "
MOVE_NOTE_PREFIX = NOTE_PREFIX + "move: "
# Verified, but training still runs on the old claim: switching would replace (kill) the run.
HELD = "verified, training running"
# How the copy runs: one pod mounting both claims, or a sender beside the old volume streaming to
# a receiver where the new one binds.
LOCAL, STREAM = "local", "stream"


@dataclass(frozen=True)
class ClaimFacts:
    """A live generation of the cache: what the program needs to keep it exactly as it is during a
    move, and to place the pods that read it."""

    name: str
    generation: int
    storage_class: str
    backend: str
    size: str
    placement: PlacementRecord
    # The hostnames of the nodes its volume may be used from; `pinned` False: it attaches anywhere.
    nodes: tuple[str, ...]
    pinned: bool

    @staticmethod
    def of(live: LiveCache) -> ClaimFacts:
        claim = live.claim
        nodes = volume_nodes(live.volume, live.nodes)
        record = PlacementRecord.parse(get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION))
        if record is None:  # made before placement records (adopted): where its volume is
            record = PlacementRecord(None, node_labels(nodes[0]).get(GPU_PRODUCT_LABEL, "") if nodes else "")
        return ClaimFacts(
            name=get(claim, "metadata", "name"),
            generation=live.generation,
            storage_class=get(claim, "spec", "storageClassName") or "",
            backend=get(claim, "metadata", "annotations", BACKEND_ANNOTATION) or "linstor",
            size=get(claim, "spec", "resources", "requests", "storage"),
            placement=record,
            nodes=tuple(sorted({_label_value(n, HOSTNAME_LABEL) or "" for n in nodes})),
            pinned=bool(volume_terms(live.volume)),
        )


@dataclass(frozen=True)
class Move:
    """A move of the cache from `source` into a new claim of generation `generation`."""

    source: ClaimFacts
    generation: int
    mode: str  # LOCAL or STREAM
    state: str  # COPYING, VERIFIED or FAILED (the last copy failed: this up retries it, resuming)
    attempt: int = 1  # the copy's attempt this up registers
    keep_source: bool = False  # verified, but cache.protect keeps the old claim
    # The copy Job has a pod at work, or between retries, or has completed: its Jobs stay as the
    # cluster has them (a pending or image-less one may be fixed by the settings; a failed one is
    # retried anyway).
    copy_busy: bool = False
    # The UID of the new claim as the guard read it (None: not made yet): what the copy fills.
    into_uid: str | None = None

    @property
    def switched(self) -> bool:
        """Training runs on the new claim (the copy is verified)."""
        return self.state == VERIFIED

    @property
    def copying(self) -> bool:
        """The copy objects are registered: until training switches (never after: a changed copy Job
        would run again, from the old claim into the live one)."""
        return not self.switched

    @property
    def keeps_source(self) -> bool:
        """The old claim is registered: until training switches, or for as long as cache.protect keeps it."""
        return not self.switched or self.keep_source


def copy_mode(source: ClaimFacts, backend: str) -> str:
    """One pod mounting both claims where one side attaches anywhere (a Rook-Ceph volume: the
    runbook's migration and its rollback); else a sender beside the old volume and a receiver where
    training will run."""
    return LOCAL if not source.pinned or backend != "linstor" else STREAM


def job_ended(job: Mapping | None, condition: str) -> bool:
    """The Job has the final condition `condition` (Complete or Failed)."""
    return any(c.get("type") == condition and c.get("status") == "True" for c in get(job, "status", "conditions") or [])


def copy_at_work(job: Mapping | None) -> bool:
    """A copy pod is at work: Ready (status.ready), or, where the cluster does not count ready pods
    (JobReadyPods off, before Kubernetes 1.29), active."""
    ready = get(job, "status", "ready")
    return bool(ready) if ready is not None else bool(get(job, "status", "active"))


def copy_retrying(job: Mapping | None) -> bool:
    """A copy pod failed and its Job has not given up, and no pod of it exists: between retries (the
    Job's backoff), when the next pod resumes from what the last one wrote. A pod made for the next
    try that cannot start (no room for it any more) is active, not held: the settings may fix it."""
    return bool(get(job, "status", "failed")) and not get(job, "status", "active") and unfinished(job)


def copied_into_another(job: Mapping | None, claim: Mapping | None) -> bool:
    """The copy Job filled a claim of this name that has since been deleted (by hand): the claim
    live now is another, empty one, which its Complete does not speak for."""
    into = get(job, "spec", "template", "metadata", "annotations", COPY_INTO_UID_ANNOTATION)
    return into is not None and get(claim, "metadata", "uid") not in (None, into)


def copy_state(job: Mapping | None, claim: Mapping | None = None) -> tuple[str, int]:
    """The copy Job's state and attempt (a Job not created yet, or deleted, is still copying, and so
    is one that filled a claim since deleted: the up makes it again for `claim`)."""
    attempt = int(get(job, "spec", "template", "metadata", "annotations", COPY_ATTEMPT_ANNOTATION) or 1)
    if copied_into_another(job, claim):
        return COPYING, attempt
    if job_ended(job, "Complete"):
        return VERIFIED, attempt
    if job_ended(job, "Failed"):
        return FAILED, attempt
    return COPYING, attempt


def unfinished(job: Mapping | None) -> bool:
    """A Job with no final condition: running, or about to (suspended by Kueue, between retries),
    so its pods may yet write to the claim it mounts."""
    return not (job_ended(job, "Complete") or job_ended(job, "Failed"))


def is_running(job: Mapping | None) -> bool:
    """A Job with pods at work and no final condition yet."""
    return bool(get(job, "status", "active")) and unfinished(job)


def jobs_on_cache(live: LiveCache) -> list[Mapping]:
    """The Jobs that mount the cache: those read by label, and the training Job the settings name."""
    jobs = {get(job, "metadata", "name"): job for job in live.consumers or ()}
    if live.training_job is not None:
        jobs.setdefault(get(live.training_job, "metadata", "name"), live.training_job)
    return list(jobs.values())


def _new_run_refusal(wanted: Wanted, live: LiveCache, where: str, doing: str) -> str | None:
    """A refusal when the settings name a training or benchmark Job the cluster does not have while
    training stays on the old claim: a new run would train there after the copy read it, and what it
    writes (its outputs, its completion marker) would not reach the new claim, which the switch
    trains on; a benchmark would write its files there in the middle of the copy."""
    if live.consumers is None:
        return None
    if wanted.nodes > 1 and wanted.dropped is None:
        return (
            f"bound-cache guard: this up would {doing} while training stays on {where}, and start a run on job.nodes "
            f"{wanted.nodes} workers, the first of them on {where} after the copy read it (a move copies a single-node "
            f"cache). Nothing was changed. Set job.nodes 1 until `mlcache verify --stack {wanted.stack}` says training "
            "runs on the new claim, then set it again."
        )
    names = {get(job, "metadata", "name") for job in jobs_on_cache(live)}
    for key, name in (("job.enabled", wanted.run), ("benchmark.enabled", wanted.benchmark)):
        if name is None or name in names:
            continue
        why = (
            "a new job.runId, job.enabled turned on, or a finished Job removed by a TTL controller; a new run would "
            f"train on {where} after the copy read it, and what it writes (its outputs, its completion marker) would "
            "not reach the new claim"
            if key == "job.enabled"
            else f"benchmark.enabled turned on; it would write its files on {where} in the middle of the copy"
        )
        return (
            f"bound-cache guard: this up would {doing} while training stays on {where}, and create the Job {name} "
            f"there, which is not in the cluster ({why}). Nothing was changed. Set {key} false until `mlcache verify "
            f"--stack {wanted.stack}` says training runs on the new claim, then set it again"
            + (
                ": a finished run's Job, created then, finds its completion marker on the copy and exits at once."
                if key == "job.enabled"
                else "."
            )
        )
    return None


def mounting_jobs(jobs: Iterable[Mapping], cache_name: str) -> list[Mapping]:
    """The Jobs that mount a generation of the cache, but for a move's copy Jobs and the durable refresh."""
    return [
        job
        for job in jobs
        if not {COPY_LABEL, COPY_ROLE_LABEL} & set(get(job, "spec", "template", "metadata", "labels") or {})
        and any(claim_generation(cache_name, name) is not None for name in mounted_claims(job))
    ]


def mounted_generation(cache_name: str, jobs: Iterable[Mapping]) -> int:
    """The newest generation of the cache the Jobs mount (0: none): a claim deleted after node loss
    (mlcache heal) comes back under the name its Jobs mount, so they are not replaced."""
    mounted = [claim_generation(cache_name, name) for job in jobs for name in mounted_claims(job)]
    return max((number for number in mounted if number is not None), default=0)


def switched_to(claim: Mapping | None, jobs: Iterable[Mapping]) -> bool:
    """Training was switched onto this claim: the switch marked it, or a Job mounts it (only the up
    that switches puts a Job on a new claim; before it every consumer stays on the old one)."""
    name = get(claim, "metadata", "name")
    return get(claim, "metadata", "annotations", SWITCHED_ANNOTATION) is not None or any(
        name in mounted_claims(job) for job in jobs
    )


def cache_generations(cache_name: str, claims: Iterable[Mapping]) -> list[tuple[int, Mapping]]:
    """The cache's claims among `claims`, each with its generation, oldest first."""
    found = ((claim_generation(cache_name, get(c, "metadata", "name") or ""), c) for c in claims)
    return sorted(((number, c) for number, c in found if number is not None), key=lambda pair: pair[0])


def _describes(wanted: Wanted, claim: Mapping | None) -> bool:
    """The settings are exactly what this claim was made for."""
    return (
        get(claim, "spec", "storageClassName") == wanted.storage_class
        and volume_mode(claim) == wanted.volume_mode
        and quantity_bytes(get(claim, "spec", "resources", "requests", "storage")) == quantity_bytes(wanted.size)
        and get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION) == wanted.placement.text()
    )


def _class_kept_with(wanted: Wanted, source: LiveCache, where: str) -> Verdict | None:
    """A refusal when the move would drop the class its old claim is on: the program keeps the class
    it makes for as long as it keeps the old claim, so the settings must still make that class."""
    labels = get(source.storage_class, "metadata", "labels") or {}
    made_here = bool(labels) and all(labels.get(key) == value for key, value in LABELS.items())
    name = get(source.claim, "spec", "storageClassName")
    if not made_here or wanted.made_class == name:
        return None
    return Verdict(
        refusal=(
            f"mlcache:cache.relocate = 'copy': the cache {where} is on the StorageClass {name}, which this stack made; "
            f"the move keeps that claim, and so its class, until the copy is verified. Nothing was changed. Keep "
            f"linstor.storageClassName {name} and linstor.manageStorageClass true until the move is over."
        )
    )


def _start_move(wanted: Wanted, live: LiveCache, where: str, reason: str) -> Verdict:
    if volume_mode(live.claim) == "Block":
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate = 'copy': the cache {where} is a Block-mode volume, which holds no files to copy "
                f"and verify. Nothing was changed. Use `{relocate_key_hint('fresh')}` (DATA LOSS) or put the settings back."
            )
        )
    if refusal := _class_kept_with(wanted, live, where):
        return refusal
    source = ClaimFacts.of(live)
    if source.pinned and not source.nodes:
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate = 'copy': the node(s) of the cache {where} are gone, so there is nothing left to "
                f"copy from (node loss). Nothing was changed. Heal it with `{heal_command(wanted.stack, wanted.protect)}`, "
                f"or re-create it empty with `{relocate_key_hint('fresh')}` (DATA LOSS)."
            )
        )
    # A training Job this up deletes holds nothing while no pod of it is at work (pending, suspended).
    running = [
        get(job, "metadata", "name")
        for job in jobs_on_cache(live)
        if unfinished(job) and (get(job, "metadata", "name") != wanted.dropped or get(job, "status", "ready"))
    ]
    if running:
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate = 'copy': Job {', '.join(running)} still runs on the cache {where} ({reason}), "
                f"or has not finished (a suspended Job, one between retries). "
                f"Nothing was changed. A copy beside a run would wait for its GPUs (and a Rook-Ceph volume's "
                f"attachment), and the files the run writes would fail verification. Start the move once the run "
                f"has finished (`kubectl get job -n {live.namespace}`); or, for a run that cannot go on (pending, "
                f"suspended), set job.enabled false, which deletes it, to start the move now, and set it back once "
                f"training has switched; or put the settings back."
            )
        )
    if new_run := _new_run_refusal(wanted, live, where, f"start a move of the cache {where} ({reason})"):
        return Verdict(refusal=new_run)
    move = Move(source, live.generation + 1, copy_mode(source, wanted.backend), COPYING)
    target = f"{live.namespace}/{generation_claim_name(wanted.claim, move.generation)}"
    return Verdict(
        notes=(
            f"{MOVE_NOTE_PREFIX}moving the cache because {reason}: {where} ({_bound_location(live)}) is copied into "
            f"the new claim {target} ({move.mode} copy, Job {copy_name(wanted.claim, move.generation)}); training stays on "
            f"{where} until the copy is verified. Follow it with `mlcache verify --stack {wanted.stack}`, then run "
            f"`pulumi up` again to switch training to the new claim (docs/moving-the-cache.md)",
        ),
        generation=move.generation,
        move=move,
    )


def _judge_move_under_way(wanted: Wanted, live: LiveCache) -> Verdict:
    """Two generations live: a move from the older into the newer. Finish it, retry it, or call it
    off; after the switch the older is only kept (cache.protect) and the newer is the cache."""
    older = live.older
    assert older is not None
    target = f"{live.namespace}/{get(live.claim, 'metadata', 'name')}"
    source_where = f"{older.namespace}/{get(older.claim, 'metadata', 'name')}"
    if switched_to(live.claim, jobs_on_cache(live)):
        return _judge_after_switch(wanted, live, source_where, target)
    job = copy_name(wanted.claim, live.generation)
    state, attempt = copy_state(live.copy_job, live.claim)
    if _describes(wanted, live.claim):
        source = ClaimFacts.of(older)
        if state != VERIFIED and source.pinned and not source.nodes:
            return Verdict(
                refusal=(
                    f"bound-cache guard: the node(s) of {source_where} are gone in the middle of the move into {target}: "
                    f"nothing is left to copy from (node loss). Nothing was changed. Call the move off (settings back to "
                    f"{_made_for(older.claim)}) and heal it with `{heal_command(wanted.stack, wanted.protect)}`."
                )
            )
        running = [get(j, "metadata", "name") for j in jobs_on_cache(live) if unfinished(j)]
        if state == VERIFIED and running:
            state = HELD
        # The old claim stays until the switch, and after it while cache.protect keeps it.
        if (state != VERIFIED or wanted.protect) and (refusal := _class_kept_with(wanted, older, source_where)):
            return refusal
        doing = f"go on with the move into {target}"
        if state != VERIFIED and (new_run := _new_run_refusal(wanted, live, source_where, doing)):
            return Verdict(refusal=new_run)
        if state == HELD:
            note = (
                f"{MOVE_NOTE_PREFIX}the copy into {target} is verified, but Job {', '.join(running)} still runs on "
                f"{source_where}: switching now would replace (stop) it. Nothing about training changes in this up; "
                f"run `pulumi up` again once it has finished"
            )
        elif state == VERIFIED:
            note = f"{MOVE_NOTE_PREFIX}the copy into {target} is verified: training switches to it; {_retired(wanted, older)}"
        elif state == FAILED:
            note = (
                f"{MOVE_NOTE_PREFIX}the copy Job {job} failed (attempt {attempt}; its logs: `kubectl logs -n "
                f"{live.namespace} job/{job}`): this up retries it as attempt {attempt + 1}, resuming; training stays "
                f"on {source_where}"
            )
            attempt += 1
        elif copied_into_another(live.copy_job, live.claim):
            note = (
                f"{MOVE_NOTE_PREFIX}the copy Job {job} filled a claim {target} that has since been deleted; the one "
                f"there now is empty: this up makes the copy again into it; training stays on {source_where}"
            )
        elif live.copy_job is None:
            note = (
                f"{MOVE_NOTE_PREFIX}the copy Job {job} of the move from {source_where} into {target} is gone (deleted "
                f"by hand or by a TTL controller) before training switched: training stays on {source_where}, and this "
                f"up registers the copy again, which the engine creates only once its state has dropped the old one: "
                f"run `pulumi up --refresh`. The copy resumes and is verified again"
            )
        else:
            note = (
                f"{MOVE_NOTE_PREFIX}the copy Job {job} into {target} is not verified yet: training stays on "
                f"{source_where}; `mlcache verify --stack {wanted.stack}` shows its progress"
            )
        move = Move(
            source,
            live.generation,
            copy_mode(source, wanted.backend),
            state,
            attempt,
            keep_source=state == VERIFIED and wanted.protect,
            copy_busy=state in (VERIFIED, HELD) or copy_at_work(live.copy_job) or copy_retrying(live.copy_job),
            into_uid=get(live.claim, "metadata", "uid"),
        )
        return Verdict(notes=(note,), generation=live.generation, move=move)
    if _describes(wanted, older.claim):
        if wanted.protect:
            return Verdict(
                refusal=(
                    f"bound-cache guard: the settings are back to those of {source_where}, which calls the move into "
                    f"{target} off and deletes {target}, but cache.protect is true. Nothing was changed. To call it off: "
                    f"{unprotect_hint(wanted, live)}, `{PROTECT_FALSE}`, `pulumi up`, then set cache.protect back."
                )
            )
        return Verdict(
            notes=(
                f"{MOVE_NOTE_PREFIX}the settings are back to those of {source_where}: the move into {target} is called "
                f"off ({target} and the copy's objects are deleted); the cache stays on {source_where}",
            ),
            generation=older.generation,
        )
    return Verdict(
        refusal=(
            f"bound-cache guard: a move of the cache from {source_where} into {target} is under way (copy {state}), and "
            f"the settings describe neither claim. Nothing was changed. Put zone, job.gpuProduct, backend and cache.size "
            f"back to what {target} was made for ({_made_for(live.claim)}) to finish the move, or to what "
            f"{source_where} was made for ({_made_for(older.claim)}) to call it off; move again once it is done."
        )
    )


def _retired(wanted: Wanted, older: LiveCache) -> str:
    """What becomes of a move's old claim once training runs on the new one."""
    where = f"{older.namespace}/{get(older.claim, 'metadata', 'name')}"
    if not wanted.protect:
        return f"the copy's objects go; {where} is deleted"
    return (
        f"the copy's objects go; {where} is kept because cache.protect is true (to delete it: "
        f"{unprotect_hint(wanted, older)}, `{PROTECT_FALSE}`, `pulumi up`)"
    )


def _judge_after_switch(wanted: Wanted, live: LiveCache, source_where: str, target: str) -> Verdict:
    """Training runs on the newer claim since an earlier up switched it there; the older one is kept
    only by cache.protect. The newer claim is the cache, judged as any bound cache is, with the older
    kept beside it (never back onto it: it holds the cache as it was before the move)."""
    older = live.older
    assert older is not None
    retire = (
        f"retire {source_where} first ({unprotect_hint(wanted, older)}, `{PROTECT_FALSE}`, `pulumi up` with the "
        f"settings of {target})"
    )
    if _describes(wanted, older.claim) and not _describes(wanted, live.claim):
        return Verdict(
            refusal=(
                f"bound-cache guard: training runs on {target} since the move from {source_where} switched to it, and "
                f"the settings are back to what {source_where} was made for ({_made_for(older.claim)}). {source_where} "
                f"is kept only by cache.protect and holds the cache as it was before that move. Nothing was changed. "
                f"To move back: {retire}, then put the settings back with cache.relocate copy (a new move from {target})."
            )
        )
    verdict = _judge_cache(wanted, replace(live, older=None))
    if verdict.refusal:
        return verdict
    if verdict.move is not None:
        return Verdict(
            refusal=(
                f"bound-cache guard: this change moves the cache on {target} again, while {source_where} is still kept "
                f"from the last move (cache.protect). Nothing was changed. A move keeps one old claim at a time: "
                f"{retire}, then move."
            )
        )
    if wanted.protect and (refusal := _class_kept_with(wanted, older, source_where)):
        return refusal
    source = ClaimFacts.of(older)
    move = Move(source, live.generation, copy_mode(source, wanted.backend), VERIFIED, keep_source=wanted.protect)
    # Unprotected, this up deletes the old claim: a move's step (drift tells it from a hand edit by the prefix).
    prefix = NOTE_PREFIX if wanted.protect else MOVE_NOTE_PREFIX
    note = f"{prefix}training runs on {target} (the move from {source_where} is over); {_retired(wanted, older)}"
    return replace(verdict, notes=(*verdict.notes, note), move=move)


def mounted_claims(job: Mapping | None) -> list[str]:
    volumes = get(job, "spec", "template", "spec", "volumes") or []
    return [name for v in volumes if (name := get(v, "persistentVolumeClaim", "claimName"))]


def unprotect_hint(wanted: Wanted, live: LiveCache) -> str:
    """The engine keeps a claim made under cache.protect protected in its state until told otherwise."""
    name = claim_resource_name("cache", live.generation)
    urn = f"urn:pulumi:{wanted.stack}::mlcache::mlcache:index:CacheVolume$kubernetes:core/v1:PersistentVolumeClaim::{name}"
    return f"`pulumi state unprotect '{urn}' --stack {wanted.stack}`"


def _made_for(claim: Mapping | None) -> str:
    record = PlacementRecord.parse(get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION))
    placement = record.describe() if record else "placement unrecorded"
    return (
        f"{placement}, class {get(claim, 'spec', 'storageClassName')}, "
        f"size {get(claim, 'spec', 'resources', 'requests', 'storage')}"
    )


# --- reading the cluster (the only I/O here) ----------------------------------------------------


@dataclass(frozen=True)
class ProviderSettings:
    """The pulumi-kubernetes default provider's connection settings (`kubernetes:*` config)."""

    kubeconfig: str | None = None  # a path or the file's contents, as the provider accepts
    context: str | None = None
    cluster: str | None = None
    namespace: str | None = None

    @classmethod
    def from_config(cls, get: Callable[[str], str | None]) -> ProviderSettings:
        """From `get(name)`, the value of `kubernetes:<name>` (None or "" when unset)."""
        return cls(**{setting.name: get(setting.name) or None for setting in fields(cls)})


REQUEST_TIMEOUT = 10  # seconds per API call: a preview must not hang on an unreachable cluster


def provider_client(provider: ProviderSettings, environ: Mapping[str, str]) -> tuple[Any, str]:
    """A kubernetes ApiClient connected as the provider connects, and the namespace of objects that
    name none (`kubernetes:namespace`, else the context's, else default). Raises whatever the
    kubeconfig's loading raises (no file, unknown context, bad credentials plugin)."""
    from kubernetes import client  # noqa: PLC0415

    loader = _kubeconfig_loader(provider, environ)
    configuration = client.Configuration()
    loader.load_and_set(configuration)
    configuration.retries = 1
    return client.ApiClient(configuration), provider.namespace or _context_namespace(loader) or "default"


def _kubeconfig_source(provider: ProviderSettings, environ: Mapping[str, str]) -> tuple[str, bool]:
    """Where the provider reads its kubeconfig (kubernetes:kubeconfig, else KUBECONFIG's files, else
    ~/.kube/config), and whether that is the file's contents rather than paths."""
    import os  # noqa: PLC0415

    source = provider.kubeconfig or environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return source, "\n" in source or source.lstrip().startswith(("{", "apiVersion"))


def kubeconfig_of(provider: ProviderSettings, environ: Mapping[str, str]) -> Any:
    """The kubeconfig the provider reads, KUBECONFIG's files merged, as the client's loader takes it."""
    import io  # noqa: PLC0415

    from kubernetes.config import kube_config  # noqa: PLC0415

    source, contents = _kubeconfig_source(provider, environ)
    merged = kube_config.KubeConfigMerger(io.StringIO(source) if contents else source).config
    if merged is None:
        raise LookupError(f"no kubeconfig found at {source}")
    return merged


def context_names(provider: ProviderSettings, environ: Mapping[str, str]) -> list[str]:
    """The names of the contexts in the kubeconfig the provider reads."""
    contexts = _plain(_plain(kubeconfig_of(provider, environ)).get("contexts"))
    if not isinstance(contexts, list) or not all(isinstance(_plain(c), dict) for c in contexts):
        raise LookupError("contexts is not a list of contexts")
    return [str(_plain(c).get("name")) for c in contexts]


def deployed_context(provider: ProviderSettings, environ: Mapping[str, str]) -> str | None:
    """The context the provider uses: kubernetes:context, else the current one of the kubeconfig,
    taken as clientcmd (pulumi, kubectl) takes it: from the first of KUBECONFIG's files that sets it
    (the Python client's merge keeps the last)."""
    import os  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    if provider.context:
        return provider.context
    source, contents = _kubeconfig_source(provider, environ)
    files = [Path(f).expanduser() for f in ([] if contents else source.split(os.pathsep)) if f]
    for text in [source] if contents else [f.read_text() for f in files if f.is_file()]:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise LookupError(f"a kubeconfig that is not YAML: {err}") from None
        current = loaded.get("current-context") if isinstance(loaded, dict) else None
        if current:
            return str(current)
    return None


def _kubeconfig_loader(provider: ProviderSettings, environ: Mapping[str, str]):
    from kubernetes.config import kube_config  # noqa: PLC0415

    merged = kubeconfig_of(provider, environ)
    loader = kube_config.KubeConfigLoader(config_dict=merged, active_context=provider.context, config_base_path=None)
    if provider.cluster:
        _plain(_plain(loader.current_context)["context"])["cluster"] = provider.cluster
        loader.set_active_context(provider.context)
    return loader


def _plain(node: Any) -> Any:
    """The dict inside the kubeconfig loader's ConfigNode wrappers (merged files wrap twice)."""
    while hasattr(node, "value"):
        node = node.value
    return node


def _context_namespace(loader: Any) -> str | None:
    return _plain(_plain(loader.current_context).get("context")).get("namespace")


def read_live_cache(
    cache_name: str,
    namespace: str | None,
    provider: ProviderSettings,
    environ: Mapping[str, str],
    training_job: str | None = None,
) -> LiveCache | Unread:
    """The cache's newest claim, its PV, the nodes the PV selects and its class, read like the provider
    would connect; while a move is under way also the claim it copies from and the copy Job."""
    try:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        api, provider_namespace = provider_client(provider, environ)
        namespace = namespace or provider_namespace
    except Exception as err:  # no kubeconfig, unknown context, bad credentials plugin
        return Unread(f"no cluster to read ({type(err).__name__}: {err})")
    kube = Kube(api, REQUEST_TIMEOUT)
    what = [f"PersistentVolumeClaim {namespace}/{cache_name}"]

    def generation(number: int, claim: Mapping, older: LiveCache | None = None) -> LiveCache:
        volume, nodes, storage_class = None, [], None
        if get(claim, "spec", "volumeName"):
            what[0] = f"PersistentVolume {claim['spec']['volumeName']}"
            volume = kube.get(api_path(VOLUME, name=claim["spec"]["volumeName"]))
            if volume_terms(volume):
                # All nodes, filtered here: hostname keys may name a node that lacks the label,
                # which a label selector would miss.
                what[0] = "the nodes the volume may be used from"
                nodes = volume_nodes(volume, kube.items(NODES))
        if get(claim, "spec", "storageClassName"):
            what[0] = f"StorageClass {claim['spec']['storageClassName']}"
            storage_class = kube.optional(api_path(STORAGE_CLASS, name=claim["spec"]["storageClassName"]))
        copy_job = jobs.get(copy_name(cache_name, number)) if older is not None else None
        return LiveCache(namespace, claim, volume, nodes, storage_class, number, older, copy_job)

    try:
        claims = kube.items(api_path(CLAIMS, namespace=namespace))
        # Every Job of the namespace, once: those on the cache, the copy's, the training Job.
        what[0] = f"the Jobs of namespace {namespace}"
        listed = kube.items(api_path(JOBS, namespace=namespace))
        jobs = {get(job, "metadata", "name"): job for job in listed}
        users = tuple(mounting_jobs(listed, cache_name))
        durable = next((c for c in claims if get(c, "metadata", "name") == durable_claim_name(cache_name)), None)
        durable_class, durable_class_name = None, get(durable, "spec", "storageClassName")
        if durable_class_name:
            what[0] = f"StorageClass {durable_class_name}"
            durable_class = kube.optional(api_path(STORAGE_CLASS, name=durable_class_name))
        generations = cache_generations(cache_name, claims)
        if not generations:
            number = mounted_generation(cache_name, users)
            return LiveCache(namespace, None, generation=number, consumers=users, durable=durable, durable_class=durable_class)
        older = generation(*generations[-2]) if len(generations) > 1 else None
        newest = generation(*generations[-1], older=older)
        trained = jobs.get(training_job) if training_job else None
        return replace(newest, consumers=users, training_job=trained, durable=durable, durable_class=durable_class)
    except ApiException as err:
        return Unread(f"cannot read {what[0]}: HTTP {err.status} {err.reason}")
    except Exception as err:  # connection refused, DNS, TLS, timeout
        return Unread(f"cannot reach the cluster to read {what[0]} ({type(err).__name__})")


# --- in the program ---------------------------------------------------------------------------


# The live cache an offline preview assumes (`mlcache diff`: what the base revision deployed, bound),
# judged instead of the "stood aside" of an offline render.
_assumed_live: LiveCache | None = None


@contextmanager
def assume_live(live: LiveCache | None) -> Iterator[None]:
    global _assumed_live  # one offline render at a time in this process
    _assumed_live = live
    try:
        yield
    finally:
        _assumed_live = None


# What an offline preview cannot know: the node a base revision's LINSTOR volume was bound on.
BOUND_NODE = "node-bound-at-up"


def live_from_manifest(claim: Mapping) -> LiveCache:
    """A rendered claim as the live, bound claim it becomes: on a LINSTOR node of its recorded
    zone and GPU product (named BOUND_NODE), or on network storage."""
    name = get(claim, "metadata", "name")
    bound = {**claim, "spec": {**claim["spec"], "volumeName": f"pvc-of-{name}"}, "status": {"phase": "Bound"}}
    if (get(claim, "metadata", "annotations", BACKEND_ANNOTATION) or "linstor") != "linstor":
        return LiveCache(get(claim, "metadata", "namespace") or "default", bound, {"spec": {}})
    record = PlacementRecord.parse(get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION))
    labels = {HOSTNAME_LABEL: BOUND_NODE}
    if record and record.zone:
        labels[ZONE_LABEL] = record.zone
    if record:
        labels[GPU_PRODUCT_LABEL] = record.gpu_product
    term = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [BOUND_NODE]}]}
    volume = {"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [term]}}}}
    node = {"metadata": {"name": BOUND_NODE, "labels": labels}}
    return LiveCache(get(claim, "metadata", "namespace") or "default", bound, volume, [node])


def _under_mock_engine() -> bool:
    from pulumi.runtime import mocks  # noqa: PLC0415
    from pulumi.runtime import settings as runtime  # noqa: PLC0415

    return isinstance(runtime.SETTINGS.monitor, mocks.MockMonitor)


def guard_bound_cache(settings: Any) -> Verdict:
    """Read the live cache and refuse, before anything is registered, a change it cannot take.

    Under the mock engine (mlcache render, mlcache diff, the tests) no cluster is read: the guard
    stands aside and says so (a note in `mlcache render --summary`)."""
    import os  # noqa: PLC0415

    import pulumi  # noqa: PLC0415

    from mlcache.program.settings import hide_secrets  # noqa: PLC0415

    wanted = Wanted(
        stack=pulumi.get_stack(),
        claim=settings.cache.name,
        storage_class=settings.storage_class_name,
        volume_mode=settings.cache.volume_mode,
        size=settings.cache.size,
        placement=PlacementRecord(settings.placement.zone, settings.placement.gpu_product),
        relocate=settings.cache.relocate,
        protect=settings.cache.protect,
        backend=settings.backend,
        expansion_allowed=settings.linstor.allow_volume_expansion if settings.manages_storage_class else None,
        has_consumer=settings.job.enabled or settings.benchmark.enabled,
        durable_copy=settings.cache.durable_copy,
        durable_class=settings.rook_ceph.storage_class_name,
        made_class=settings.linstor.made_class,
        run=settings.job.run_name if settings.job.enabled and settings.job.nodes == 1 else None,
        dropped=settings.job.run_name if not settings.job.enabled else None,
        benchmark=benchmark_job_name(settings.job.name) if settings.benchmark.enabled else None,
        nodes=settings.job.nodes,
    )
    if _under_mock_engine():
        live: LiveCache | Unread = _assumed_live or Unread("offline render (mock engine): the live claim was not read")
    else:
        provider = pulumi.Config("kubernetes")
        live = read_live_cache(
            settings.cache.name,
            settings.namespace,
            ProviderSettings.from_config(provider.get),
            os.environ,
            training_job=wanted.run,
        )
    if isinstance(live, Unread) and not _under_mock_engine():
        # Which claim holds the cache is in the cluster only (a move makes a new one): guessing would
        # register the wrong claim and delete the right one.
        raise pulumi.RunError(
            f"bound-cache guard: cannot read the cache's claims: {live.reason}. mlcache reads them before every "
            "preview and up to know which claim holds the cache and whether a change would strand it. Nothing was "
            "changed. Check the kubeconfig and context the provider uses (kubernetes:kubeconfig, kubernetes:context, "
            "else KUBECONFIG) and that they may list PersistentVolumeClaims and Jobs in the namespace and read its "
            "PersistentVolumes, nodes and StorageClasses."
        )
    verdict = judge(wanted, live)
    if verdict.refusal:
        # The refusal alone: a note printed before it reads as the guard having let the change pass.
        raise pulumi.RunError(hide_secrets(verdict.refusal))
    for note in verdict.notes:
        pulumi.log.info(hide_secrets(note))
    return verdict
