"""Reading a stack's objects from the live cluster (your kubeconfig, mlcache.cluster.kube):
the snapshot `diagnosis` judges, the claim a move left training on, and the errors of a cluster
that cannot be read (Unreachable, exit 3).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from mlcache.cluster.bound_cache import (
    ProviderSettings,
    cache_generations,
    context_names,
    job_ended,
    mounted_claims,
    provider_client,
)
from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.diagnosis import DurableState, Expectation, Finding, Snapshot, diagnose, durable_finding, follow_move
from mlcache.cluster.kube import CLAIM, CLAIMS, EVENTS, JOB, NAMESPACED_PODS, NODES, POD_LOG, PODS, VOLUME, Kube, api_path
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

if TYPE_CHECKING:
    from mlcache.preview.stack_config import StackConfig

# Seconds per API request: an unreachable server fails the tool instead of hanging it.
REQUEST_TIMEOUT = 15


def read_snapshot(expect: Expectation, kube: Kube) -> Snapshot:
    """The live objects the diagnosis judges."""
    pvc = kube.optional(api_path(CLAIM, namespace=expect.namespace, name=expect.pvc))
    if pvc is None:
        return Snapshot(pvc=None)
    volume = _get(pvc, "spec", "volumeName")
    pv = kube.get(api_path(VOLUME, name=volume)) if volume else None
    pods = []
    pods_here = api_path(NAMESPACED_PODS, namespace=expect.namespace)
    if expect.run:
        worker = expect.run.claims.index(expect.pvc)
        pods = kube.items(pods_here, labelSelector=f"{RUN_LABEL}={expect.run.name},{WORKER_LABEL}={worker}")
    elif expect.job:
        pods = kube.items(pods_here, labelSelector=f"job-name={expect.job}")
    nodes = {n["metadata"]["name"]: n for n in kube.items(NODES)}
    bound = kube.items(PODS, fieldSelector="spec.nodeName!=")
    events = kube.items(api_path(EVENTS, namespace=expect.namespace))
    return Snapshot(pvc=pvc, pv=pv, pods=pods, nodes=nodes, bound_pods=bound, events=events)


Expected = TypeVar("Expected")


def stack_provider(config: StackConfig, context: str | None) -> ProviderSettings:
    """The connection the stack's provider uses (its kubernetes:* config), `context` (--context)
    over the stack's own. A secret setting is a placeholder offline: not used, and said."""

    def setting(name: str) -> str | None:
        if f"kubernetes:{name}" in config.secret_keys:
            print(f"note: kubernetes:{name} is a secret, unreadable offline: using KUBECONFIG's instead", file=sys.stderr)
            return None
        return config.values.get(f"kubernetes:{name}")

    provider = ProviderSettings.from_config(setting)
    # A context chosen on the command line is the whole choice: its cluster too.
    return replace(provider, context=context, cluster=None) if context else provider


def hidden_connection(config: StackConfig) -> list[str]:
    """The stack's connection settings that are secret, so unreadable offline: the cluster they
    name is not known here."""
    return [f"kubernetes:{name}" for name in ("kubeconfig", "context", "cluster") if f"kubernetes:{name}" in config.secret_keys]


def connect(expect_for: Callable[[str], Expected], provider: ProviderSettings, flag: str | None) -> tuple[Expected, Kube]:
    """The stack's expectation (`expect_for(namespace)`, config checked first, offline) and a reader
    connected as the stack's provider connects; a kubeconfig that cannot be used as Unreachable, an
    unknown --context (`flag`) as UsageError."""
    try:
        names = context_names(provider, os.environ)
    except Exception as err:  # no kubeconfig, or one the client cannot parse (its errors are of many types)
        raise Unreachable(f"no usable kubeconfig ({type(err).__name__}: {err})") from None
    if flag is not None and flag not in names:
        raise UsageError(f"--context {flag!r} is not in the kubeconfig; contexts: {', '.join(sorted(names)) or 'none'}")
    try:
        api, namespace = provider_client(provider, os.environ)
    except Exception as err:  # a context whose cluster, user or certificate files cannot be loaded
        which = f"context {provider.context}" if provider.context else "the current context"
        raise Unreachable(f"cannot load {which} from the kubeconfig ({type(err).__name__}: {err})") from None
    return expect_for(namespace), Kube(api, REQUEST_TIMEOUT)


@contextmanager
def cluster_errors(kube: Kube) -> Iterator[None]:
    """The API server's refusals and the network's failures, as Unreachable (exit 3), naming the
    server they came from (a kubeconfig pointing at another cluster than meant shows here)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    server = f"the API server at {kube.api.configuration.host}"
    try:
        yield
    except ApiException as err:
        raise Unreachable(f"{server} answered {err.status} {err.reason}") from None
    except (OSError, HTTPError) as err:
        # urllib3 wraps the cause (a refused connection, a timeout) in a retry error naming the URL;
        # the cause's own words are its last argument, after the connection object.
        cause = getattr(err, "reason", None) or err
        args = getattr(cause, "args", ())
        words = args[-1] if args and isinstance(args[-1], str) else str(cause)
        raise Unreachable(f"{server} cannot be reached: {_OBJECT_AT.sub('', words)}") from None


# What urllib3 puts before a connection error's own words: the connection object, as
# "<urllib3.connection.HTTPSConnection object at 0x7f...>: " or "HTTPSConnection(host='h', port=1): ".
_OBJECT_AT = re.compile(r"^(<[^<>]* object at 0x[0-9a-f]+>|\w+\(host=[^()]*\)): ")


def read_cluster(expect_for, provider: ProviderSettings, flag: str | None) -> tuple[Expectation, list[Finding], str]:
    """The stack's expectation, the findings on the live objects and the API server read (so that a
    kubeconfig pointing at another cluster than meant shows); errors as in `connect`."""
    expect, kube = connect(expect_for, provider, flag)
    server = kube.api.configuration.host
    with cluster_errors(kube):
        if expect.run is None:
            # After a move the cache is a later generation of the claim: check the one training mounts.
            expect, moving, _ = read_move(expect, kube)
            findings = moving + verify(expect, kube)
            if expect.durable is not None:
                state = read_durable(expect.durable.claim, expect.durable.refresh_job, expect.namespace, kube)
                findings.append(durable_finding(state, expect.durable.refresh_job, expect.namespace))
            return expect, findings, server
        return expect, verify(expect, kube), server


def read_durable(claim: str, refresh_job: str, namespace: str, kube: Kube) -> DurableState:
    """The durable copy's claim and its refresh Job's state, read live."""
    found = kube.optional(api_path(CLAIM, namespace=namespace, name=claim))
    job = kube.optional(api_path(JOB, namespace=namespace, name=refresh_job))
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


def read_move(expect: Expectation, kube: Kube) -> tuple[Expectation, list[Finding], tuple[int, ...]]:
    """follow_move on the live claims, the copy Job, the training Job and the copy pod's last progress
    line; and the generations of the cache's live claims, oldest first (what heal plans with)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    claims = kube.items(api_path(CLAIMS, namespace=expect.namespace))
    base = cache_name_of(expect.pvc)
    generations = cache_generations(base, claims)
    numbers = tuple(number for number, _ in generations)
    if len(generations) < 2:
        return (*follow_move(expect, claims, None, None, None), numbers)
    job_name = copy_name(base, generations[-1][0])

    def job(name: str | None) -> dict | None:
        return kube.optional(api_path(JOB, namespace=expect.namespace, name=name)) if name else None

    mounted = next(iter(mounted_claims(job(expect.job))), None)
    progress = None
    selector = f"{COPY_LABEL}={job_name},{COPY_ROLE_LABEL} in (receiver,local)"
    for pod in kube.items(api_path(NAMESPACED_PODS, namespace=expect.namespace), labelSelector=selector):
        try:
            log = kube.text(api_path(POD_LOG, namespace=expect.namespace, name=pod["metadata"]["name"]), tailLines="20")
        except ApiException:
            continue  # not started yet, or no log kept (a kwok node runs nothing)
        lines = [line.removeprefix(COPY_PROGRESS_PREFIX) for line in log.splitlines() if line.startswith(COPY_PROGRESS_PREFIX)]
        progress = lines[-1] if lines else progress
    return (*follow_move(expect, claims, job(job_name), mounted, progress), numbers)


def verify(expect: Expectation, kube: Kube) -> list[Finding]:
    """Every finding for the stack: its cache and training pod, or each worker's and the run's."""
    if expect.run is None:
        return diagnose(read_snapshot(expect, kube), expect)
    snapshots = [read_snapshot(replace(expect, pvc=claim), kube) for claim in expect.run.claims]
    pods = kube.items(PODS)
    findings, _ = diagnose_workers(expect, snapshots, snapshots[0].nodes, pods)
    return findings
