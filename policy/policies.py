"""CrossGuard policies for mlcache stacks.

The pack runs in its own directory and virtualenv (`pulumi preview --policy-pack policy`), so
it cannot import the program's modules: the few constants it shares with them are repeated
here. Every validate function is plain Python over the engine's view of the resources, so the
tests call them directly with resources rendered from the real stacks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PVC = "kubernetes:core/v1:PersistentVolumeClaim"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
LINSTOR_PROVISIONER = "linstor.csi.linbit.com"
LINSTOR_PARAMETER = "linstor.csi.linbit.com/"
ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# A move's copy pods (mlcache/program/components/cache_copy.py). Those pinned by hostname run beside a node-local
# volume, on the node its PV names: pinned more narrowly than any zone, so not judged by zone.
COPY_COMPONENT_LABEL = {"app.kubernetes.io/component": "cache-copy"}
# A claim named <cache>-durable is the cache's durable copy (cache.durableCopy): node loss restores from it.
DURABLE_CLAIM_SUFFIX = "-durable"
# Set on the cache PVC by mlcache/program/components/cache_volume.py.
BACKEND_ANNOTATION = "mlcache/backend"
ZONE_ANNOTATION = "mlcache/zone"
# The placement the cache was created for (mlcache/cluster/bound_cache.py): the engine keeps its old value
# (ignore_changes) unless cache.relocate re-creates the claim, so here it is the storage side.
PLACEMENT_ANNOTATION = "mlcache/placement"

# Where each workload kind keeps its pod template (a Pod is its own).
POD_TEMPLATE_PATHS = {
    "kubernetes:core/v1:Pod": (),
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
}
# A JobSet (multi-node engine jobset) holds one Job template per replicated job.
JOBSET = "kubernetes:jobset.x-k8s.io/v1alpha2:JobSet"
# Set on every pod of a multi-node run by mlcache/program/components/workers.py.
MULTINODE_RUN_LABEL = "mlcache/multinode-run"
WORKER_LABEL = "mlcache/worker"
GPU_RESOURCE = re.compile(r"^(nvidia\.com/|amd\.com/gpu|gpu\.intel\.com/)")
TOKEN_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIAL)", re.IGNORECASE)
TOKEN_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ms-[0-9a-f-]{20,})$")


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):  # the engine hands props over as read-only Mapping proxies
            return None
        value = value.get(key)
    return value


def pod_templates(resource_type: str, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every pod template of a workload: one, or one per replicated job of a JobSet."""
    if resource_type == JOBSET:
        found = [_get(job, "template", "spec", "template") for job in _get(props, "spec", "replicatedJobs") or []]
    elif resource_type in POD_TEMPLATE_PATHS:
        found = [_get(props, *POD_TEMPLATE_PATHS[resource_type])]
    else:
        found = []
    return [t for t in found if isinstance(t, Mapping)]


def pod_specs(resource_type: str, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [spec for t in pod_templates(resource_type, props) if isinstance(spec := t.get("spec"), Mapping)]


def beside_a_volume(template: Mapping[str, Any]) -> bool:
    """A copy pod pinned to the node(s) of the volume it reads."""
    labels = _get(template, "metadata", "labels") or {}
    copy = all(labels.get(key) == value for key, value in COPY_COMPONENT_LABEL.items())
    return copy and bool(pinned_values(template.get("spec") or {}, HOSTNAME_LABEL))


def placed_pod_specs(resource_type: str, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod specs placed by zone and GPU product: all but the copy pods pinned beside a volume."""
    templates = pod_templates(resource_type, props)
    return [spec for t in templates if not beside_a_volume(t) and isinstance(spec := t.get("spec"), Mapping)]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for field in ("initContainers", "containers"):
        yield from spec.get(field) or []


def pinned_values(spec: dict[str, Any], label: str) -> set[str]:
    """Values of `label` a pod is restricted to by required node affinity or nodeSelector (empty: any)."""
    values: set[str] = set()
    selector = spec.get("nodeSelector") or {}
    if label in selector:
        values.add(selector[label])
    terms = _get(spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
    for term in terms or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == label and expression.get("operator") == "In":
                values.update(expression.get("values") or [])
    return values


def pinned_zones(spec: dict[str, Any]) -> set[str]:
    """Zones a pod is restricted to by required node affinity or nodeSelector (empty: any)."""
    return pinned_values(spec, ZONE_LABEL)


def recorded_placement(text: str | None) -> dict[str, str | None] | None:
    """`zone=ucsd gpuProduct=X` (zone=* when created unpinned) as {"zone", "gpuProduct"}; None if absent."""
    fields = dict(part.partition("=")[::2] for part in (text or "").split())
    if "zone" not in fields or "gpuProduct" not in fields:
        return None
    return {"zone": None if fields["zone"] == "*" else fields["zone"], "gpuProduct": fields["gpuProduct"]}


def is_pinned_image(image: str) -> bool:
    """An explicit tag other than latest, or a digest (same rule as settings.py's job.image)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def _name(props: dict[str, Any]) -> str | None:
    return _get(props, "metadata", "name")


def _named(props: dict[str, Any]) -> str:
    """An object's name for a message: a preview offline sees no name in metadata a secret hides."""
    return _name(props) or "(its metadata is secret)"


def _annotations(props: dict[str, Any]) -> dict[str, str]:
    return _get(props, "metadata", "annotations") or {}


def _storage_classes(args: StackValidationArgs) -> dict[str, Any]:
    return {_name(r.props): r for r in args.resources if r.resource_type == STORAGE_CLASS}


def _pvcs(args: StackValidationArgs) -> list[Any]:
    return [r for r in args.resources if r.resource_type == PVC]


def validate_linstor_cache_binding(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    classes = _storage_classes(args)
    for pvc in _pvcs(args):
        storage_class = classes.get(_get(pvc.props, "spec", "storageClassName"))
        on_linstor = _annotations(pvc.props).get(BACKEND_ANNOTATION) == "linstor" or (
            storage_class is not None and storage_class.props.get("provisioner") == LINSTOR_PROVISIONER
        )
        if not on_linstor or storage_class is None:
            continue  # a class this stack does not manage cannot be inspected here
        props = storage_class.props
        problems = []
        if props.get("volumeBindingMode") != "WaitForFirstConsumer":
            problems.append(f"volumeBindingMode is {props.get('volumeBindingMode')!r}, not WaitForFirstConsumer")
        remote = (props.get("parameters") or {}).get(LINSTOR_PARAMETER + "allowRemoteVolumeAccess")
        if remote != "false":
            problems.append(f"allowRemoteVolumeAccess is {remote!r}, not 'false'")
        if problems:
            report_violation(
                f"cache PVC {_named(pvc.props)} uses LINSTOR class {_named(props)} that does not bind zone-locally: "
                + "; ".join(problems)
                + ". The volume would not follow the training pod, so shard reads cross nodes or zones.",
                pvc.urn,
            )


def validate_zone_matches_storage(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    zone_of_claim = {_name(p.props): _annotations(p.props).get(ZONE_ANNOTATION) for p in _pvcs(args)}
    for resource in args.resources:
        for spec in placed_pod_specs(resource.resource_type, resource.props):
            _check_zone_matches_storage(resource, spec, zone_of_claim, report_violation)


def _check_zone_matches_storage(resource: Any, spec: Mapping[str, Any], zone_of_claim: dict, report_violation) -> None:
    for volume in spec.get("volumes") or []:
        claim = _get(volume, "persistentVolumeClaim", "claimName")
        storage_zone = zone_of_claim.get(claim)
        if not storage_zone:
            continue
        zones = pinned_zones(spec)
        if zones != {storage_zone}:
            shown = ", ".join(sorted(zones)) or "no zone"
            report_violation(
                f"{_named(resource.props)} mounts cache {claim}, whose storage settings pin zone {storage_zone}, "
                f"but the pod is pinned to {shown}: it would wait forever or strand the volume in another zone.",
                resource.urn,
            )


def validate_cache_not_stranded(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """A pod must not move away from the placement its LINSTOR cache was created for.

    Both sides are visible only when the claim carries its placement record: a claim created
    before the record existed, or created unpinned (for the zone), is not judged here (the
    program's bound-cache guard judges it against the live volume)."""
    records = {}
    for pvc in _pvcs(args):
        annotations = _annotations(pvc.props)
        record = recorded_placement(annotations.get(PLACEMENT_ANNOTATION))
        if record is not None and annotations.get(BACKEND_ANNOTATION, "linstor") == "linstor":
            records[_name(pvc.props)] = record
    for resource in args.resources:
        for spec in placed_pod_specs(resource.resource_type, resource.props):
            for volume in spec.get("volumes") or []:
                claim = _get(volume, "persistentVolumeClaim", "claimName")
                record = records.get(claim)
                if record is None:
                    continue
                zones, products = pinned_zones(spec), pinned_values(spec, GPU_PRODUCT_LABEL)
                moved = []
                if record["zone"] and zones != {record["zone"]}:
                    moved.append(f"zone {', '.join(sorted(zones)) or 'any'} instead of {record['zone']}")
                if products != {record["gpuProduct"]}:
                    moved.append(f"GPU product {', '.join(sorted(products)) or 'any'} instead of {record['gpuProduct']}")
                if moved:
                    report_violation(
                        f"STRANDS THE CACHE: {_named(resource.props)} mounts cache {claim}, created for "
                        f"{annotations_text(record)}, but its pods are placed by {'; '.join(moved)}: the volume stays "
                        "pinned where it was bound and the pod would never be placed. Put the placement back, or set "
                        "cache.relocate copy in the same change to move the cache there with its contents.",
                        resource.urn,
                    )


def annotations_text(record: dict[str, str | None]) -> str:
    return f"zone {record['zone'] or 'any'}, GPU product {record['gpuProduct']}"


def validate_images_pinned(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for container in (c for spec in pod_specs(args.resource_type, args.props) for c in containers(spec)):
        image = container.get("image") or ""
        if not is_pinned_image(image):
            report_violation(
                f"container {container.get('name')} uses image {image!r}: give an explicit tag other than latest, or a digest."
            )


def validate_gpu_requests_equal_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for container in (c for spec in pod_specs(args.resource_type, args.props) for c in containers(spec)):
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for name in sorted(n for n in {*requests, *limits} if GPU_RESOURCE.match(n)):
            if str(requests.get(name)) != str(limits.get(name)):
                report_violation(
                    f"container {container.get('name')} requests {requests.get(name)} and limits {limits.get(name)} "
                    f"of {name}: GPU requests must equal limits."
                )


def validate_no_plaintext_tokens(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for container in (c for spec in pod_specs(args.resource_type, args.props) for c in containers(spec)):
        for env in container.get("env") or []:
            value = env.get("value")
            if not isinstance(value, str) or not value:
                continue
            if TOKEN_NAME.search(env.get("name", "")) or TOKEN_VALUE.match(value):
                report_violation(
                    f"container {container.get('name')} sets {env.get('name')} to a plain-text value that looks like a "
                    "credential: keep it in a Secret and use valueFrom.secretKeyRef (mlcache does this for "
                    "`pulumi config set --secret --path mlcache:secretEnv.NAME VALUE`, and for mlcache:hfToken and "
                    "mlcache:modelscopeToken)."
                )


def validate_protected_cache_replicas(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    classes = _storage_classes(args)
    names = {_name(pvc.props) for pvc in _pvcs(args)}
    for pvc in _pvcs(args):
        storage_class = classes.get(_get(pvc.props, "spec", "storageClassName"))
        if not pvc.opts.protect or storage_class is None or f"{_name(pvc.props)}{DURABLE_CLAIM_SUFFIX}" in names:
            continue
        replicas = (storage_class.props.get("parameters") or {}).get(LINSTOR_PARAMETER + "placementCount", "1")
        if replicas == "1":
            report_violation(
                f"protected cache {_named(pvc.props)} has a single LINSTOR replica: losing its node loses the cache "
                "(the runbook's speed-over-HA trade-off; the next run re-downloads). Set cache.durableCopy true "
                "(a replicated copy to restore from), or linstor.replicas to 2 with a drbd layer, if a re-download "
                "is too costly.",
                pvc.urn,
            )


def _run_workers(args: StackValidationArgs) -> dict[str, list[tuple[str, Mapping[str, Any], Any]]]:
    """Pod templates of each multi-node run: run -> [(worker index, pod spec, resource)]."""
    runs: dict[str, list[tuple[str, Mapping[str, Any], Any]]] = {}
    for resource in args.resources:
        for template in pod_templates(resource.resource_type, resource.props):
            labels = _get(template, "metadata", "labels") or {}
            if MULTINODE_RUN_LABEL in labels and WORKER_LABEL in labels and isinstance(template.get("spec"), Mapping):
                runs.setdefault(labels[MULTINODE_RUN_LABEL], []).append((labels[WORKER_LABEL], template["spec"], resource))
    return runs


def _has_zone_pod_affinity(spec: Mapping[str, Any], run: str) -> bool:
    terms = _get(spec, "affinity", "podAffinity", "requiredDuringSchedulingIgnoredDuringExecution") or []
    return any(
        t.get("topologyKey") == ZONE_LABEL and (_get(t, "labelSelector", "matchLabels") or {}).get(MULTINODE_RUN_LABEL) == run
        for t in terms
    )


def validate_workers_in_one_zone(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Every pod of a multi-node run is held in one zone: all pinned to the same single zone, or
    all tied together by a required pod affinity on the zone label (NCCL across zones is slow)."""
    for run, workers in sorted(_run_workers(args).items()):
        zones = {frozenset(pinned_zones(spec)) for _, spec, _ in workers}
        loose = sorted({w for w, spec, _ in workers if not _has_zone_pod_affinity(spec, run)})
        if (len(zones) == 1 and len(next(iter(zones))) == 1) or not loose:
            continue
        shown = "; ".join(sorted(", ".join(sorted(z)) or "any zone" for z in zones))
        report_violation(
            f"the workers of run {run} are not held in one zone: pinned to {shown}, and workers {', '.join(loose)} "
            f"carry no required pod affinity on {ZONE_LABEL} to the run's pods ({MULTINODE_RUN_LABEL}={run}). NCCL across "
            "zones is slow and costly, and each worker's cache binds where the worker lands.",
            workers[0][2].urn,
        )


def validate_one_claim_per_worker(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Each worker of a multi-node run mounts exactly one claim, and no other worker mounts it
    (a single-replica volume is reachable from one node only)."""
    for run, workers in sorted(_run_workers(args).items()):
        owner: dict[str, str] = {}
        for worker, spec, resource in workers:
            claims = [c for v in spec.get("volumes") or [] if (c := _get(v, "persistentVolumeClaim", "claimName"))]
            if len(claims) != 1:
                report_violation(f"worker {worker} of run {run} mounts {len(claims)} claims, not one: {claims}", resource.urn)
                continue
            if owner.setdefault(claims[0], worker) != worker:
                report_violation(
                    f"workers {owner[claims[0]]} and {worker} of run {run} both mount claim {claims[0]}: each worker "
                    "needs its own cache, reachable from its node only.",
                    resource.urn,
                )


def _resource_policy(name: str, description: str, validate: Callable) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES = [
    StackValidationPolicy(
        name="linstor-cache-binds-locally",
        description="A cache PVC on the LINSTOR backend uses a WaitForFirstConsumer class with remote access off.",
        validate=validate_linstor_cache_binding,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="cache-consumers-pin-the-storage-zone",
        description="A pod that mounts the cache is pinned to the zone of the storage settings.",
        validate=validate_zone_matches_storage,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="cache-not-stranded",
        description="A pod that mounts a LINSTOR cache stays within the placement the cache was created for.",
        validate=validate_cache_not_stranded,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    _resource_policy("images-pinned", "Container images carry an explicit tag (not latest) or a digest.", validate_images_pinned),
    _resource_policy("gpu-requests-equal-limits", "GPU requests equal GPU limits.", validate_gpu_requests_equal_limits),
    _resource_policy(
        "no-plaintext-tokens", "No plain-text env value that looks like a token or password.", validate_no_plaintext_tokens
    ),
    StackValidationPolicy(
        name="multinode-workers-one-zone",
        description="Every worker of a multi-node run is held in one zone.",
        validate=validate_workers_in_one_zone,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="multinode-one-claim-per-worker",
        description="Each worker of a multi-node run mounts its own cache claim.",
        validate=validate_one_claim_per_worker,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="protected-cache-single-replica",
        description="A protected (prod) cache with a single LINSTOR replica has no HA.",
        validate=validate_protected_cache_replicas,
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
]
