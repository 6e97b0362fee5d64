"""Fleet files: the rehearsal cluster's fake nodes from a fleet description or `kubectl get nodes -o
yaml`, bounded and fully validated before any process starts (docs/rehearsal-cluster.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlcache.errors import UsageError, read_user_file
from mlcache.program.schema import is_qualified_name

KWOK_KEY = "kwok.x-k8s.io/node"


KWOK_MANAGED = "fake"


POOLS_ANNOTATION = "rehearsal.mlcache.dev/linstor-storage-pools"


LINSTOR_NODE_LABEL = "linbit.com/hostname"


LINSTOR_POOL_LABEL_PREFIX = "linbit.com/sp-"


LINSTOR_DISKLESS_POOL = "DfltDisklessStorPool"


DEFAULT_POOL_NAME = "lvm-thin"


DEFAULT_POOL_SIZE = "2Ti"


DEFAULT_PODS = "110"


# Taints the node-lifecycle controller manages from node conditions: status, not configuration.
CONTROLLER_TAINT_PREFIX = "node.kubernetes.io/"


_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


# A fleet file is a few KiB: the bounds refuse a device, a huge file or an alias bomb at once.
MAX_FLEET_BYTES = 4 * 1024 * 1024


MAX_ALIASES = 100


# Labels a node's own fields set: a `labels:` entry may not override them.
PLACED_BY_FIELDS = {
    "topology.kubernetes.io/zone": "zone",
    "topology.kubernetes.io/region": "region",
    "nvidia.com/gpu.product": "gpu.product",
    "nvidia.com/gpu.count": "gpu.count",
}


NODE_FIELDS = ("name", "zone", "region", "cpu", "memory", "pods", "gpu", "pool", "labels", "taints")


class FleetError(ValueError):
    """One line: where, the value as typed, what is allowed."""


def _quantity(where: str, value: Any) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise FleetError(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 96, 500m, 1Ti, 512Gi)")
    return text


def _label_value(where: str, value: Any) -> str:
    if value is None:
        raise FleetError(f"{where}: missing")
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        raise FleetError(f"{where}: {value!r} is not a label value (up to 63 letters, digits, '-', '_', '.')")
    return value


def _node_object(name: str, labels: dict, taints: list, allocatable: dict, pools: dict[str, str] | None) -> dict:
    """A Node for kwok; pools None = no LINSTOR satellite on it."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", **labels}
    annotations = {KWOK_KEY: KWOK_MANAGED, "node.alpha.kubernetes.io/ttl": "0"}
    labels[KWOK_KEY] = KWOK_MANAGED
    if pools is not None:
        labels.setdefault(LINSTOR_NODE_LABEL, name)
        for pool in pools:
            labels[LINSTOR_POOL_LABEL_PREFIX + pool] = "true"
        annotations[POOLS_ANNOTATION] = ",".join(f"{pool}={size}" for pool, size in pools.items())
    node: dict = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }
    if taints:
        node["spec"]["taints"] = taints
    return node


def _mapping(where: str, raw: Any, what: str) -> dict:
    """A mapping field (absent = empty)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FleetError(f"{where}: {raw!r} is not a mapping of {what}")
    return raw


def _labels(where: str, raw: Any) -> dict[str, str]:
    labels = {}
    for key, value in _mapping(where, raw, "label: value").items():
        if not isinstance(key, str) or not is_qualified_name(key):
            raise FleetError(f"{where}: {key!r} is not a label key (e.g. example.com/name: a DNS prefix, a name of 63)")
        labels[key] = _label_value(f"{where}.{key}", value)
    return labels


def _taints(where: str, raw: Any) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FleetError(f"{where}: {raw!r} is not a list of taints ({{key, value, effect}})")
    taints = []
    for index, taint in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(taint, dict) or not isinstance(taint.get("key"), str) or not taint["key"]:
            raise FleetError(f"{here}: {taint!r} is not a taint ({{key, value, effect}})")
        if taint.get("effect") not in _TAINT_EFFECTS:
            raise FleetError(f"{here}.effect: {taint.get('effect')!r} is not one of {', '.join(_TAINT_EFFECTS)}")
        clean = {"key": taint["key"], "effect": taint["effect"]}
        if taint.get("value") is not None:
            clean["value"] = _label_value(f"{here}.value", taint["value"])
        taints.append(clean)
    return taints


def fleet_nodes(doc: dict) -> list[dict]:
    """Nodes from a fleet description (the format of fleets/runbook.yaml)."""
    pool_name = doc.get("storagePool", DEFAULT_POOL_NAME)
    if not isinstance(pool_name, str) or not _DNS_SUBDOMAIN.match(pool_name.lower()):
        raise FleetError(f"storagePool: {pool_name!r} is not a LINSTOR storage pool name (letters, digits, '-', '_')")
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise FleetError(f"nodes: {raw_nodes!r} is not a non-empty list of nodes")
    nodes: list[dict] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_nodes):
        where = f"nodes[{index}]"
        if not isinstance(raw, dict):
            raise FleetError(f"{where}: {raw!r} is not a mapping with name, zone, cpu, memory...")
        unknown = sorted(set(raw) - set(NODE_FIELDS))
        if unknown:
            raise FleetError(f"{where}.{unknown[0]}: unknown field; allowed: {', '.join(NODE_FIELDS)}")
        name = _node_name(f"{where}.name", raw.get("name"), seen)
        where = f"nodes[{index}] ({name})"
        labels = {"topology.kubernetes.io/zone": _label_value(f"{where}.zone", raw.get("zone"))}
        if raw.get("region") is not None:
            labels["topology.kubernetes.io/region"] = _label_value(f"{where}.region", raw["region"])
        for key in ("cpu", "memory"):
            if raw.get(key) is None:
                raise FleetError(f"{where}.{key}: missing; give a quantity (e.g. cpu: 96, memory: 1Ti)")
        allocatable = {
            "cpu": _quantity(f"{where}.cpu", raw["cpu"]),
            "memory": _quantity(f"{where}.memory", raw["memory"]),
            "pods": _quantity(f"{where}.pods", raw.get("pods", DEFAULT_PODS)),
        }
        gpu = raw.get("gpu")
        if gpu is not None:
            if not isinstance(gpu, dict) or set(gpu) - {"product", "count", "resource"}:
                raise FleetError(f"{where}.gpu: {gpu!r} is not {{product, count[, resource]}}")
            count = gpu.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise FleetError(f"{where}.gpu.count: {count!r} is not a whole number of GPUs >= 1")
            labels["nvidia.com/gpu.product"] = _label_value(f"{where}.gpu.product", gpu.get("product"))
            labels["nvidia.com/gpu.count"] = str(count)
            resource = gpu.get("resource", "nvidia.com/gpu")
            if not isinstance(resource, str) or "/" not in resource:
                raise FleetError(f"{where}.gpu.resource: {resource!r} is not an extended resource name (e.g. nvidia.com/gpu)")
            allocatable[resource] = str(count)
        extra = _labels(f"{where}.labels", raw.get("labels"))
        for key in extra:
            if key in PLACED_BY_FIELDS:
                raise FleetError(f"{where}.labels: {key!r} comes from the node's `{PLACED_BY_FIELDS[key]}`; set that instead")
        labels.update(extra)
        pools = None if raw.get("pool") is None else {pool_name: _quantity(f"{where}.pool", raw["pool"])}
        nodes.append(_node_object(name, labels, _taints(f"{where}.taints", raw.get("taints")), allocatable, pools))
    return nodes


def _node_name(where: str, name: Any, seen: set[str]) -> str:
    """A node's name, checked and new to the fleet (added to `seen`)."""
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        raise FleetError(f"{where}: {name!r} is not a node name (lower-case letters, digits, '-', '.')")
    if name in seen:
        raise FleetError(f"{where}: {name!r} appears twice")
    seen.add(name)
    return name


def _kubectl_node(index: int, item: Any, seen: set[str]) -> tuple[str, dict, list[dict], dict, bool]:
    """One item of `kubectl get nodes -o yaml`, checked as a fleet description's node is: its
    name, labels, taints (the node-lifecycle controller's dropped), allocatable and unschedulable."""
    if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
        raise FleetError(f"items[{index}]: {str(item)[:60]!r} is not a Node object")
    meta = _mapping(f"items[{index}].metadata", item.get("metadata"), "name, labels...")
    name = _node_name(f"items[{index}].metadata.name", meta.get("name"), seen)
    where = f"items[{index}] ({name})"
    labels = _labels(f"{where}.metadata.labels", meta.get("labels"))
    spec = _mapping(f"{where}.spec", item.get("spec"), "taints, unschedulable...")
    taints = [
        taint
        for taint in _taints(f"{where}.spec.taints", spec.get("taints"))
        if not taint["key"].startswith(CONTROLLER_TAINT_PREFIX)
    ]
    unschedulable = spec.get("unschedulable", False)
    if not isinstance(unschedulable, bool):
        raise FleetError(f"{where}.spec.unschedulable: {unschedulable!r} is not true or false")
    status = _mapping(f"{where}.status", item.get("status"), "allocatable, capacity...")
    raw_allocatable = _mapping(f"{where}.status.allocatable", status.get("allocatable"), "resource: quantity")
    if not raw_allocatable:
        raise FleetError(f"{where}.status.allocatable: missing; export with `kubectl get nodes -o yaml`")
    allocatable = {}
    for resource, quantity in raw_allocatable.items():
        if not isinstance(resource, str) or not is_qualified_name(resource):
            raise FleetError(f"{where}.status.allocatable: {resource!r} is not a resource name (e.g. cpu, nvidia.com/gpu)")
        allocatable[resource] = _quantity(f"{where}.status.allocatable.{resource}", quantity)
    return name, labels, taints, allocatable, unschedulable


def kubectl_nodes(doc: dict, pool_size: str = DEFAULT_POOL_SIZE) -> list[dict]:
    """Nodes from `kubectl get nodes -o yaml` (a List/NodeList, or one Node): labels, taints and
    allocatable kept. LINSTOR satellites are the nodes labelled linbit.com/hostname (all nodes if
    none is), with the pools their linbit.com/sp-* labels name, each `pool_size` large: node
    objects do not say how big a pool is."""
    items = [doc] if doc.get("kind") == "Node" else doc.get("items")
    if not isinstance(items, list) or not items:
        raise FleetError(f"items: {items!r} is not a non-empty list of Node objects (kubectl get nodes -o yaml)")
    size = _quantity("--pool-size", pool_size)
    seen: set[str] = set()
    checked = [_kubectl_node(index, item, seen) for index, item in enumerate(items)]
    labelled = any(LINSTOR_NODE_LABEL in labels for _, labels, _, _, _ in checked)
    nodes = []
    for name, labels, taints, allocatable, unschedulable in checked:
        pools = None
        if not labelled or LINSTOR_NODE_LABEL in labels:
            names = [
                key[len(LINSTOR_POOL_LABEL_PREFIX) :]
                for key in labels
                if key.startswith(LINSTOR_POOL_LABEL_PREFIX) and key[len(LINSTOR_POOL_LABEL_PREFIX) :] != LINSTOR_DISKLESS_POOL
            ]
            pools = {pool: size for pool in (names or [DEFAULT_POOL_NAME])}
        node = _node_object(name, labels, taints, allocatable, pools)
        if unschedulable:
            node["spec"]["unschedulable"] = True
        nodes.append(node)
    return nodes


def read_bounded(path: Path) -> str:
    """A fleet file's text: a regular file of at most MAX_FLEET_BYTES (mlcache.errors.read_user_file) whose
    YAML has at most MAX_ALIASES aliases (no alias bomb)."""
    try:
        text = read_user_file(path, MAX_FLEET_BYTES)
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    except UsageError as error:
        raise FleetError(f"fleet {error}") from None
    except yaml.YAMLError as error:
        raise FleetError(f"fleet {path}: not YAML ({str(error).splitlines()[0]})") from None
    if aliases > MAX_ALIASES:
        raise FleetError(f"fleet {path}: {aliases} YAML aliases; at most {MAX_ALIASES} are expanded")
    return text


def load(path: Path, pool_size: str = DEFAULT_POOL_SIZE) -> list[dict]:
    """Nodes from a fleet file of either format (`pool_size` is checked for both; only a kubectl
    list uses it, a fleet description gives each pool's size)."""
    _quantity("--pool-size", pool_size)
    doc = yaml.safe_load(read_bounded(path))
    if not isinstance(doc, dict):
        raise FleetError(f"fleet {path}: {type(doc).__name__} at the top; expected a mapping with nodes: or kind: List")
    try:
        if "nodes" in doc:
            return fleet_nodes(doc)
        if doc.get("kind") in ("List", "NodeList", "Node"):
            return kubectl_nodes(doc, pool_size)
    except FleetError as error:
        raise FleetError(f"fleet {path}: {error}") from None
    raise FleetError(f"fleet {path}: neither a fleet description (nodes:) nor `kubectl get nodes -o yaml` output (kind: List)")
