"""The bound cache: where the live claim's volume may be used, and whether a change may touch it.

A single-replica LINSTOR volume is pinned to one node (its PV's node affinity). A change of zone,
GPU product or pinning that the pinned node cannot satisfy leaves the training pod Pending for
ever; a shrink, or a growth the class does not allow, is refused by the API server half-way
through an `up`. `judge` decides, from the live objects, before any resource is registered.

Live state is read with the kubernetes client from the kubeconfig and context the provider uses
(`kubernetes:kubeconfig`, `kubernetes:context`, `kubernetes:cluster`, `kubernetes:namespace`,
else KUBECONFIG), synchronously, before the first registration (see docs/day2.md for why not
`PersistentVolumeClaim.get`). Every decision below is a pure function over API-shaped dicts
(camelCase, as `ApiClient.sanitize_for_serialization` returns them), shared with tools.verify
and tools.heal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from names import GPU_PRODUCT_LABEL, PLACEMENT_ANNOTATION, ZONE_LABEL
from schema import parse_quantity

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
        zone = f"zone {self.zone}" if self.zone else "any zone (unpinned)"
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


def ready_condition(node: Mapping) -> Mapping | None:
    return next((c for c in get(node, "status", "conditions") or [] if c.get("type") == "Ready"), None)


def is_ready(node: Mapping) -> bool:
    condition = ready_condition(node)
    return condition is not None and condition.get("status") == "True"


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
    relocate: bool
    protect: bool
    # The stack's own class setting (None: the class is not managed here, read it live).
    expansion_allowed: bool | None
    # A Job that mounts the cache is configured (training or benchmark).
    has_consumer: bool


@dataclass(frozen=True)
class LiveCache:
    """The live objects, as the API returns them: the claim (None = absent), its PV, the nodes the
    PV selects, and the claim's StorageClass (None when unread or absent)."""

    namespace: str
    claim: Mapping | None
    volume: Mapping | None = None
    nodes: list[Mapping] = field(default_factory=list)
    storage_class: Mapping | None = None


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


PROTECT_FALSE = "pulumi config set --path mlcache:cache.protect false"


def relocate_key_hint(value: bool) -> str:
    return f"pulumi config set --path mlcache:cache.relocate {'true' if value else 'false'}"


def _replacement(wanted: Wanted, claim: Mapping) -> str | None:
    """Why this up re-creates the claim anyway (then nothing bound is stranded), or None."""
    live_class = get(claim, "spec", "storageClassName")
    if live_class != wanted.storage_class:
        return f"its storage class changes ({live_class} -> {wanted.storage_class})"
    live_mode = get(claim, "spec", "volumeMode") or "Filesystem"
    if live_mode != wanted.volume_mode:
        return f"its volume mode changes ({live_mode} -> {wanted.volume_mode})"
    return None


def _relocation_trigger(wanted: Wanted, claim: Mapping) -> str | None:
    """With cache.relocate on, what makes this up re-create the claim (replaceOnChanges), or None."""
    if not wanted.relocate:
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
    where = f"{live.namespace}/{wanted.claim}"
    claim = live.claim
    if claim is None:
        return Verdict(
            notes=(f"bound-cache guard: claim {where} does not exist yet; its first consumer places it",), unbound=True
        )
    replaced = _replacement(wanted, claim)
    if replaced:
        return Verdict(notes=(f"bound-cache guard: claim {where} is re-created by this change ({replaced})",))
    relocating = _relocation_trigger(wanted, claim)
    if relocating:
        return _judge_relocation(wanted, live, where, relocating)
    phase = get(claim, "status", "phase")
    requested = get(claim, "spec", "resources", "requests", "storage")
    if phase != "Bound" or not get(claim, "spec", "volumeName"):
        if quantity_bytes(requested) != quantity_bytes(wanted.size):
            return Verdict(
                refusal=(
                    f"mlcache:cache.size = {wanted.size!r}: claim {where} is not bound yet (phase {phase}) and Kubernetes "
                    f"allows no size change before a claim is bound (it asks for {requested}). Nothing was changed. "
                    f"Either put cache.size back to {requested}, or re-create the claim at the new size with "
                    f"`{relocate_key_hint(True)}` (nothing is cached on an unbound claim), then set it back to false."
                )
            )
        return Verdict(
            notes=(f"bound-cache guard: claim {where} is not bound yet (phase {phase}); its first consumer places it",),
            unbound=True,
        )
    notes = [*_placement_notes(wanted, live, where)]
    refusal = _placement_refusal(wanted, live, where) or _resize_refusal(wanted, live, where)
    return Verdict(refusal=refusal, notes=tuple(notes))


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
            f"heal it with `mlcache heal --stack {wanted.stack}`"
        ]
    return [f"bound-cache guard: claim {where} is bound to {_bound_location(live)}"]


def _placement_refusal(wanted: Wanted, live: LiveCache, where: str) -> str | None:
    nodes = volume_nodes(live.volume, live.nodes)
    if not wanted.has_consumer or not volume_terms(live.volume) or not nodes:
        return None
    if any(node_reaches(n, wanted.placement) for n in nodes):
        return None
    bound = node_labels(nodes[0])
    protected = f" plus `{PROTECT_FALSE}`" if wanted.protect else ""
    return (
        f"bound-cache guard: the cache {where} is bound to {_bound_location(live)}; the configured placement "
        f"({wanted.placement.describe()}) cannot reach it: the training pod would stay Pending for ever "
        f"(volume node affinity conflict) holding its GPU quota. Nothing was changed. Either put the placement back "
        f"(mlcache:zone {bound.get(ZONE_LABEL, '?')} or unset, job.gpuProduct {bound.get(GPU_PRODUCT_LABEL, '?')}), "
        f"or re-create the cache where the Job will land: "
        f"`{relocate_key_hint(True)}`{protected} (DATA LOSS: the cached models are re-downloaded by "
        f"cache.prefetch), then set cache.relocate back to false."
    )


def _resize_refusal(wanted: Wanted, live: LiveCache, where: str) -> str | None:
    claim = live.claim
    requested = get(claim, "spec", "resources", "requests", "storage")
    capacity = get(claim, "status", "capacity", "storage")
    new, old, held = quantity_bytes(wanted.size), quantity_bytes(requested), quantity_bytes(capacity)
    relocate = f"`{relocate_key_hint(True)}`" + (f" plus `{PROTECT_FALSE}`" if wanted.protect else "")
    # The API server lets a request shrink only to recover from a failed expansion (above status.capacity).
    if new < old and (held is None or new <= held):
        return (
            f"mlcache:cache.size = {wanted.size!r} is smaller than the live claim {where} ({requested}): Kubernetes "
            f"cannot shrink a volume and the API server would refuse the update half-way through the up. Nothing was "
            f"changed. Either put cache.size back to {requested} or more, or re-create the cache at {wanted.size} with "
            f"{relocate} (DATA LOSS: re-warmed by cache.prefetch), then set cache.relocate back to false."
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
                f"re-create the cache at {wanted.size} with {relocate} (DATA LOSS), then set cache.relocate back to false."
            )
    return None


def _judge_relocation(wanted: Wanted, live: LiveCache, where: str, trigger: str) -> Verdict:
    if wanted.protect:
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate = true re-creates the protected cache {where} ({trigger}): set "
                f"`{PROTECT_FALSE}` in the same change to accept the DATA LOSS, "
                f"or `{relocate_key_hint(False)}` to keep the cache. Nothing was changed."
            )
        )
    claim = live.claim
    growth_only = (
        get(claim, "metadata", "annotations", PLACEMENT_ANNOTATION) == wanted.placement.text()
        and quantity_bytes(wanted.size) > quantity_bytes(get(claim, "spec", "resources", "requests", "storage"))
        and (wanted.expansion_allowed is not False)
        and (wanted.expansion_allowed or get(live.storage_class, "allowVolumeExpansion") is not False)
    )
    if growth_only and get(claim, "status", "phase") == "Bound":
        return Verdict(
            refusal=(
                f"mlcache:cache.relocate is still true, so growing cache.size to {wanted.size!r} would re-create the "
                f"cache {where} (DATA LOSS) although it can expand in place. Nothing was changed. Set "
                f"`{relocate_key_hint(False)}` to expand it in place, keeping the data."
            )
        )
    bound = _bound_location(live) if get(claim, "spec", "volumeName") else "no volume yet"
    return Verdict(
        notes=(
            f"bound-cache guard: relocating: claim {where} ({bound}) is deleted and re-created because {trigger}; "
            f"the Job's pod binds a fresh volume where it lands (DATA LOSS: cache.prefetch re-warms it)",
        )
    )


# --- reading the cluster (the only I/O here) ----------------------------------------------------


@dataclass(frozen=True)
class ProviderSettings:
    """The pulumi-kubernetes default provider's connection settings (`kubernetes:*` config)."""

    kubeconfig: str | None = None  # a path or the file's contents, as the provider accepts
    context: str | None = None
    cluster: str | None = None
    namespace: str | None = None


REQUEST_TIMEOUT = 10  # seconds per API call: a preview must not hang on an unreachable cluster


def _kubeconfig_loader(provider: ProviderSettings, environ: Mapping[str, str]):
    import io  # noqa: PLC0415
    import os  # noqa: PLC0415

    from kubernetes.config import kube_config  # noqa: PLC0415

    source = provider.kubeconfig or environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    contents = "\n" in source or source.lstrip().startswith(("{", "apiVersion"))
    merged = kube_config.KubeConfigMerger(io.StringIO(source) if contents else source).config
    if merged is None:
        raise LookupError(f"no kubeconfig found at {source}")
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
    claim: str, namespace: str | None, provider: ProviderSettings, environ: Mapping[str, str]
) -> LiveCache | Unread:
    """The claim, its PV, the nodes the PV selects and its class, read like the provider would connect."""
    try:
        from kubernetes import client  # noqa: PLC0415
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        loader = _kubeconfig_loader(provider, environ)
        configuration = client.Configuration()
        loader.load_and_set(configuration)
        configuration.retries = 1
        namespace = namespace or provider.namespace or _context_namespace(loader) or "default"
    except Exception as err:  # no kubeconfig, unknown context, bad credentials plugin
        return Unread(f"no cluster to read ({type(err).__name__}: {err})")
    api = client.ApiClient(configuration)
    core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
    plain = api.sanitize_for_serialization
    what = f"PersistentVolumeClaim {namespace}/{claim}"
    try:
        try:
            live_claim = plain(core.read_namespaced_persistent_volume_claim(claim, namespace, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as err:
            if err.status == 404:
                return LiveCache(namespace=namespace, claim=None)
            raise
        volume = None
        nodes: list[Mapping] = []
        if get(live_claim, "spec", "volumeName"):
            what = f"PersistentVolume {live_claim['spec']['volumeName']}"
            volume = plain(core.read_persistent_volume(live_claim["spec"]["volumeName"], _request_timeout=REQUEST_TIMEOUT))
            what = "the nodes the volume may be used from"
            nodes = _nodes_of(core, plain, volume)
        storage_class = None
        if get(live_claim, "spec", "storageClassName"):
            what = f"StorageClass {live_claim['spec']['storageClassName']}"
            try:
                storage_class = plain(
                    storage.read_storage_class(live_claim["spec"]["storageClassName"], _request_timeout=REQUEST_TIMEOUT)
                )
            except ApiException as err:
                if err.status != 404:
                    raise
    except ApiException as err:
        return Unread(f"cannot read {what}: HTTP {err.status} {err.reason}")
    except Exception as err:  # connection refused, DNS, TLS, timeout
        return Unread(f"cannot reach the cluster to read {what} ({type(err).__name__})")
    return LiveCache(namespace=namespace, claim=live_claim, volume=volume, nodes=nodes, storage_class=storage_class)


def _nodes_of(core: Any, plain: Any, volume: Mapping) -> list[Mapping]:
    """The nodes the PV's node affinity selects (all nodes, filtered here: hostname keys may name a
    node that lacks the label, which a label selector would miss)."""
    if not volume_terms(volume):
        return []
    return volume_nodes(volume, plain(core.list_node(_request_timeout=REQUEST_TIMEOUT).items))


# --- in the program ---------------------------------------------------------------------------


def _under_mock_engine() -> bool:
    from pulumi.runtime import mocks  # noqa: PLC0415
    from pulumi.runtime import settings as runtime  # noqa: PLC0415

    return isinstance(runtime.SETTINGS.monitor, mocks.MockMonitor)


def guard_bound_cache(settings: Any) -> Verdict:
    """Read the live cache and refuse, before anything is registered, a change it cannot take.

    Under the mock engine (tools.render, tools.diff, the tests) no cluster is read: the guard
    stands aside and says so (a note in `tools.render --summary`)."""
    import os  # noqa: PLC0415

    import pulumi  # noqa: PLC0415

    wanted = Wanted(
        stack=pulumi.get_stack(),
        claim=settings.cache.name,
        storage_class=settings.storage_class_name,
        volume_mode=settings.cache.volume_mode,
        size=settings.cache.size,
        placement=PlacementRecord(settings.placement.zone, settings.placement.gpu_product),
        relocate=settings.cache.relocate,
        protect=settings.cache.protect,
        expansion_allowed=settings.linstor.allow_volume_expansion if settings.manages_storage_class else None,
        has_consumer=settings.job.enabled or settings.benchmark.enabled,
    )
    if _under_mock_engine():
        live: LiveCache | Unread = Unread("offline render (mock engine): the live claim was not read")
    else:
        provider = pulumi.Config("kubernetes")
        live = read_live_cache(
            settings.cache.name,
            settings.namespace,
            ProviderSettings(
                kubeconfig=provider.get("kubeconfig"),
                context=provider.get("context"),
                cluster=provider.get("cluster"),
                namespace=provider.get("namespace"),
            ),
            os.environ,
        )
    verdict = judge(wanted, live)
    for note in verdict.notes:
        pulumi.log.info(note)
    if verdict.refusal:
        raise pulumi.RunError(verdict.refusal)
    return verdict
