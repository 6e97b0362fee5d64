"""The rehearsal cluster: the real control plane and kwok nodes (scripts/local-cluster), the stack
brought up with the real engine (`pulumi up`), and a watch until the scheduler settles
(the library of `mlcache rehearse` and of the real-engine tests).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from mlcache import CHECKOUT
from mlcache.cluster.bound_cache import get as _get
from mlcache.cluster.bound_cache import node_zone
from mlcache.cluster.diagnosis import expectation_from_outputs
from mlcache.cluster.kube import CAPACITIES, CLAIMS, EVENTS, JOBS, NODES, PODS, STORAGE_CLASSES, VOLUMES, Kube, api_path
from mlcache.preview.stack_config import StackConfig, load_stack_config
from mlcache.program.outputs import StackOutputs
from mlcache.rehearsal.report import (
    ClusterView,
    Report,
    build_report,
    is_placed,
    label,
    latest_verdicts,
    still_moving,
    storage_rechecks,
    volume_state,
)

TOOLCHAIN_CACHE = Path(
    os.environ.get("MLCACHE_ENGINE_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlcache-engine")
)


# The version the pinned pulumi-kubernetes SDK asks the engine for (requirements.txt).
PROVIDER_VERSION = "4.34.2"


# Binary -> the scripts/build-engine step directory it lands in (TOOLCHAIN_CACHE/<step>-<version>/).
TOOLCHAIN = {
    "pulumi": "cli",
    "pulumi-language-python": "langhost",
    "pulumi-language-python-exec": "langhost",
    "pulumi-resource-kubernetes": f"provider-{PROVIDER_VERSION}",
    "etcd": "etcd",
    "kube-apiserver": "apiserver",
    "kube-controller-manager": "apiserver",
    "kube-scheduler": "apiserver",
    "kwok": "kwok",
    "mlcache-provisioner": "provisioner",
}


# What kwok needs beside its binary (scripts/build-engine copies its Stage documents there).
KWOK_STAGES = "stages"


LOCAL_CLUSTER = CHECKOUT / "scripts" / "local-cluster"


# The scheduler re-tries an unschedulable pod within its maximum backoff (kube-scheduler
# --pod-max-backoff-seconds, default 10 s) of a change to the claims or volumes it waits on.
SCHEDULER_MAX_BACKOFF = 10.0


DEFAULT_TIMEOUT = 180.0


# Not copied into the rehearsal's project: environments, the user's stack files (their
# secure values cannot be decrypted here; the layered config is written instead), the rest.
NOT_PROGRAM = (
    "venv*",
    ".git",
    ".github",
    ".ci",
    "tests",
    "docs",
    "engine",
    "__pycache__",
    ".hypothesis",
    ".*_cache",
    "Pulumi.*.yaml",
    "*.pyc",
)


# What scripts/local-cluster start makes before any stack: everything else is a rehearsal's (reset).
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
BASE_STORAGE_CLASSES = frozenset({"rook-ceph-block"})
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _as_made(node: dict[str, Any], made: dict[str, Any]) -> bool:
    """Is the live node still the one the fleet file made (labels, taints, schedulable)?"""
    taints = [t for t in node["spec"].get("taints") or [] if not t["key"].startswith(NOT_READY_TAINTS)]
    return (
        all(
            (node["metadata"].get(field) or {}).get(key) == value
            for field in ("labels", "annotations")
            for key, value in (made["metadata"].get(field) or {}).items()
        )
        and taints == (made.get("spec") or {}).get("taints", [])
        and not node["spec"].get("unschedulable")
        and all((node.get("status") or {}).get(field) == made["status"].get(field) for field in ("capacity", "allocatable"))
    )


def _settled(nodes: list[dict[str, Any]], fleet: dict[str, Any]) -> bool:
    """Every fleet node Ready and rid of the not-ready taints (scripts/local-cluster's nodes_settled)."""
    ready = {
        node["metadata"]["name"]
        for node in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions") or [])
        and not any(t["key"].startswith(NOT_READY_TAINTS) for t in node["spec"].get("taints") or [])
    }
    return set(fleet) <= ready


class SetupError(Exception):
    """The rehearsal could not start (toolchain, cluster, fleet): exit 2 with this one line."""


class UpFailed(Exception):
    """`pulumi up` against the rehearsal cluster failed: the stack would fail the same way."""


Progress = Callable[[str], None]


def stderr_progress() -> Progress:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] rehearse: {message}", file=sys.stderr, flush=True)

    return say


def quiet(_: str) -> None:
    pass


def find_toolchain(cache: Path | None = None, path: str | None = None) -> dict[str, Path]:
    """Each binary from PATH if there, else from the engine cache (its newest build); kwok's
    Stage documents from beside the kwok binary, else from the cache."""
    cache = cache or TOOLCHAIN_CACHE
    found: dict[str, Path] = {}
    for binary, step in TOOLCHAIN.items():
        on_path = shutil.which(binary, path=path)
        builds = sorted(cache.glob(f"{step}-*/{binary}"), key=lambda p: p.stat().st_mtime)
        if on_path or builds:
            found[binary] = Path(on_path) if on_path else builds[-1]
    if "kwok" in found:
        beside = found["kwok"].parent / KWOK_STAGES
        built = sorted(cache.glob(f"kwok-*/{KWOK_STAGES}"), key=lambda p: p.stat().st_mtime)
        if beside.is_dir() or built:
            found[KWOK_STAGES] = beside if beside.is_dir() else built[-1]
    missing = [name for name in [*TOOLCHAIN, KWOK_STAGES] if name not in found]
    if missing:
        raise SetupError(
            f"rehearsal toolchain incomplete (not on PATH, not in {cache}): {', '.join(missing)}; "
            "build it with scripts/build-engine (cached; about 40 min the first time)"
        )
    return found


def link_toolchain(found: dict[str, Path], directory: Path) -> Path:
    """One bin directory with the chosen binaries and kwok's stages: first on PATH for the
    Pulumi CLI, the language host and scripts/local-cluster (which looks on PATH
    first, and for the stages beside kwok)."""
    directory.mkdir(parents=True)
    for name, source in found.items():
        (directory / name).symlink_to(source)
    return directory


def copy_program(destination: Path, project_dir: Path = CHECKOUT) -> Path:
    """The Pulumi program without the user's stack files, with the project's virtualenv."""
    shutil.copytree(project_dir, destination, ignore=shutil.ignore_patterns(*NOT_PROGRAM), symlinks=True)
    venv = project_dir / "venv"
    if not (venv / "bin" / "python").exists():
        raise SetupError(f"no virtualenv at {venv}: run scripts/setup")
    (destination / "venv").symlink_to(venv)
    return destination


def rehearsal_config(config: StackConfig, kubeconfig: Path, context: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(plain values, secret values) for the rehearsal's stack file. The provider is pointed at
    the rehearsal cluster; the user's own `kubernetes:` settings (their real cluster) are dropped."""
    wire = config.engine_config()
    plain = {k: v for k, v in config.values.items() if k not in config.secret_keys and not k.startswith("kubernetes:")}
    plain["kubernetes:kubeconfig"] = str(kubeconfig)
    plain["kubernetes:context"] = context
    return plain, {k: wire[k] for k in config.secret_keys}


@functools.cache
def pulumi_command(bin_dir: Path) -> Any:
    """The Automation API's handle on the CLI in `bin_dir` (stack init and secret config), made once
    per process: making it runs `pulumi version`."""
    from pulumi import automation as auto  # noqa: PLC0415

    return auto.PulumiCommand(root=str(bin_dir.parent), skip_version_check=True)


# Seconds between reads of the engine's event log while `pulumi up` runs.
EVENT_POLL = 0.2
# Seconds an interrupted `pulumi up` gets to cancel and save its state before it is killed.
CANCEL_WAIT = 120


def up_stack(
    work_dir: Path, stack_name: str, env: dict[str, str], bin_dir: Path, progress: Progress = quiet, refresh: bool = False
) -> dict[str, Any]:
    """`pulumi up --yes --skip-preview` of a stack in a project directory (with --refresh: the
    state first refreshed from the cluster), as a user runs it, its engine events followed for
    progress and errors; then the stack outputs (`pulumi stack output --show-secrets`). The one
    path every rehearsal (and every integration test) deploys by.

    The CLI is run directly rather than through the Automation API's `Stack.up`, which runs
    `stack select`, `stack output` twice and `stack history` around every up: about a second of
    CPU per up on a 2-core machine, for nothing the rehearsal reads."""
    pulumi = str(bin_dir / "pulumi")
    environment = {**os.environ, **env}  # the caller's environment, as the Automation API passed it
    errors: list[str] = []

    def on_event(line: str) -> None:
        try:
            event = json.loads(line)
            step = (event.get("resOutputsEvent") or {}).get("metadata") or {}
            if step.get("type", "").startswith("kubernetes:") and step.get("op") not in ("same", "refresh"):
                progress(f"up: {step['op']} {step['type'].split(':')[-1]} {step['urn'].split('::')[-1]}")
            diagnostic = event.get("diagnosticEvent") or {}
            if diagnostic.get("severity") == "error":
                errors.append(diagnostic["message"].strip())
            elif diagnostic.get("severity") == "warning" and diagnostic.get("urn"):
                # A resource's warning (the program's, the provider's), as `pulumi up` shows it; not the
                # CLI's own about the rehearsal's toolchain.
                progress(f"up: warning: {diagnostic['message'].strip()}")
        except (ValueError, AttributeError, KeyError, TypeError):
            pass  # a line the rehearsal cannot read only costs a progress line, never the up

    with tempfile.TemporaryDirectory(prefix="mlcache-up-") as tmp:
        events, output = Path(tmp) / "events.jsonl", Path(tmp) / "output.txt"
        events.touch()
        command = ["up", "--yes", "--skip-preview", "--non-interactive", "--color", "never", "--event-log", str(events)]
        command += ["--refresh"] if refresh else []
        with output.open("w") as sink, events.open(encoding="utf-8") as log:
            # --event-log exists only with the CLI's debug commands on (as the Automation API runs it).
            # A session of its own: a Ctrl-C reaches the CLI once, from here, as one cancel.
            process = subprocess.Popen(
                [pulumi, *command, "--stack", stack_name],
                cwd=work_dir,
                env={**environment, "PULUMI_DEBUG_COMMANDS": "true"},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            pending = ""
            try:
                while True:
                    done = process.poll() is not None
                    pending += log.read()
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        if line.strip():
                            on_event(line)
                    if done:
                        break
                    time.sleep(EVENT_POLL)
            except BaseException:
                # One SIGINT: the CLI cancels the update and saves its state (a second signal
                # would end it at once); killed only if it has not stopped within CANCEL_WAIT.
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=CANCEL_WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise
        if process.returncode != 0:
            lines = [line for line in output.read_text(errors="replace").splitlines() if line.strip()]
            raise UpFailed("\n".join(errors) or "\n".join(lines[-20:]) or f"pulumi up exited {process.returncode}")
    shown = subprocess.run(
        [pulumi, "stack", "output", "--json", "--show-secrets", "--non-interactive", "--stack", stack_name],
        cwd=work_dir,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        raise UpFailed(f"pulumi stack output failed after the up: {shown.stderr.strip()}")
    return json.loads(shown.stdout)


@dataclass
class Rehearsal:
    """A rehearsal cluster and a Pulumi workspace pointed at it. Use as a context manager."""

    fleet: Path | None = None
    # Job pods succeed at once (kwok's pod-complete stage) instead of running on: a benchmark
    # Job finishes in minutes and frees its GPUs for training, which runs for hours.
    complete_jobs: bool = False
    # Only the cache-copy pods (a move's copy, the durable refresh) complete; training keeps running.
    complete_copies: bool = False
    # The JobSet controller, for multi-node stacks with job.engine jobset.
    jobset: bool = False
    keep: bool = False
    progress: Progress = quiet
    # The toolchain is found first: a missing one (SetupError) must not leave an empty work directory behind.
    toolchain: dict[str, Path] = field(default_factory=find_toolchain)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlcache-rehearse-")))

    def __post_init__(self) -> None:
        self.cluster = self.work / "cluster"
        self.kubeconfig = self.cluster / "kubeconfig"
        self.project = self.work / "project"
        self.running = False
        self._api = None
        # The stacks this state backend holds, once known: `pulumi stack ls` is not run before every up.
        self._stacks: set[str] | None = None

    def __enter__(self) -> Rehearsal:
        self.bin_dir = link_toolchain(self.toolchain, self.work / "toolchain" / "bin")
        self.env = {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
            "PULUMI_HOME": str(self.work / "pulumi-home"),
            "PULUMI_BACKEND_URL": f"file://{self.work / 'state'}",
            "PULUMI_CONFIG_PASSPHRASE": secrets.token_hex(16),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            # The locally built provider is found on PATH (bin_dir), as the version the SDK asks for:
            # no download, and no `pulumi plugin install` copying 200 MB into every rehearsal's home.
            "PULUMI_IGNORE_AMBIENT_PLUGINS": "false",
            "KUBECONFIG": str(self.kubeconfig),
            # The provider writes the kubeconfig it is given (a bearer token) to a temp file per up and
            # leaves it: inside the rehearsal's directory, it goes with the directory.
            "TMPDIR": str(self.work / "tmp"),
        }
        (self.work / "state").mkdir()
        (self.work / "tmp").mkdir()
        self.running = True
        try:
            self._start_cluster()
            copy_program(self.project)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_cluster(self) -> None:
        command = [str(LOCAL_CLUSTER), "start", str(self.cluster)]
        if self.fleet:
            command += ["--fleet", str(self.fleet)]
        if self.complete_jobs:
            command.append("--complete-jobs")
        elif self.complete_copies:
            command.append("--complete-copies")
        if self.jobset:
            command.append("--jobset")
        self.progress(f"starting the rehearsal cluster ({f'fleet {self.fleet}' if self.fleet else 'the runbook fleet'})")
        try:
            started = subprocess.run(command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise SetupError(f"the rehearsal cluster did not start within 300 s (logs in {self.cluster})") from None
        if started.returncode != 0:
            lines = (started.stderr or started.stdout).strip().splitlines() or ["no output"]
            raise SetupError(f"the rehearsal cluster did not start: {lines[-1]}")
        count = len(self.core.list_node().items)
        self.progress(f"cluster up: {count} node{'' if count == 1 else 's'}")

    def write_env(self) -> Path:
        """The rehearsal's Pulumi and cluster environment as a shell file (owner-only: it holds the
        state's passphrase), for `mlcache drift` or `heal` against a kept cluster."""
        path = self.work / "env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(self.env.items()))
        return path

    def reset(self, timeout: float = 90.0) -> None:
        """Return the cluster to how `start` left it, for the next rehearsal on the same fleet and
        options: every namespace but the system ones emptied of what stacks and tests make (claims
        released, so the provisioner deletes their volumes and gives their space back; the
        namespaces themselves stay: deleting one took 5 s more per reset here, 10-15 s under
        load), every StorageClass made since deleted, each node a test edited or killed made
        again from the fleet file, and the Pulumi state and program copy empty. Raises SetupError
        when the cluster does not get back within `timeout` s in all (a volume kept by a Retain class, say)."""
        from kubernetes import client  # noqa: PLC0415

        started = time.monotonic()
        deadline = started + timeout
        core, storage = self.core, client.StorageV1Api(self.api)
        for namespace in core.list_namespace().items:
            if namespace.metadata.name not in SYSTEM_NAMESPACES:
                self._empty(namespace.metadata.name)
        fleet = {
            node["metadata"]["name"]: node for node in map(json.loads, (self.cluster / "nodes.jsonl").read_text().splitlines())
        }
        for node in core.list_node().items:
            spec = fleet.get(node.metadata.name)
            if spec is None or not _as_made(self.api.sanitize_for_serialization(node), spec):
                core.delete_node(node.metadata.name)

        def emptied() -> bool:
            jobs = client.BatchV1Api(self.api).list_job_for_all_namespaces().items
            pods = core.list_pod_for_all_namespaces().items
            claims = core.list_persistent_volume_claim_for_all_namespaces().items
            return not [item for item in [*jobs, *pods, *claims] if item.metadata.namespace not in SYSTEM_NAMESPACES]

        self._wait(deadline, "the rehearsals' pods and claims deleted", emptied)
        self._wait(deadline, "every volume deleted by the provisioner", lambda: not core.list_persistent_volume().items)
        for storage_class in storage.list_storage_class().items:
            if storage_class.metadata.name not in BASE_STORAGE_CLASSES:
                storage.delete_storage_class(storage_class.metadata.name)
        live = {node.metadata.name for node in core.list_node().items}
        for name, node in fleet.items():
            if name not in live:
                core.create_node(node)

        def nodes_ready() -> bool:
            return _settled(self.api.sanitize_for_serialization(core.list_node().items), fleet)

        def capacity_withdrawn() -> bool:
            return not storage.list_csi_storage_capacity_for_all_namespaces().items

        self._wait(deadline, "the fleet's nodes Ready", nodes_ready)
        self._wait(deadline, "the capacity of the deleted classes withdrawn", capacity_withdrawn)
        shutil.rmtree(self.work / "state")
        (self.work / "state").mkdir()
        self._stacks = None
        shutil.rmtree(self.project)
        copy_program(self.project)
        self.progress(f"cluster reset in {time.monotonic() - started:.1f} s")

    def _empty(self, namespace: str) -> None:
        """Delete what stacks and tests make in a namespace, with its events (a report would read
        them as the next rehearsal's), keeping what the cluster puts in every namespace."""
        from kubernetes import client  # noqa: PLC0415

        core, batch = self.core, client.BatchV1Api(self.api)
        networking, rbac = client.NetworkingV1Api(self.api), client.RbacAuthorizationV1Api(self.api)
        # JobSets first: their controller would make again the Jobs deleted before them.
        try:
            client.CustomObjectsApi(self.api).delete_collection_namespaced_custom_object(
                "jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:  # no JobSet API on this cluster
                raise
        batch.delete_collection_namespaced_job(namespace, propagation_policy="Background")
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        core.delete_collection_namespaced_persistent_volume_claim(namespace)
        for kind, keep in (("config_map", "kube-root-ca.crt"), ("service", "kubernetes"), ("service_account", "default")):
            for item in getattr(core, f"list_namespaced_{kind}")(namespace).items:
                if item.metadata.name != keep:
                    getattr(core, f"delete_namespaced_{kind}")(item.metadata.name, namespace)
        core.delete_collection_namespaced_secret(namespace)
        networking.delete_collection_namespaced_network_policy(namespace)
        rbac.delete_collection_namespaced_role_binding(namespace)
        rbac.delete_collection_namespaced_role(namespace)
        core.delete_collection_namespaced_event(namespace)

    def _wait(self, deadline: float, what: str, done: Callable[[], bool]) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise SetupError(f"the rehearsal cluster did not reset: {what} not reached in time")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.running:
            subprocess.run([str(LOCAL_CLUSTER), "stop", str(self.cluster)], capture_output=True, timeout=120)
            shutil.rmtree(self.work, ignore_errors=True)
        self.running = False

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            self.stop()

    @property
    def api(self):
        if self._api is None:
            from kubernetes import client, config  # noqa: PLC0415

            configuration = client.Configuration()
            config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
            self._api = client.ApiClient(configuration)
        return self._api

    @property
    def core(self):
        from kubernetes import client  # noqa: PLC0415

        return client.CoreV1Api(self.api)

    def context(self) -> str:
        return yaml.safe_load(self.kubeconfig.read_text())["current-context"]

    def ensure_namespace(self, namespace: str) -> None:
        """The namespace, with the default service account pods need (ServiceAccount
        admission): the serviceaccount controller adds it, watched for here."""
        from kubernetes import client, watch  # noqa: PLC0415

        try:
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        except ApiException as err:
            if err.status != 409:
                raise
        accounts = self.core.list_namespaced_service_account(namespace, field_selector="metadata.name=default")
        if accounts.items:
            return
        stream = watch.Watch().stream(
            self.core.list_namespaced_service_account,
            namespace,
            field_selector="metadata.name=default",
            resource_version=accounts.metadata.resource_version,
            timeout_seconds=60,
        )
        if next(stream, None) is None:
            raise SetupError(f"namespace {namespace} got no default service account within 60 s (serviceaccount controller)")

    def configure(self, stack: str, config: StackConfig) -> None:
        """Create the stack in the rehearsal's backend and write its layered config."""
        from pulumi import automation as auto  # noqa: PLC0415

        workspace = auto.LocalWorkspace(
            work_dir=str(self.project),
            env_vars=self.env,
            pulumi_command=pulumi_command(self.bin_dir),
        )
        if self._stacks is None:
            self._stacks = {s.name for s in workspace.list_stacks()}
        if stack not in self._stacks:
            workspace.create_stack(stack)
            self._stacks.add(stack)
        stack_file = self.project / f"Pulumi.{stack}.yaml"
        settings = yaml.safe_load(stack_file.read_text()) if stack_file.exists() else {}
        plain, secret = rehearsal_config(config, self.kubeconfig, self.context())
        stack_file.write_text(yaml.safe_dump({**(settings or {}), "config": plain}, sort_keys=False))
        for key, value in secret.items():
            workspace.set_config(stack, key, auto.ConfigValue(value=value, secret=True))

    def up(self, stack: str, overrides: Sequence[str] = (), refresh: bool = False) -> dict[str, Any]:
        """The stack's config (Pulumi.yaml < Pulumi.<stack>.yaml < overrides) deployed to the
        rehearsal cluster (`pulumi up --refresh` with `refresh`). Returns the stack outputs."""
        config = load_stack_config(stack, list(overrides))
        namespace = config.values.get("mlcache:namespace")
        if namespace:
            self.ensure_namespace(namespace)
        self.configure(stack, config)
        flags = " --refresh" if refresh else ""
        self.progress(f"pulumi up{flags} --stack {stack} (file backend in {self.work / 'state'})")
        # No secret can be in an error here: secure values never reach the rehearsal (placeholders).
        outputs = up_stack(self.project, stack, self.env, self.bin_dir, self.progress, refresh)
        self.progress("pulumi up done")
        return outputs

    def view(self, namespace: str) -> ClusterView:
        # The API server's JSON as it comes (no typed models): settle reads a view at every change.
        kube = Kube(self.api)
        return ClusterView(
            nodes={n["metadata"]["name"]: n for n in kube.items(NODES)},
            pods=kube.items(PODS),
            claims=kube.items(api_path(CLAIMS, namespace=namespace)),
            volumes={v["metadata"]["name"]: v for v in kube.items(VOLUMES)},
            classes={c["metadata"]["name"]: c for c in kube.items(STORAGE_CLASSES)},
            jobs=kube.items(api_path(JOBS, namespace=namespace)),
            events=kube.items(api_path(EVENTS, namespace=namespace)),
            capacities=kube.items(CAPACITIES),
        )

    def settle(self, namespace: str, jobs: list[str], timeout: float = DEFAULT_TIMEOUT) -> tuple[ClusterView, list[str]]:
        """Watch pods, claims, volumes and events until nothing is moving (mlcache.rehearsal.report.
        still_moving), or until `timeout`: then return what was still moving."""
        changes: queue.Queue[str] = queue.Queue()
        watchers = self._watch(changes, namespace, timeout)
        deadline = time.monotonic() + timeout
        volumes_changed_at, last_volumes = time.monotonic(), None
        verdicts: dict[str, tuple[Any, float]] = {}
        reported: set[str] = set()
        try:
            while True:
                view, now = self.view(namespace), time.monotonic()
                state = volume_state(view)
                if state != last_volumes:
                    volumes_changed_at, last_volumes = now, state
                latest = latest_verdicts(view, namespace)
                for pod, verdict in latest.items():
                    if verdicts.get(pod, (None,))[0] != verdict:
                        verdicts[pod] = (verdict, now)
                recheck_until = volumes_changed_at + SCHEDULER_MAX_BACKOFF
                rechecking = {pod for pod, (_, seen) in verdicts.items() if seen < volumes_changed_at and now < recheck_until}
                recheck_ends = [recheck_until] if rechecking else []
                stale, left = storage_rechecks(view, latest, datetime.now(UTC), SCHEDULER_MAX_BACKOFF)
                if stale:
                    rechecking |= stale
                    recheck_ends.append(now + left)
                moving = still_moving(view, namespace, jobs, rechecking)
                self._tell(view, namespace, moving, reported)
                if not moving:
                    return view, []
                if now >= deadline:
                    return view, moving
                wake = deadline - now
                if recheck_ends:
                    wake = min(wake, *(end - now for end in recheck_ends))
                try:
                    changes.get(timeout=max(wake, 0.01))
                    while not changes.empty():
                        changes.get_nowait()
                except queue.Empty:
                    pass
        finally:
            for watcher in watchers:
                watcher.stop()

    def _watch(self, changes: queue.Queue, namespace: str, timeout: float) -> list[Any]:
        """A thread per watched kind (pods, claims, volumes, events, storage capacity); each change
        wakes the settle loop. The server ends the watches when the wait would end anyway."""
        from kubernetes import client, watch  # noqa: PLC0415

        core = client.CoreV1Api(self.api)
        sources = [
            (core.list_pod_for_all_namespaces, {}),
            (core.list_namespaced_persistent_volume_claim, {"namespace": namespace}),
            (core.list_persistent_volume, {}),
            (core.list_namespaced_event, {"namespace": namespace}),
            (client.StorageV1Api(self.api).list_csi_storage_capacity_for_all_namespaces, {}),
        ]
        watchers = []
        for source, kwargs in sources:
            # Each change only wakes the loop: its object stays JSON instead of becoming a model.
            watcher = watch.Watch(return_type="object")

            def stream(watcher=watcher, source=source, kwargs=kwargs) -> None:
                try:
                    for _ in watcher.stream(source, timeout_seconds=int(timeout) + 1, **kwargs):
                        changes.put(source.__name__)
                except Exception:  # the cluster went away: the main loop reads what is left
                    changes.put("stopped")

            threading.Thread(target=stream, daemon=True).start()
            watchers.append(watcher)
        return watchers

    def _tell(self, view: ClusterView, namespace: str, moving: list[str], reported: set[str]) -> None:
        for pod in view.pods:
            if _get(pod, "metadata", "namespace") == namespace and is_placed(pod) and label(pod) not in reported:
                reported.add(label(pod))
                node = _get(pod, "spec", "nodeName")
                self.progress(f"placed {label(pod)} on {node} (zone {node_zone(view.nodes.get(node))})")
        for item in moving:
            if item not in reported:
                reported.add(item)
                self.progress(f"waiting: {item}")

    def report(self, stack: str, outputs: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Report:
        """Wait for the scheduler to settle, then the placement report of the stack's outputs."""
        read = StackOutputs.read(outputs)
        expect = expectation_from_outputs(outputs, read.namespace)
        jobs = [*read.run.jobs, *read.run.benchmark_jobs]
        started = time.monotonic()
        view, moving = self.settle(expect.namespace, jobs, timeout)
        if moving:
            self.progress(f"gave up after {time.monotonic() - started:.0f} s; still moving: {'; '.join(moving)}")
        else:
            self.progress(f"settled in {time.monotonic() - started:.1f} s")
        return build_report(view, expect, stack, read.benchmark_job, moving)
