"""Reading a stack's objects from the live cluster with the kubernetes client (your kubeconfig):
the snapshot `diagnosis` judges, the claim a move left training on, and the errors of a cluster
that cannot be read (Unreachable, exit 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from mlcache.cluster.bound_cache import (
    cache_generations,
    job_ended,
    mounted_claims,
)
from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.diagnosis import DurableState, Expectation, Finding, Snapshot, diagnose, durable_finding, follow_move
from mlcache.cluster.workers import diagnose_workers
from mlcache.errors import Unreachable, UsageError
from mlcache.program.names import (
    COPY_LABEL,
    COPY_ROLE_LABEL,
    RUN_LABEL,
    WORKER_LABEL,
    cache_name_of,
    copy_name,
)

# Seconds per API request: an unreachable server fails the tool instead of hanging it.
REQUEST_TIMEOUT = 15


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


Expected = TypeVar("Expected")


def connect(expect_for: Callable[[str], Expected], context: str | None) -> tuple[Expected, Any, Any]:
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
            findings = moving + verify(expect, core, serialize)
            if expect.durable is not None:
                state = read_durable(expect.durable.claim, expect.durable.refresh_job, expect.namespace, core, serialize)
                findings.append(durable_finding(state, expect.durable.refresh_job, expect.namespace))
            return expect, findings
        return expect, verify(expect, core, serialize)


def read_durable(claim: str, refresh_job: str, namespace: str, core: Any, serialize: Any) -> DurableState:
    """The durable copy's claim and its refresh Job's state, read live."""
    from kubernetes.client import BatchV1Api  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    def optional(read: Any, name: str) -> Any:
        try:
            return serialize(read(name, namespace, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    found = optional(core.read_namespaced_persistent_volume_claim, claim)
    job = optional(BatchV1Api(core.api_client).read_namespaced_job, refresh_job)
    refresh = (
        "absent"
        if job is None
        else "complete"
        if job_ended(job, "Complete")
        else "failed"
        if job_ended(job, "Failed")
        else "running"
    )
    refreshed = (_get(job, "status", "completionTime") or "at an unrecorded time") if refresh == "complete" else None
    return DurableState(claim=claim, bound=_get(found, "status", "phase") == "Bound", refresh=refresh, refreshed=refreshed)


# The last progress line of the copy (workloads/cache_copy.py prints them on stderr).
COPY_PROGRESS_PREFIX = "cache_copy: "


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
