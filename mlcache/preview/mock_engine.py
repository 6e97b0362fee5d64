"""Run `__main__.py` under the Pulumi SDK's mock engine and capture what it asks the engine for.

The capture is the full RegisterResource request: inputs exactly as serialised for the
provider, plus the options that manifests cannot show (protect, depends_on, property
dependencies, delete_before_replace, replace_on_changes, import ids, custom timeouts).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import runpy
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pulumi
from pulumi.runtime import mocks, rpc
from pulumi.runtime import resource as runtime_resource
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.proto import source_pb2
from pulumi.runtime.stack import Stack, run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from mlcache import CHECKOUT
from mlcache.program.names import PROJECT, PROVIDER_NAMESPACE

# Kinds the provider defaults into the kubeconfig's namespace when metadata.namespace is unset.
CLUSTER_SCOPED_KINDS = {"StorageClass", "Namespace", "PersistentVolume", "PriorityClass"}
DEFAULT_NAMESPACE = "default"


@dataclass
class Registration:
    """One RegisterResource request, as the engine would receive it."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    # The inputs as serialised: what the engine keeps secret (state, previews) still in its envelope.
    wire: dict[str, Any]
    protect: bool
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]
    retain_on_delete: bool
    import_id: str
    custom_timeouts: dict[str, str]
    # The engine's ID of the resource: plain text in state, whatever was secret in its inputs.
    id: str

    @property
    def kind(self) -> str:
        return self.inputs.get("kind", "")

    @property
    def object_name(self) -> str:
        return self.inputs.get("metadata", {}).get("name", "")

    @property
    def is_kubernetes_object(self) -> bool:
        return self.custom and self.type.startswith("kubernetes:")

    def shown(self, secret_as: Any, without: Sequence[list[str]] = ()) -> dict[str, Any]:
        """The inputs with every value the engine received as a secret replaced by `secret_as`;
        `without`: property paths (as their keys) left out, inside secret values too."""
        wire = self.wire
        if without:
            wire = copy.deepcopy(wire)
            for parts in without:
                _drop(wire, parts)
        return _plain(wire, secret_as)

    @property
    def shown_name(self) -> str:
        """The object's name where it may be printed: the resource's own name when the name is secret."""
        metadata = self.wire.get("metadata") or {}
        secret = is_secret_envelope(metadata) or is_secret_envelope(metadata.get("name"))
        return self.name if secret else self.object_name


@dataclass
class ProgramRun:
    registrations: list[Registration] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # pulumi.log.info messages (the bound-cache guard says here that it stood aside).
    notes: list[str] = field(default_factory=list)

    def kubernetes_objects(self) -> list[Registration]:
        return [r for r in self.registrations if r.is_kubernetes_object]

    def find(self, kind: str) -> list[Registration]:
        return [r for r in self.kubernetes_objects() if r.kind == kind]


class _Provider(mocks.Mocks):
    """Answers like the Kubernetes provider would on create: the object comes back as sent."""

    def new_resource(self, args: mocks.MockResourceArgs):
        state = dict(args.inputs)
        sent = state.get("metadata") or {}
        # Metadata the SDK keeps secret (a secret key flows into an annotation) arrives wrapped: the
        # provider fills its namespace in all the same, and it stays secret.
        secret = is_secret_envelope(sent)
        metadata = dict(sent["value"] if secret else sent)
        if args.typ.startswith("kubernetes:") and state.get("kind") not in CLUSTER_SCOPED_KINDS:
            # The provider's default: its `namespace` setting, else (as with no kubeconfig namespace) default.
            metadata.setdefault("namespace", pulumi.runtime.get_config(PROVIDER_NAMESPACE) or DEFAULT_NAMESPACE)
        if args.typ.startswith("kubernetes:") and metadata:
            # The API server gives every object a UID at up; a render says so where one is used.
            metadata.setdefault(
                "uid", f"(uid of {metadata.get('namespace') or 'cluster'}/{metadata.get('name', args.name)} at up)"
            )
        if metadata:
            state["metadata"] = {**sent, "value": metadata} if secret else metadata
        # An ID is never secret: the provider's is namespace/name, also of secret metadata.
        name = metadata.get("name", args.name)
        object_id = f"{metadata['namespace']}/{name}" if "namespace" in metadata else name
        return args.resource_id or object_id, state

    def call(self, args: mocks.MockCallArgs):
        return {}, None


class _CapturingMonitor(mocks.MockMonitor):
    def __init__(self, run: ProgramRun):
        super().__init__(_Provider())
        self.run = run

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.run.registrations.append(_registration(request, response.urn, response.id))
        return response


_P = ParamSpec("_P")
_T = TypeVar("_T")


class _InlineExecutor(ThreadPoolExecutor):
    """Runs each of the SDK's engine calls at once, in the calling thread. The SDK hands every
    call to the loop's executor so that a slow gRPC round trip does not block the program; the
    mock engine answers in microseconds, and the thread hand-offs cost more than the calls
    (a render: 34 ms of CPU with the default executor, 24.5 ms with this one)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:
            future.set_exception(err)
        return future


def _registration(request, urn: str, resource_id: str) -> Registration:
    timeouts = request.customTimeouts
    wire = rpc.deserialize_properties(request.object)
    return Registration(
        type=request.type,
        name=request.name,
        urn=urn,
        parent=request.parent,
        custom=request.custom,
        inputs=_plain(wire),
        wire=wire,
        protect=request.protect,
        dependencies=list(request.dependencies),
        property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
        delete_before_replace=request.deleteBeforeReplace,
        replace_on_changes=list(request.replaceOnChanges),
        ignore_changes=list(request.ignoreChanges),
        retain_on_delete=request.retainOnDelete,
        import_id=request.importId,
        custom_timeouts={
            k: v for k, v in (("create", timeouts.create), ("update", timeouts.update), ("delete", timeouts.delete)) if v
        },
        id=resource_id,
    )


def _plain(value: Any, secret_as: Any = None) -> Any:
    """Values as the provider would write them to the API server.

    The mock engine hands numbers back as floats (manifests hold integers) and leaves
    secrets wrapped in the wire format's secret envelope (the provider unwraps them).
    With `secret_as`, each value the engine received as a secret becomes that instead (or
    secret_as(value), if callable): redaction by where a secret flows, not by what its text
    looks like.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if is_secret_envelope(value):
            if secret_as is None:
                return _plain(value.get("value"))
            return secret_as(_plain(value.get("value"))) if callable(secret_as) else secret_as
        return {k: _plain(v, secret_as) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, secret_as) for v in value]
    return value


def _drop(value: Any, parts: list[str]) -> None:
    """Remove the property at `parts` from wire-format `value`, looking through secret envelopes."""
    *parents, leaf = parts
    for key in parents:
        value = value.get("value") if is_secret_envelope(value) else value
        if not isinstance(value, dict) or key not in value:
            return
        value = value[key]
    value = value.get("value") if is_secret_envelope(value) else value
    if isinstance(value, dict):
        value.pop(leaf, None)


def is_secret_envelope(value: Any) -> bool:
    """A value of the RegisterResource wire format that the engine keeps secret (state, previews)."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


class _WarningCollector(logging.Handler):
    def __init__(self, run: ProgramRun):
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        (self.run.warnings if record.levelno >= logging.WARNING else self.run.notes).append(record.getMessage())


# What a project directory's program is made of: its code, the scripts it ships and Pulumi.yaml.
PROGRAM_FILES = ("__main__.py", "Pulumi.yaml", "mlcache", "workloads")


def _program_files(root: Path) -> dict[str, bytes]:
    found = {}
    for name in PROGRAM_FILES:
        path = root / name
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        found.update({str(p.relative_to(root)): p.read_bytes() for p in paths})
    return found


@functools.cache
def _checkout_program() -> dict[str, bytes]:
    return _program_files(CHECKOUT)


def same_program(project_dir: Path) -> bool:
    """`project_dir` holds byte for byte this checkout's program (another working tree, or a revision
    that changes only stack files): it runs on the modules these tools already imported."""
    return project_dir == CHECKOUT or _program_files(project_dir) == _checkout_program()


def _top_level_modules(directory: Path) -> set[str]:
    """The program's own modules and packages in a project directory (not the tools or tests)."""
    found = {p.stem for p in directory.glob("*.py")} | {p.parent.name for p in directory.glob("*/__init__.py")}
    return found - {"__main__", "tools", "tests"}


@contextmanager
def _without_source_positions() -> Iterator[None]:
    """The SDK records the Python stack (traceback.extract_stack, source lines included) with every
    resource it registers, for the engine's source positions; the mock engine reads none of them,
    and they were a quarter of a render's CPU. Each request carries an empty stack trace instead."""
    recorder = getattr(runtime_resource, "_get_stack_trace", None)
    if recorder is None:  # an SDK without it: nothing to skip
        yield
        return
    runtime_resource._get_stack_trace = source_pb2.StackTrace  # called with no argument: an empty trace
    try:
        yield
    finally:
        runtime_resource._get_stack_trace = recorder


@contextmanager
def _program_imports(project_dir: Path) -> Iterator[None]:
    """The program imports its modules (settings, names, components...) from `project_dir`.

    Modules of this checkout already imported in the process (the tools import `names`) are set
    aside while another program runs (mlcache diff renders another revision), and put back after
    it. A directory with this checkout's very program keeps them: its modules are these, and what
    the tools set on them (the live cache `assume_live` gives the guard) reaches the program.
    """
    own = set() if same_program(project_dir) else _top_level_modules(CHECKOUT)
    aside = {name: module for name, module in list(sys.modules.items()) if name.partition(".")[0] in own}
    for name in aside:
        del sys.modules[name]
    sys.path.insert(0, str(project_dir))
    try:
        yield
    finally:
        sys.path.remove(str(project_dir))
        for name in [name for name in sys.modules if name.partition(".")[0] in own]:
            del sys.modules[name]
        sys.modules.update(aside)


def run_program(
    config: dict[str, str],
    secret_keys: list[str],
    stack: str,
    run: ProgramRun | None = None,
    project_dir: Path = CHECKOUT,
) -> ProgramRun:
    """Evaluate the program in `project_dir` once, in isolation from earlier runs in this process.

    `config` maps full keys ("mlcache:cache") to the strings the CLI would pass (JSON for
    structured values). Exceptions from the program (ConfigError included) propagate; pass
    `run` to see what was captured before one.
    """
    run = run if run is not None else ProgramRun()
    # A loop of its own, closed at the end: an unclosed one is finalised at interpreter exit
    # ("Exception ignored in BaseEventLoop.__del__").
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_InlineExecutor())
    asyncio.set_event_loop(loop)
    # A logger of this run's own, outside logging's registry: a registered one (getLogger) is kept
    # for the life of the process, with its handler and so this run, one per render.
    logger = logging.Logger("mlcache.mock")
    logger.setLevel(logging.INFO)
    logger.addHandler(_WarningCollector(run))
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    monitor = _CapturingMonitor(run)

    def program() -> None:
        runpy.run_path(str(project_dir / "__main__.py"), run_name="__main__")

    try:
        with _program_imports(project_dir.resolve()), _without_source_positions():
            mocks.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=monitor)
            _sync_await(run_pulumi_func(program))
        root = runtime_settings.get_root_resource()
        assert isinstance(root, Stack), "run_pulumi_func registers the Stack as the root resource"
        for name, value in root.outputs.items():
            output = pulumi.Output.from_input(value)
            run.outputs[name] = _plain(_sync_await(output.future()))
            if _sync_await(output.is_secret()):
                run.secret_outputs.add(name)
    finally:
        _close(loop)
    return run


def _close(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    loop.close()
