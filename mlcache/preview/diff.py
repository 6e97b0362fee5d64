"""The offline preview of `pulumi up`: the engine's action for each object between two rendered plans,
and honest flags (DATA LOSS, STRANDS THE CACHE, MOVE, refused updates) (the library of `mlcache diff`).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mlcache import CHECKOUT
from mlcache.cluster.bound_cache import (
    LiveCache,
    PlacementRecord,
    assume_live,
    live_from_manifest,
    mounting_jobs,
    quantity_bytes,
)
from mlcache.cluster.bound_cache import get as _dig  # a nested field, or None (a secret digest is a string: nothing to read)
from mlcache.errors import UsageError, error_line
from mlcache.preview.policy_check import ADVISORY, MANDATORY
from mlcache.preview.render import (
    DIGEST_KEY_ENV,
    REDACTED,
    RENDER_ERRORS,
    as_json,
    keyed_digest,
    property_path_parts,
    render,
)
from mlcache.preview.stack_config import StackConfigError, load_stack_config, stack_file
from mlcache.program.names import (
    BACKEND_ANNOTATION,
    COPY_CACHE_NAME_MAX,
    COPY_COMPONENT_LABEL,
    COPY_FROM_ANNOTATION,
    COPY_NEEDS_FILES,
    COPY_NEEDS_NAME_ROOM,
    COPY_NEEDS_ONE_NODE,
    GPU_PRODUCT_LABEL,
    HOSTNAME_LABEL,
    IMMUTABLE_FIELDS,
    PLACEMENT_ANNOTATION,
    PROVIDER_REPLACES,
    WORKER_LABEL,
    ZONE_LABEL,
    cache_name_of,
)
from mlcache.program.outputs import UNPINNED_ZONE
from mlcache.program.schema import names_fit_after

DATA_LOSS = "DATA LOSS"


MOVE = "MOVE"


STRANDS = "STRANDS THE CACHE"


REFUSED = "the API server will refuse this update"


BLOCKED = "BLOCKED"


RESTARTS = "a running training run"


@dataclass
class Change:
    action: str  # create | update | replace | delete
    urn: str
    label: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said, not flagged
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    cascaded: bool = False

    @property
    def data_loss(self) -> bool:
        """Cached data is wiped, or made unreachable."""
        return any(w.startswith((DATA_LOSS, STRANDS)) for w in self.warnings)

    @property
    def gated(self) -> bool:
        """What --fail-on-data-loss stops: data loss, or an update `pulumi up` would fail on."""
        return self.data_loss or any(w.startswith(REFUSED) for w in self.warnings)


def changed_paths(old: Any, new: Any, prefix: str = "", digest: Callable[[Any], str] | None = None) -> list[str]:
    """Dotted paths (camelCase, list items by index) whose values differ. `digest`: how both renders
    showed a secret value (render.keyed_digest), so that a value that only became secret, or plain
    again, is not a change (the engine sends the same object)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else key
            paths += changed_paths(old.get(key), new.get(key), path, digest)
        return paths
    if old == new or (digest is not None and _same_but_for_secretness(old, new, digest)):
        return []
    return [prefix]


def _same_but_for_secretness(old: Any, new: Any, digest: Callable[[Any], str]) -> bool:
    """One side is a secret's keyed digest, and the other side's plain value has that digest."""
    for shown, other in ((old, new), (new, old)):
        if _is_digest(shown) and not _is_digest(other):
            return digest(other) == shown
    return False


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REDACTED + " ")


def _under(path: str, field_path: str) -> bool:
    return path == field_path or path.startswith(field_path + ".")


def _label(obj: dict[str, Any]) -> str:
    manifest = obj["manifest"]
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    # A secret name is printed as mlcache render shows it; a wholly secret metadata by the resource's own name.
    return f"{manifest['kind']}/{name if isinstance(name, str) else obj['urn'].rpartition('::')[2]}"


def _kind(obj: dict[str, Any]) -> str:
    return obj["manifest"]["kind"]


def with_ignored_changes(old: dict[str, Any], new: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The new manifest as the engine sends it: each ignoreChanges path keeps its old value
    (or stays absent when the old object had none). Where the old object's value is a secret's
    digest, what it held there is not known: the new value stands (the engine's may differ)."""
    result = json.loads(json.dumps(new))
    for path in paths:
        *parents, leaf = property_path_parts(path)
        source: Any  # the old object's value at the path so far (None once it has no such key)
        source, target = old, result
        for key in parents:
            source = source.get(key) if isinstance(source, dict) else None
            if not isinstance(target.get(key), dict) or _is_digest(source):
                break
            target = target[key]
        else:
            if isinstance(source, dict) and leaf in source:
                target[leaf] = source[leaf]
            else:
                target.pop(leaf, None)
    return result


def plan(old: dict[str, Any] | None, new: dict[str, Any] | None, digest_key: str | None = None) -> list[Change]:
    """The engine's actions to go from the `old` rendered plan to the `new` one (mlcache render --json,
    both rendered with `digest_key`, whose digests of secret values are then compared with the plain
    values on the other side)."""
    digest = keyed_digest(digest_key) if digest_key else None
    before = {o["urn"]: o for o in (old or {}).get("objects", [])}
    after = {o["urn"]: o for o in (new or {}).get("objects", [])}
    changes: dict[str, Change] = {}
    for urn, obj in after.items():
        if urn not in before:
            changes[urn] = Change("create", urn, _label(obj), new=obj)
            continue
        previous = before[urn]
        obj = {**obj, "manifest": with_ignored_changes(previous["manifest"], obj["manifest"], obj.get("ignoreChanges", []))}
        after[urn] = obj
        if previous.get("ignoreChanges") == obj.get("ignoreChanges") and "ignoring" in previous and "ignoring" in obj:
            paths = changed_paths(previous["ignoring"], obj["ignoring"], digest=digest)
        else:
            paths = changed_paths(previous["manifest"], obj["manifest"], digest=digest)
        if not paths and previous["protect"] == obj["protect"]:
            continue
        kind = _kind(obj)
        replace_on_changes = tuple(".".join(property_path_parts(p)) for p in obj["replaceOnChanges"])
        force_new = PROVIDER_REPLACES["*"] + PROVIDER_REPLACES.get(kind, ()) + replace_on_changes
        # A changed secret hides which of its fields changed: one that holds a force-new field may replace.
        replacing = sorted({f for p in paths for f in force_new if _under(p, f) or _under(f, p)})
        change = Change("replace" if replacing else "update", urn, _label(obj), old=previous, new=obj)
        # A changed path above a force-new field was compared whole: a secret hides its fields.
        hidden = [p for p in paths if any(_under(f, p) and f != p for f in force_new)]
        if hidden:
            held = sorted({f for p in hidden for f in force_new if _under(f, p) and f != p})
            shown = sorted(set(replacing) - set(held))
            change.reasons.append(
                "changes " + ", ".join([*shown, *hidden]) + f" (a secret hides which of its fields: it holds "
                f"{', '.join(held)}, which replace)"
            )
        elif replacing:
            change.reasons.append("changes " + ", ".join(replacing))
        elif paths:
            change.reasons.append("changes " + ", ".join(paths))
            immutable = sorted({f for p in paths for f in IMMUTABLE_FIELDS.get(kind, ()) if _under(p, f)})
            if immutable:
                change.warnings.append(f"the API server will refuse this update: {', '.join(immutable)} is immutable")
        else:
            change.reasons.append(f"protect {previous['protect']} -> {obj['protect']} (state only)")
        changes[urn] = change
    for urn, obj in before.items():
        if urn not in after:
            changes[urn] = Change("delete", urn, _label(obj), old=obj)
    _cascade(changes, after)
    for change in changes.values():
        _annotate(change)
    _flag_stranded_cache(changes, before, after)
    _flag_refused_resizes(changes, after)
    _flag_wiping_growth(changes, after)
    _say_moves(changes, after)
    order = {urn: i for i, urn in enumerate([*after, *before])}
    return sorted(changes.values(), key=lambda c: order[c.urn])


def _cascade(changes: dict[str, Change], after: dict[str, dict[str, Any]]) -> None:
    """A delete-before-replace also replaces the resources whose inputs use its outputs."""
    grew = True
    while grew:
        grew = False
        replaced = {urn for urn, c in changes.items() if c.action == "replace" and after[urn]["deleteBeforeReplace"]}
        for urn, obj in after.items():
            sources = [s for s in obj["propertyDependencies"] if s in replaced]
            current = changes.get(urn)
            if not sources or (current and (current.action == "create" or current.cascaded)):
                continue
            change = current or Change("update", urn, _label(obj), old=obj, new=obj)
            grew = grew or change.action != "replace"
            change.action = "replace"
            change.cascaded = True
            change.reasons.append("uses the outputs of " + ", ".join(changes[s].label for s in sources) + ", which is replaced")
            changes[urn] = change


def _worker(obj: dict[str, Any] | None) -> str | None:
    """The multi-node worker a cache claim belongs to (its mlcache/worker label), if any."""
    value: Any = obj
    for key in ("manifest", "metadata", "labels", WORKER_LABEL):
        value = value.get(key) if isinstance(value, dict) else None  # a secret manifest is redacted
    return value


def _copy_unavailable(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """Why `cache.relocate copy` cannot move the cache from the old claim as the new settings ask
    (the settings or the guard refuse it), or None: Block mode on either side; with the new settings,
    a worker's claim (job.nodes > 1) or a cache.name with no room for the copy's names."""
    if any(_dig((claim or {}).get("manifest"), "spec", "volumeMode") == "Block" for claim in (old, new)):
        return COPY_NEEDS_FILES
    if new is None:
        return None
    if _worker(new) is not None:
        return COPY_NEEDS_ONE_NODE
    name = _dig(new.get("manifest"), "metadata", "name")
    if isinstance(name, str) and not names_fit_after(cache_name_of(name), COPY_CACHE_NAME_MAX):
        return COPY_NEEDS_NAME_ROOM
    return None


def _guard_refuses(change: Change) -> bool:
    """A cache claim re-created by a class or volume-mode change under cache.relocate false (not
    rendered to replace on a placement change): the program's guard refuses it once the claim is bound."""
    if any(PLACEMENT_ANNOTATION in path for path in (change.new or {}).get("replaceOnChanges", [])):
        return False
    old, new = ((c or {}).get("manifest") for c in (change.old, change.new))
    return any(_dig(old, "spec", field) != _dig(new, "spec", field) for field in ("storageClassName", "volumeMode"))


def _annotate(change: Change) -> None:
    subject = change.new or change.old
    assert subject is not None, "a change has an old or a new object"
    kind = _kind(subject)
    guard = change.new if change.action == "replace" else change.old
    if change.action in ("replace", "delete") and guard and guard["protect"]:
        change.warnings.append(f"{BLOCKED}: the resource is protected; the preview fails until cache.protect is false")
    worker = _worker(change.old if change.action == "delete" else change.new)
    if kind == "PersistentVolumeClaim" and change.action in ("replace", "delete"):
        whose = f" (worker {worker}'s cache)" if worker is not None else ""
        if change.action == "delete":
            what = f"deletes {change.label}{whose}"
        elif change.old and (before := _label(change.old)) != change.label:  # a new name: another claim
            what = f"deletes {before}{whose} and creates {change.label} in its place"
        else:
            what = f"deletes and re-creates {change.label}{whose}"
        warning = f"{DATA_LOSS}: {what}: every cached model and dataset on it is wiped"
        if change.action == "replace" and worker is None and _guard_refuses(change):
            # The program's guard (bound_cache.py) refuses it once the claim is bound: say what `up` does.
            why_not = _copy_unavailable(change.old, change.new)
            warning += (
                "; with cache.relocate false the program's guard refuses this `pulumi up` while the claim is bound "
                "(nothing changed): "
                + (
                    f"set cache.relocate fresh to re-create it empty (no move by copy here: {why_not})"
                    if why_not
                    else "set cache.relocate copy to move the cache with its models, or fresh to re-create it empty"
                )
            )
        change.warnings.append(warning)
    if kind == "PersistentVolumeClaim" and change.action == "create" and worker is not None:
        change.notes.append(f"a new, empty cache for worker {worker}: its first run downloads the models again")
    if kind in ("Job", "JobSet") and change.action in ("replace", "delete"):
        effect = "killed and started over" if change.action == "replace" else "stopped"
        change.warnings.append(f"{RESTARTS} of {change.label} is {effect}")


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = _dig(manifest, "spec", "template", "spec")
    return spec if isinstance(spec, dict) else {}


def _required(manifest: dict[str, Any], label: str) -> tuple[str, ...]:
    """The values of `label` a Job's pods are restricted to by required node affinity (() = any)."""
    terms = _dig(
        pod_spec(manifest), "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms"
    )
    found: set[str] = set()
    for term in terms if isinstance(terms, list) else []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == label and expression.get("operator") == "In":
                found.update(expression.get("values") or [])
    return tuple(sorted(found))


def job_placement(manifest: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(zones, GPU products) a Job's pods are restricted to by required node affinity (() = any)."""
    return _required(manifest, ZONE_LABEL), _required(manifest, GPU_PRODUCT_LABEL)


def _job_templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A Job as itself, a JobSet as its replicated Jobs' templates, by name: what places pods."""
    if manifest.get("kind") != "JobSet":
        return {"": manifest}
    replicated = _dig(manifest, "spec", "replicatedJobs")
    if not isinstance(replicated, list):
        return {}
    return {str(r.get("name")): r.get("template") or {} for r in replicated if isinstance(r, dict)}


def _describe_placement(placement: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    zones, products = placement
    return f"zone {', '.join(zones) or UNPINNED_ZONE}, GPU product {', '.join(products) or 'any'}"


def _claims_of(manifest: dict[str, Any]) -> set[str]:
    volumes = pod_spec(manifest).get("volumes")
    return (
        {_dig(v, "persistentVolumeClaim", "claimName") for v in volumes if isinstance(v, dict)}
        if isinstance(volumes, list)
        else set()
    )


def _flag_stranded_cache(changes: dict[str, Change], before: dict[str, Any], after: dict[str, Any]) -> None:
    """A LINSTOR cache that stays while its consumers move is stranded where it was bound."""
    for urn, obj in after.items():
        manifest = obj["manifest"]
        if urn not in before or _kind(obj) != "PersistentVolumeClaim":
            continue
        if changes.get(urn) and changes[urn].action != "update":
            continue  # re-created in this change (relocated, or replaced for another reason)
        if (_dig(manifest, "metadata", "annotations", BACKEND_ANNOTATION) or "linstor") != "linstor":
            continue  # network storage: reachable from every zone
        for job_urn, job in after.items():
            change = changes.get(job_urn)
            if _kind(job) == "Job" and change is not None and _is_digest(job["manifest"].get("spec")):
                # A secret under mlcache:job hides where the Job goes: the guard judges it at up.
                hidden = (
                    f"{change.label}'s spec is hidden by a secret: whether it moves away from where {_label(obj)} "
                    "is bound (STRANDS THE CACHE) cannot be told offline; the program's guard refuses such an up"
                )
                if hidden not in change.warnings:
                    change.warnings.append(hidden)
        claim = _dig(manifest, "metadata", "name")
        if not isinstance(claim, str):
            continue
        recorded = PlacementRecord.parse(_dig(before[urn]["manifest"], "metadata", "annotations", PLACEMENT_ANNOTATION))
        for job_urn, job in after.items():
            change = changes.get(job_urn)
            if change is None or _kind(job) not in ("Job", "JobSet"):
                continue
            if _is_copy_pod(job["manifest"]):
                continue  # a move's sender goes to the old volume's node by design
            previous = _job_templates(before[job_urn]["manifest"]) if job_urn in before else {}
            mounting = [(name, t) for name, t in _job_templates(job["manifest"]).items() if claim in _claims_of(t)]
            if not mounting:
                continue
            name, template = mounting[0]  # one claim, one worker
            if name in previous:
                was = job_placement(previous[name])
            elif recorded is not None:  # a new Job (a new run, or a run of another shape): where the claim was placed
                was = ((recorded.zone,) if recorded.zone else (), (recorded.gpu_product,))
            else:
                continue
            now = job_placement(template)
            if was == now:
                continue
            change.warnings.insert(
                0,
                f"{STRANDS}: {_label(obj)} keeps its volume where the previous placement "
                f"({_describe_placement(was)}) bound it, while {change.label} moves to {_describe_placement(now)}: "
                "if that node is outside the new placement the pod can never be placed (volume node affinity "
                "conflict); the program's guard then refuses the up. "
                + (
                    f"Set cache.relocate fresh{' and cache.protect false' if obj.get('protect') else ''} in the same "
                    f"change to re-create it there (DATA LOSS, re-warmed by cache.prefetch; no move by copy here: "
                    f"{why_not})."
                    if (why_not := _copy_unavailable(before[urn], obj))
                    else "To move the cache with its contents, set cache.relocate copy in the same change (or fresh: "
                    "DATA LOSS, re-warmed by cache.prefetch)."
                ),
            )


def _is_copy_pod(manifest: dict[str, Any]) -> bool:
    """A move's or the durable copy's Job (labelled as a cache-copy component)."""
    labels = _dig(manifest, "metadata", "labels") or {}
    return all(labels.get(key) == value for key, value in COPY_COMPONENT_LABEL.items())


def _namespaced_name(manifest: dict[str, Any]) -> tuple[Any, Any]:
    return (_dig(manifest, "metadata", "namespace"), _dig(manifest, "metadata", "name"))


def _say_moves(changes: dict[str, Change], after: dict[str, Any]) -> None:
    """A new claim copied from the old one (cache.relocate copy): a move, not a loss."""
    protected = {_namespaced_name(o["manifest"]) for o in after.values() if _kind(o) == "PersistentVolumeClaim" and o["protect"]}
    for change in changes.values():
        if change.action != "create":
            continue
        assert change.new is not None, "a create has its new object"
        manifest = change.new.get("manifest") or {}
        source = _dig(manifest, "metadata", "annotations", COPY_FROM_ANNOTATION)
        if _kind(change.new) != "PersistentVolumeClaim" or not isinstance(source, str):
            continue
        size = _dig(manifest, "spec", "resources", "requests", "storage")
        training = any(
            _kind(job) in ("Job", "JobSet")
            and not _is_copy_pod(job["manifest"])
            and any(source in _claims_of(t) for t in _job_templates(job["manifest"]).values())
            for job in after.values()
        )
        until = (
            f"{source} and the training Job stay as they are until then, and the next `pulumi up` after it switches "
            "training here and "
            if training
            else f"{source} stays as it is until then (no training Job in this plan), and the next `pulumi up` after it "
            "switches the cache here and "
        )
        change.notes.insert(
            0,
            f"{MOVE}: the cache is copied from {source} into this new claim ({size}) and verified; "
            + until
            + (
                f"keeps {source} (cache.protect is true: unprotect it to retire it)"
                if (_dig(manifest, "metadata", "namespace"), source) in protected  # the copy's source is in its namespace
                else f"deletes {source}"
            )
            + " (docs/moving-the-cache.md)",
        )


def _storage_classes(objects: Iterable[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """A render's StorageClass manifests by name."""
    return {_dig(o["manifest"], "metadata", "name"): o["manifest"] for o in objects if _kind(o) == "StorageClass"}


def _flag_refused_resizes(changes: dict[str, Change], after: dict[str, Any]) -> None:
    """Shrinks, and growth the class does not allow: updates the API server refuses mid-up."""
    classes = _storage_classes(after.values())
    for change in changes.values():
        if change.action != "update":
            continue
        old, new = change.old, change.new
        assert old is not None and new is not None, "an update has both objects"
        if _kind(new) != "PersistentVolumeClaim":
            continue
        old_size, new_size = (_size(c["manifest"]) for c in (old, new))
        if old_size == new_size or None in (old_size, new_size):
            continue
        old_text, new_text = (_dig(c["manifest"], "spec", "resources", "requests", "storage") for c in (old, new))
        why_not = _copy_unavailable(old, new)
        relocate = (
            f"or re-create it at the new size with cache.relocate fresh (DATA LOSS; no move by copy here: {why_not})"
            if why_not
            else "or move the cache to a claim of the new size with cache.relocate copy"
        )
        if new_size < old_size:
            change.warnings.append(
                f"{REFUSED}: cache.size shrinks {old_text} -> {new_text} and a volume "
                f"cannot shrink; way out: keep cache.size at {old_text} or more, {relocate}"
            )
            continue
        storage_class = classes.get(_dig(new["manifest"], "spec", "storageClassName"))
        if storage_class is not None and storage_class.get("allowVolumeExpansion") is False:
            change.warnings.append(
                f"{REFUSED}: cache.size grows {old_text} -> {new_text} but StorageClass "
                f"{_dig(storage_class, 'metadata', 'name')} has allowVolumeExpansion false; way out: set "
                f"linstor.allowVolumeExpansion true (expands in place, keeps the data), {relocate}"
            )


def _flag_wiping_growth(changes: dict[str, Change], after: dict[str, Any]) -> None:
    """A claim re-created (cache.relocate fresh) only because it grows, where it could expand in place:
    the program's guard refuses that `up` while the claim is bound, so the preview says so."""
    classes = _storage_classes(after.values())
    for change in changes.values():
        old, new = change.old, change.new
        if change.action != "replace" or old is None or new is None or _kind(new) != "PersistentVolumeClaim":
            continue
        old_size, new_size = (_size(c["manifest"]) for c in (old, new))
        if None in (old_size, new_size) or not new_size > old_size:
            continue
        same = [
            ("metadata", "name"),
            ("metadata", "namespace"),
            ("metadata", "annotations", PLACEMENT_ANNOTATION),
            ("spec", "storageClassName"),
            ("spec", "volumeMode"),
        ]
        if any(_dig(old["manifest"], *path) != _dig(new["manifest"], *path) for path in same):
            continue
        storage_class = classes.get(_dig(new["manifest"], "spec", "storageClassName"))
        if storage_class is not None and storage_class.get("allowVolumeExpansion") is False:
            continue
        # A class this stack does not make is read only at up: the guard refuses only if it allows expansion.
        unless = (
            ""
            if storage_class is not None
            else f" if StorageClass {_dig(new['manifest'], 'spec', 'storageClassName')} allows expansion"
        )
        for index, warning in enumerate(change.warnings):
            if warning.startswith(DATA_LOSS):
                change.warnings[index] = (
                    f"{warning}; the program's guard refuses this `pulumi up` while the claim is bound (nothing "
                    f"changed){unless}: cache.relocate is still fresh, and the claim can grow in place: set "
                    "cache.relocate false to expand it, keeping the data"
                )


def _size(manifest: dict[str, Any]):
    size = _dig(manifest, "spec", "resources", "requests", "storage")
    try:
        return quantity_bytes(size) if isinstance(size, str) else None
    except ValueError:  # a secret's digest, not a quantity
        return None


def _files(manifest: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's files (its data), or nothing for another kind or a secret data digest."""
    data = manifest.get("data") if manifest.get("kind") == "ConfigMap" else None
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _by_content(manifest: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap with each file as its content hash and length: the scripts (tens of KB of
    Python) would otherwise be most of any diff that touches them."""
    files = _files(manifest)
    if not files:
        return manifest
    shown = {k: f"sha256:{hashlib.sha256(v.encode()).hexdigest()[:12]} ({len(v.splitlines())} lines)" for k, v in files.items()}
    return {**manifest, "data": {**manifest["data"], **shown}}


def manifest_diff(change: Change) -> str:
    def text(obj):
        return yaml.safe_dump(_by_content(obj["manifest"]), sort_keys=False).splitlines(keepends=True) if obj else []

    out = "".join(difflib.unified_diff(text(change.old), text(change.new), "before", "after", n=3))
    if change.old is None or change.new is None:
        return out  # a ConfigMap created or deleted whole: its files are the repository's, by hash here
    old, new = _files(change.old["manifest"]), _files(change.new["manifest"])
    for name in sorted(new):  # every changed or added file, line by line (the PR comment trims by size)
        if old.get(name) != new[name]:
            before = old.get(name, "").splitlines(True)
            lines = difflib.unified_diff(before, new[name].splitlines(True), name if name in old else "/dev/null", name, n=2)
            out += "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out


def secret_changes(base: dict[str, str], head: dict[str, str]) -> list[str]:
    """The `secure:` values added, removed or re-encrypted between two stack files (secure_values)."""
    return sorted(key for key in set(base) | set(head) if base.get(key) != head.get(key))


def secrets_line(keys: list[str]) -> str:
    return (
        f"secret values changed or re-encrypted: {', '.join(keys)}; offline both sides render a placeholder, "
        "so what they change is not shown here: the real `pulumi preview` decrypts them"
    )


def action_counts(changes: list[Change]) -> str:
    """`2 to replace, 1 to delete`, in the engine's order ("" for no change)."""
    counts = {a: sum(c.action == a for c in changes) for a in ("create", "update", "replace", "delete")}
    return ", ".join(f"{n} to {a}" for a, n in counts.items() if n)


def report(
    stack: str,
    changes: list[Change],
    secrets: list[str] | None = None,
    warnings: list[str] | None = None,
    refusing: list[Any] | None = None,
) -> str:
    """The text preview of one stack. `warnings`: the program's warnings the base revision did not
    have; `refusing`: the mandatory policy findings that fail the gate (policy_check.PolicyFinding)."""
    said = f"  !! {secrets_line(secrets)}\n" if secrets else ""
    said += "".join(f"  !! the program warns: {w}\n" for w in warnings or [])
    said += "".join(
        f"  !! `pulumi up` will refuse this: policy {f.policy} (mandatory){f' on {f.resource}' if f.resource else ''}: "
        f"{_line(f.message)}\n"
        for f in refusing or []
    )
    if not changes:
        return f"stack {stack}: no changes\n{said}"
    out = io.StringIO()
    out.write(f"stack {stack}: {action_counts(changes)}\n{said}")
    for change in changes:
        out.write(f"  {change.action:<8} {change.label}")
        out.write(f"  ({'; '.join(change.reasons)})\n" if change.reasons else "\n")
        for warning in change.warnings:
            out.write(f"           !! {warning}\n")
        for note in change.notes:
            out.write(f"           -- {note}\n")
    for change in changes:
        diff = manifest_diff(change)
        if diff:
            out.write(f"\n--- {change.action} {change.label}\n{diff}")
    return out.getvalue()


# GitHub refuses a PR comment longer than this; the summary always fits, details are trimmed.
COMMENT_LIMIT = 65_536
# The comment's first line: the PR workflow finds its own comment by it and updates it in place.
COMMENT_MARKER = "<!-- mlcache-preview -->"


@dataclass(frozen=True)
class RealPreview:
    """What the PR workflow's real `pulumi preview --diff` of one stack did, and whether its
    credentials let the preview dry-run on the API server (`mlcache access`)."""

    # Whether the workflow started a real preview of the stack (its folder exists).
    ran: bool
    # The preview's exit status; None: it did not finish (a timeout, or a step before it failed).
    exit_code: int | None = None
    output: str = ""
    # mlcache access: 0 the preview dry-runs on the API server, 1 it cannot, else unknown.
    access_code: int | None = None
    access: str = ""

    @property
    def passed(self) -> bool:
        return self.ran and self.exit_code == 0

    @property
    def failed(self) -> bool:
        """It failed or did not finish: what it would have refused is unknown, so the gate does not pass it."""
        return self.ran and not self.passed

    def verdict(self) -> str:
        """The summary table's cell."""
        if not self.ran:
            return "not run"
        if self.exit_code is None:
            return "**did not finish**"
        if self.exit_code != 0:
            return f"**fails** (exit {self.exit_code})"
        if self.access_code == 0:
            return "passes, dry-run on the API server"
        if self.access_code == 1:
            return "passes, **without server-side dry-run**"
        return "passes (dry-run not checked)"


# The folded part of a stack's real preview, trimmed like a manifest diff when the comment is too long.
REAL_PREVIEW_TITLE = "pulumi preview --diff"


@dataclass
class StackPreview:
    """One stack's part of the PR comment: its changes, the policy pack's findings on the new plan,
    and the new plan's objects (for where the cache and training are placed)."""

    stack: str
    changes: list[Change]
    findings: list[Any]  # policy_check.PolicyFinding
    objects: list[dict[str, Any]]
    # `secure:` values of the stack file whose ciphertext differs between the revisions.
    secrets: list[str] = field(default_factory=list)
    # Where a rehearsal on the stack's fleet put the cache and the pods (mlcache rehearse --json);
    # {} when that rehearsal did not finish, None when there was none.
    rehearsed: dict[str, Any] | None = None
    # The program's warnings the base revision's render did not have (a secret hiding the Job).
    warnings: list[str] = field(default_factory=list)
    # The PR workflow's real preview of the stack; None when the comment has no real previews.
    real: RealPreview | None = None
    # Why the stack could not be rendered offline (a `secure:` value its checks refuse as a
    # placeholder): only its real preview can judge it. None: rendered.
    unrendered: str | None = None

    @property
    def gated(self) -> bool:
        """What fails --fail-on-data-loss besides the changes: a real preview that failed or did not
        finish; a stack not rendered offline, unless its real preview passed."""
        if self.real is not None and self.real.failed:
            return True
        return self.unrendered is not None and not (self.real is not None and self.real.passed)


def risks(change: Change) -> list[str]:
    """The flags of one change, as the comment's risk column names them."""
    found = []
    for flag, label in ((DATA_LOSS, DATA_LOSS), (STRANDS, STRANDS), (REFUSED, "REFUSED"), (BLOCKED, BLOCKED)):
        if any(w.startswith(flag) for w in change.warnings):
            found.append(label)
    if any(w.startswith(RESTARTS) for w in change.warnings):
        found.append("RUN RESTARTS" if change.action == "replace" else "RUN STOPS")
    if any(n.startswith(MOVE) for n in change.notes):
        found.append(MOVE)
    return found


def placement_lines(objects: list[dict[str, Any]]) -> list[str]:
    """Where the new plan asks the cache and each training pod to be: the claims' backend and
    placement record, the Jobs' required zone and GPU product."""
    lines = []
    for obj in objects:
        manifest, kind = obj["manifest"], _kind(obj)
        if kind == "PersistentVolumeClaim":
            metadata = manifest.get("metadata")
            if not isinstance(metadata, dict):  # a secret flows into it: shown as its digest
                lines.append(f"`{_label(obj)}`: its metadata is secret (a secret setting names its placement)")
                continue
            annotations = metadata.get("annotations") or {}
            record = annotations.get(PLACEMENT_ANNOTATION)
            where = f"placement record `{record}`" if isinstance(record, str) else "placed by its first consumer"
            lines.append(f"`{_label(obj)}`: {annotations.get(BACKEND_ANNOTATION, 'linstor')}, {where}")
        elif kind == "Job" and not isinstance(manifest.get("spec"), dict):
            lines.append(f"`{_label(obj)}`: its spec is secret (a secret setting flows into it)")
        elif kind == "Job" and (nodes := _required(manifest, HOSTNAME_LABEL)):
            # A copy pod beside the volume it reads: pinned more narrowly than any zone.
            lines.append(f"`{_label(obj)}`: pinned to node {', '.join(nodes)} (where the claim it reads is bound)")
        elif kind == "Job":
            lines.append(f"`{_label(obj)}`: {_describe_placement(job_placement(manifest))}")
    return lines


def valid_placement(document: Any) -> bool:
    """The shape `mlcache rehearse --json` prints (anything else counts as a rehearsal that did not finish)."""
    volume_keys, pod_keys, problem_keys = (
        {"claim", "phase", "nodes", "zones"},
        {"pod", "role", "phase", "node"},
        {"subject", "what", "fix"},
    )

    def all_have(items: Any, keys: set[str]) -> bool:
        return isinstance(items, list) and all(isinstance(item, dict) and keys <= item.keys() for item in items)

    return isinstance(document, dict) and (
        isinstance(document.get("error"), str)
        or (
            all_have(document.get("volumes"), volume_keys)
            and all_have(document.get("pods"), pod_keys)
            and all_have(document.get("problems"), problem_keys)
        )
    )


def rehearsed_lines(document: dict[str, Any]) -> list[str]:
    """Where the rehearsal put each of the cache's volumes and each pod, and what it found wrong."""
    if "error" in document:
        return [f"!! the rehearsal's pulumi up failed: {_line(document['error'])[:500]}"]
    lines = []
    for volume in document.get("volumes", []):
        nodes = volume.get("nodes")
        where = "any node (network storage)" if nodes is None else ", ".join(nodes) or "no node yet"
        zones = f" (zone {', '.join(volume['zones'])})" if volume.get("zones") else ""
        lines.append(f"`PersistentVolumeClaim/{volume['claim']}`: {volume['phase']}, on {where}{zones}")
    for pod in document.get("pods", []):
        if pod.get("node"):
            cache = {True: ", with its cache", False: ", **not** with its cache"}.get(pod.get("with_cache"), "")
            lines.append(f"{pod['role']} pod `{pod['pod']}`: on {pod['node']} (zone {pod.get('zone') or '?'}){cache}")
        else:
            lines.append(f"{pod['role']} pod `{pod['pod']}`: **not placed**: {_line(pod.get('reason') or pod['phase'])}")
    lines += [f"!! {_line(p['subject'])}: {_line(p['what'])} Fix: {_line(p['fix'])}" for p in document.get("problems", [])]
    lines += [f"!! {_line(message)}" for message in document.get("failed", [])]
    lines += [f"!! still moving: {_line(what)}" for what in document.get("moving", [])]
    if document.get("ok") is False and not any(line.startswith("!! ") for line in lines):
        lines.append("!! the rehearsal did not pass (`mlcache rehearse` on the stack's fleet says why)")
    return lines


def _line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _line(text).replace("|", "\\|")


def _fenced(language: str, text: str) -> str:
    """A code block whose fence no line of `text` can close: one backtick longer than its longest run."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    ending = "" if text.endswith("\n") else "\n"  # a fence closes only on a line of its own
    return f"{fence}{language}\n{text}{ending}{fence}\n"


def unrendered_report(stack: str, why: str) -> str:
    """The text preview of a stack that could not be rendered offline."""
    return f"stack {stack}: not previewed offline: {why}; the real `pulumi preview` (which decrypts it) judges this stack\n"


def _summary_row(preview: StackPreview) -> str:
    changes = action_counts(preview.changes) or "no changes"
    if preview.unrendered:
        changes = "**not previewed offline** (a `secure:` value)"
    if preview.secrets:
        changes += f"; **{len(preview.secrets)} secret value{'s' * (len(preview.secrets) > 1)} changed, not diffed**"
    flagged = sorted({r for c in preview.changes for r in risks(c)})
    mandatory = sum(f.level == MANDATORY for f in preview.findings)
    advisory = sum(f.level == ADVISORY for f in preview.findings)
    policy = "passes" if not mandatory else f"**{mandatory} mandatory violation{'s' * (mandatory > 1)}**"
    if preview.unrendered:
        policy = "not judged offline"
    if advisory:
        policy += f", {advisory} advisory"
    real = f" {preview.real.verdict()} |" if preview.real else ""
    return f"| {preview.stack} | {changes} | {', '.join(flagged) or '-'} | {policy} |{real}"


def _stack_section(preview: StackPreview) -> tuple[str, list[tuple[str, str]]]:
    """(what always shows, each change's title and manifest diff, to fold)."""
    out = io.StringIO()
    out.write(f"\n### stack {preview.stack}\n\n")
    if preview.unrendered:
        out.write(
            f"!! Not previewed offline: {_line(preview.unrendered)}. Only the real `pulumi preview`, which decrypts "
            "it, can judge this stack: the gate passes it only when that preview ran and passed.\n"
        )
    elif preview.changes:
        out.write("| resource | operation | why | risk |\n|---|---|---|---|\n")
        for change in preview.changes:
            why = "; ".join(change.reasons) or "-"
            out.write(f"| `{_cell(change.label)}` | {change.action} | {_cell(why)} | {', '.join(risks(change)) or '-'} |\n")
        said = [f"- `{c.label}`: !! {_line(w)}\n" for c in preview.changes for w in c.warnings]
        said += [f"- `{c.label}`: {_line(n)}\n" for c in preview.changes for n in c.notes]
        if said:
            out.write("\n" + "".join(said))
    else:
        out.write("No changes.\n")
    if preview.secrets:
        out.write(f"\n- !! {_line(secrets_line([f'`{key}`' for key in preview.secrets]))}\n")
    for warning in preview.warnings:
        out.write(f"\n- !! the program warns: {_line(warning)}\n")
    if preview.unrendered:
        out.write("\n**Policy pack:** not judged offline (the deploy runs it).\n")
    elif preview.findings:
        out.write("\n**Policy pack:**\n")
        for finding in preview.findings:
            on = f" (`{finding.resource}`)" if finding.resource else ""
            out.write(f"- {finding.level} `{finding.policy}`{on}: {_line(finding.message)}\n")
    else:
        out.write("\n**Policy pack:** every policy passes.\n")
    if preview.rehearsed:
        heading, lines = "Placement, rehearsed on the stack's fleet", rehearsed_lines(preview.rehearsed)
    else:
        if preview.rehearsed == {}:
            out.write("\n- !! The rehearsal on the stack's fleet did not finish (see the job log).\n")
        heading, lines = "Placement asked for", placement_lines(preview.objects)
    if lines:
        out.write(f"\n**{heading}:**\n" + "".join(f"- {line}\n" for line in lines))
    folded = [(f"{change.action} {change.label}", manifest_diff(change)) for change in preview.changes]
    if preview.real:
        out.write(f"\n**Real `pulumi preview`:** {_real_preview_line(preview.real)}\n")
        if preview.real.output.strip():
            folded.append((REAL_PREVIEW_TITLE, _tail(preview.real.output)))
    return out.getvalue(), folded


# The last lines of a real preview's output the comment keeps: its diagnostics and summary come last.
REAL_PREVIEW_LINES = 400


def _tail(output: str) -> str:
    lines = output.splitlines(keepends=True)
    if len(lines) <= REAL_PREVIEW_LINES:
        return output
    cut = len(lines) - REAL_PREVIEW_LINES
    return f"... ({cut} earlier lines: the pulumi-preview job's log has them)\n" + "".join(lines[cut:])


def _real_preview_line(real: RealPreview) -> str:
    if not real.ran:
        return (
            "not run: this run has no real preview of the stack (the pulumi-preview job runs the stacks in its matrix "
            "when the repository's credentials are set)."
        )
    if real.exit_code is None:
        verdict = "**did not finish** (a timeout, or a step before it failed: the pulumi-preview job's log says which)."
    elif real.exit_code:
        output = "; its output is folded below" if real.output.strip() else ""
        verdict = f"**fails** (exit {real.exit_code}): `pulumi up` would fail too{output}."
    else:
        verdict = "passes."
    said = _access_statements(real.access)
    if real.access_code not in (0, 1):
        why = f": `mlcache access` failed: {said[-1]}" if said else ""  # its error line is its last
        return f"{verdict} Whether it could dry-run on the API server was not checked{why}."
    flag = "!! " if real.access_code else ""
    return verdict + "".join(f"\n  - {flag}{statement}" for statement in said)


def _access_statements(text: str) -> list[str]:
    """mlcache access's answer, one statement per line: each of its lines with the indented ones
    that follow it (what is missing) joined on."""
    statements: list[str] = []
    for line in text.splitlines():
        if line.startswith(" ") and statements:
            statements[-1] += ("; " if not statements[-1].endswith(":") else " ") + _cell(line)
        elif line.strip():
            statements.append(_cell(line))
    return statements


def new_warnings(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """The program's warnings in the new render (mlcache render --json) that the old one did not have."""
    before = set((old or {}).get("warnings", []))
    return [w for w in (new or {}).get("warnings", []) if w not in before]


def _details(stack: str, diffs: list[tuple[str, str | None]], base: str = "", trimmed: dict[str, int] | None = None) -> str:
    """The folded manifest diffs (and real preview) of one stack; one that is None was trimmed
    (`trimmed`: its lines, by title)."""
    parts, kinds = [], set()
    shown_base = _line(base).replace("`", "")
    for title, diff in diffs:
        real = title == REAL_PREVIEW_TITLE
        if diff is None:
            lines = (trimmed or {}).get(title, 0)
            where = (
                "the pulumi-preview job's log has it"
                if real
                else f"`mlcache diff --base '{shown_base}' --stack {stack}` prints it"
            )
            parts.append(
                f"\n`{title}`: its {'output' if real else 'diff'} ({lines} lines) is trimmed to fit the comment; {where}\n"
            )
        elif diff:
            parts.append(f"\n`{title}`\n\n{_fenced('diff', diff)}")
        else:
            continue
        kinds.add("pulumi preview" if real else "manifest diffs")
    if not parts:
        return ""
    what = ", ".join(kind for kind in ("manifest diffs", "pulumi preview") if kind in kinds)
    return f"\n<details><summary>stack {stack}: {what}</summary>\n{''.join(parts)}\n</details>\n"


def markdown_report(base: str, previews: list[StackPreview], limit: int = COMMENT_LIMIT) -> str:
    """The PR comment: a summary table first, then per stack its changes with their warnings, the
    policy pack's verdict and placement, with the manifest diffs folded. Over `limit`, the largest
    diffs are trimmed first, each said to be; if the rest still does not fit, whole stack sections
    are cut from the end, with a line saying so (the summary table is never cut)."""
    full = f"`mlcache diff --base '{base}'` prints everything"
    real = any(p.real for p in previews)
    columns = "| stack | changes | risk | policy pack |" + (" real preview |" if real else "")
    head = (
        f"{COMMENT_MARKER}\n## mlcache preview against `{_line(base).replace('`', '')}`\n\n"
        f"{columns}\n{'|---' * columns.count(' |')}|\n" + "".join(_summary_row(p) + "\n" for p in previews)
    )
    sections = [_stack_section(p) for p in previews]
    diffs: list[list[tuple[str, str | None]]] = [list(found) for _, found in sections]
    folded = [_details(p.stack, d) for p, d in zip(previews, diffs, strict=True)]
    length = len(head) + sum(len(shown) for shown, _ in sections) + sum(map(len, folded))
    # The largest diffs go first: one huge ConfigMap diff should not cost every other stack its diffs.
    sizes = sorted(((len(d or ""), i, j) for i, found in enumerate(diffs) for j, (_, d) in enumerate(found)), reverse=True)
    trimmed_lines: list[dict[str, int]] = [{} for _ in previews]  # per stack: a title may be in several
    for size, i, j in sizes:
        if length <= limit or size == 0:
            break
        title, diff = diffs[i][j]
        trimmed_lines[i][title] = (diff or "").count("\n")
        diffs[i][j] = (title, None)
        trimmed = _details(previews[i].stack, diffs[i], base, trimmed_lines[i])  # only this stack's folded part changes
        length += len(trimmed) - len(folded[i])
        folded[i] = trimmed
    stacks = [shown + details for (shown, _), details in zip(sections, folded, strict=True)]
    if length <= limit:
        return head + "".join(stacks)
    cut = f"\n_The rest is cut to fit a comment ({limit} characters): {full}._\n"
    kept = head
    for section in stacks:
        if len(kept) + len(section) + len(cut) > limit:
            break
        kept += section
    return kept + cut


def render_json(
    project_dir: Path, stack: str, digest_key: str, live: LiveCache | None = None, *, in_process: bool = False
) -> tuple[dict[str, Any] | None, str | None]:
    """mlcache render --json of `stack` for the program in `project_dir`: (plan, None), (None, None) when the
    revision has no such stack, or (None, the render's error line). `live`: the cache the working tree's
    program finds in the cluster."""
    if not (project_dir / f"Pulumi.{stack}.yaml").is_file() or not (project_dir / "__main__.py").is_file():
        return None, None
    if project_dir == CHECKOUT or in_process:
        # This checkout's program (or, `in_process`, one that `same_program` found equal to it) is
        # the one these tools already imported: rendered in this process.
        try:
            with assume_live(live):
                run, _ = render(stack, [], [], project_dir)
        except RENDER_ERRORS as err:
            return None, str(err)
        return as_json(run, digest_key), None
    # Another revision gets a process of its own: the two programs never share imported modules.
    result = subprocess.run(
        [sys.executable, "-m", "mlcache", "render", "--project", str(project_dir), "--stack", stack, "--json"],
        cwd=CHECKOUT,
        env={**os.environ, DIGEST_KEY_ENV: digest_key},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None, error_line(result.stderr, "render failed with no message")
    return json.loads(result.stdout), None


def moves_by_copy(stack: str, project_dir: Path) -> bool:
    """The working tree's stack asks for moves by copy (cache.relocate copy)."""
    try:
        return load_stack_config(stack, [], [], project_dir).moves_by_copy()
    except (StackConfigError, FileNotFoundError):
        return False  # the render says what is wrong


def _cache_claim(rendered: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cache's claim (worker 0's) in a render, when it made one whose name is readable."""
    for obj in (rendered or {}).get("objects", []):
        named = isinstance(_dig(obj["manifest"], "metadata", "name"), str)
        if _kind(obj) == "PersistentVolumeClaim" and named and _worker(obj) in (None, "0"):
            return obj
    return None


def _namespace(obj: dict[str, Any]) -> str:
    """The namespace the provider puts an object in: its ID's (the stack's kubernetes:namespace when
    the manifest names none), else the manifest's."""
    ident = obj.get("id")
    if isinstance(ident, str) and "/" in ident:
        return ident.partition("/")[0]
    return _dig(obj["manifest"], "metadata", "namespace") or "default"


def base_claim(old: dict[str, Any] | None) -> LiveCache | None:
    """The base revision's cache claim (worker 0's), as live, with its StorageClass when the base
    made it and the base's Jobs that mount it (deployed, not running: what a preview cannot know
    the guard reads at up; unknown when a secret hides them): None when it made none."""
    claim = _cache_claim(old)
    if claim is None:
        return None
    manifest = claim["manifest"]
    objects = (old or {}).get("objects", [])
    jobs = [obj["manifest"] for obj in objects if _kind(obj) == "Job"]
    hidden = any(not isinstance(job.get("metadata"), dict) for job in jobs)
    finished = {"conditions": [{"type": "Complete", "status": "True"}]}  # what a preview assumes
    mounting = mounting_jobs(jobs, cache_name_of(manifest["metadata"]["name"]))
    users = None if hidden else tuple({**job, "status": finished} for job in mounting)
    storage_class = _storage_classes(objects).get(_dig(manifest, "spec", "storageClassName"))
    return replace(live_from_manifest(manifest), consumers=users, storage_class=storage_class)


def live_cache_for(old: dict[str, Any] | None, fresh: dict[str, Any] | None) -> tuple[LiveCache | None, str | None]:
    """The base revision's claim as the live cache of the working tree's settings: (that claim, None)
    when the working tree names the same cache (`fresh`: the working tree rendered with no live
    cache, so its claim is named cache.name; the base's, rendered alike, is named its cache.name),
    else (None, why a move by copy finds nothing to copy from). At up the guard reads the cache by
    the new cache.name in the new namespace: under a new name it finds none, or (a name such as
    foo-g1 becoming foo) a generation of another cache the state does not hold as one."""
    before, after = _cache_claim(old), _cache_claim(fresh)
    if before is None or after is None:
        return base_claim(old), None
    where = [_namespace(obj) for obj in (before, after)]
    names = [obj["manifest"]["metadata"]["name"] for obj in (before, after)]
    if where[0] == where[1] and names[0] == names[1]:
        return base_claim(old), None
    return None, (
        f"cache.relocate copy moves the cache within its name and namespace: this change makes claim "
        f"{where[0]}/{names[0]} into {where[1]}/{names[1]}, so at `pulumi up` the guard finds no cache there to copy "
        "from, and the old claim is replaced, its cached models lost (a protected claim stops the up instead); keep "
        "cache.name and namespace to move by copy"
    )


def explain_another_cache(changes: list[Change], why: str) -> None:
    """Put `live_cache_for`'s reason on the change that deletes or replaces the base's claim."""
    for change in changes:
        if change.action in ("replace", "delete") and change.old and _cache_claim({"objects": [change.old]}):
            change.notes.append(why)
            return


def resolve_revision(ref: str, project_dir: Path) -> str:
    """The commit `ref` names. A revision, never an option: `--base=--output=FILE` must not reach git as one."""
    if not ref or ref.startswith("-"):
        raise UsageError(f"--base {ref!r}: expected a git revision such as origin/main or HEAD~1")
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as err:
        raise UsageError(f"cannot run git to read --base: {err.strerror}") from None
    if found.returncode != 0:
        raise UsageError(f"--base {ref!r}: not a commit in this repository")
    return found.stdout.strip()


def export_revision(ref: str, into: Path, project_dir: Path) -> None:
    commit = resolve_revision(ref, project_dir)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=project_dir, capture_output=True, check=False)
    if archive.returncode != 0:
        raise UsageError(f"cannot read git revision {ref!r}: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")


def _stack_names(directory: Path) -> set[str]:
    return {p.name[len("Pulumi.") : -len(".yaml")] for p in directory.glob("Pulumi.*.yaml")}


def chosen_stacks(requested: list[str] | None, base_dir: Path, project_dir: Path) -> list[str]:
    """The stacks to compare: every stack of either side, or those asked for, each of which must exist on one side."""
    known = _stack_names(project_dir) | _stack_names(base_dir)
    for stack in requested or []:
        try:
            stack_file(stack, project_dir)
        except FileNotFoundError:
            if stack not in known:
                raise UsageError(
                    f"--stack {stack}: no Pulumi.{stack}.yaml in the working tree or the base revision; "
                    f"stacks: {', '.join(sorted(known))}"
                ) from None
        except StackConfigError as err:
            raise UsageError(str(err)) from None
    return sorted(set(requested)) if requested else sorted(known)
