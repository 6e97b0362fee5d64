"""Whether `pulumi preview` can dry-run a stack's updates on the API server with the credentials
at hand.

With server-side apply (pulumi-kubernetes 4's default) an update preview sends each object as a
`dryRun=All` apply, so the API server refuses in the preview what it would refuse at `up` (a PVC
shrink, an immutable field). Without the rights to apply, the provider falls back to a plain diff
without a word. The rights an apply needs: get (the live object), patch (the apply) and create
(the apply of an object that does not exist yet), on every kind the stack manages, in its
namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

VERBS = ("get", "create", "patch")
# What the program's bound-cache guard reads before every preview and up (bound_cache.read_live_cache):
# without it both fail, nothing changed. (verb, group, resource, namespaced)
GUARD_READS = (
    ("list", "", "persistentvolumeclaims", True),
    ("list", "batch", "jobs", True),
    ("get", "", "persistentvolumes", False),
    ("list", "", "nodes", False),
    ("get", "storage.k8s.io", "storageclasses", False),
)
REQUEST_TIMEOUT = 10  # seconds per question: an unreachable API server must not stall a CI step


@dataclass(frozen=True, order=True)
class Rights:
    """The rights on one resource type in one namespace (None: cluster-scoped)."""

    group: str
    resource: str
    namespace: str | None
    kind: str


@dataclass(frozen=True)
class Missing:
    rights: Rights
    verbs: tuple[str, ...]

    def line(self) -> str:
        resource = f"{self.rights.resource}.{self.rights.group}" if self.rights.group else self.rights.resource
        where = f" in namespace {self.rights.namespace}" if self.rights.namespace else " (cluster-wide)"
        return f"{', '.join(self.verbs)} {resource}{where}"


class NotServed(Exception):
    """The cluster does not serve a kind the stack needs (a CRD such as JobSet not installed)."""


def needed(objects: Iterable[dict], resource_of: Callable[[str, str], tuple[str, bool]], namespace: str) -> list[Rights]:
    """The resource types and namespaces the stack's objects live in. `resource_of(apiVersion,
    kind)` gives (plural, namespaced) from the cluster's discovery, or raises NotServed."""
    wanted: set[Rights] = set()
    for obj in objects:
        plural, namespaced = resource_of(obj["apiVersion"], obj["kind"])
        group = obj["apiVersion"].rpartition("/")[0]
        where = (obj["metadata"].get("namespace") or namespace) if namespaced else None
        wanted.add(Rights(group, plural, where, obj["kind"]))
    return sorted(wanted)


def missing(wanted: Iterable[Rights], allowed: Callable[[str, Rights], bool]) -> list[Missing]:
    """What `allowed(verb, rights)` (a SelfSubjectAccessReview) denies, per resource type."""
    gaps = []
    for rights in wanted:
        denied = tuple(verb for verb in VERBS if not allowed(verb, rights))
        if denied:
            gaps.append(Missing(rights, denied))
    return gaps


def guard_gaps(namespace: str, allowed: Callable[[str, Rights], bool]) -> list[Missing]:
    """The reads of the bound-cache guard that `allowed` denies."""
    gaps = []
    for verb, group, resource, namespaced in GUARD_READS:
        rights = Rights(group, resource, namespace if namespaced else None, "")
        if not allowed(verb, rights):
            gaps.append(Missing(rights, (verb,)))
    return gaps


def guard_report(stack: str, gaps: list[Missing]) -> str:
    lines = [
        f"stack {stack}: the program's bound-cache guard cannot read the cache's claims and Jobs with these "
        "credentials: pulumi preview and pulumi up then fail before anything is registered. Missing:"
    ]
    return "\n".join(lines + [f"  {gap.line()}" for gap in gaps])


def report(stack: str, wanted: list[Rights], gaps: list[Missing]) -> str:
    kinds = len({rights.kind for rights in wanted})
    if not gaps:
        return (
            f"stack {stack}: pulumi preview can dry-run every update on the API server "
            f"({', '.join(VERBS)} allowed on the {kinds} kinds the stack manages)"
        )
    lines = [
        f"stack {stack}: pulumi preview cannot dry-run on the API server with these credentials: it falls back to a "
        "plain diff, so an update the API server refuses (a PVC shrink, an immutable field) shows only at pulumi up. "
        "Missing:"
    ]
    lines += [f"  {gap.line()}" for gap in gaps]
    return "\n".join(lines)


def check(objects: list[dict], namespace: str, api: object) -> tuple[list[Rights], list[Missing], list[Missing]]:
    """The rights the stack needs, those `api` (a kubernetes ApiClient) lacks, and the guard's
    reads it lacks, asked of the API server itself (discovery, SelfSubjectAccessReview)."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.dynamic import DynamicClient  # noqa: PLC0415
    from kubernetes.dynamic.exceptions import ResourceNotFoundError  # noqa: PLC0415

    discovery = DynamicClient(api)

    def resource_of(api_version: str, kind: str) -> tuple[str, bool]:
        try:
            resource = discovery.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise NotServed(f"the cluster does not serve {kind} ({api_version}): install it before pulumi up") from None
        return resource.name, bool(resource.namespaced)

    reviews = client.AuthorizationV1Api(api)

    def allowed(verb: str, rights: Rights) -> bool:
        attributes = client.V1ResourceAttributes(
            verb=verb, group=rights.group, resource=rights.resource, namespace=rights.namespace
        )
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
        return bool(reviews.create_self_subject_access_review(review, _request_timeout=REQUEST_TIMEOUT).status.allowed)

    wanted = needed(objects, resource_of, namespace)
    return wanted, missing(wanted, allowed), guard_gaps(namespace, allowed)
