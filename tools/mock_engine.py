"""Run `__main__.py` under the Pulumi SDK's mock engine and capture what it asks the engine for.

The capture is the full RegisterResource request: inputs exactly as serialised for the
provider, plus the options that manifests cannot show (protect, depends_on, property
dependencies, delete_before_replace, replace_on_changes, import ids, custom timeouts).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks, rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from names import PROJECT

# The program to run: this checkout, or another revision of it (tools.diff renders the base
# revision's program with this revision's tools).
PROJECT_DIR = Path(os.environ.get("MLCACHE_PROJECT_DIR") or Path(__file__).resolve().parent.parent).resolve()
PROGRAM = PROJECT_DIR / "__main__.py"
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
    protect: bool
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]
    retain_on_delete: bool
    import_id: str
    custom_timeouts: dict[str, str]

    @property
    def kind(self) -> str:
        return self.inputs.get("kind", "")

    @property
    def object_name(self) -> str:
        return self.inputs.get("metadata", {}).get("name", "")

    @property
    def is_kubernetes_object(self) -> bool:
        return self.custom and self.type.startswith("kubernetes:")


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

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)


class _Provider(mocks.Mocks):
    """Answers like the Kubernetes provider would on create: the object comes back as sent."""

    def new_resource(self, args: mocks.MockResourceArgs):
        state = dict(args.inputs)
        metadata = dict(state.get("metadata") or {})
        if args.typ.startswith("kubernetes:") and state.get("kind") not in CLUSTER_SCOPED_KINDS:
            metadata.setdefault("namespace", DEFAULT_NAMESPACE)
        if metadata:
            state["metadata"] = metadata
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
            self.run.registrations.append(_registration(request, response.urn))
        return response


def _registration(request, urn: str) -> Registration:
    timeouts = request.customTimeouts
    return Registration(
        type=request.type,
        name=request.name,
        urn=urn,
        parent=request.parent,
        custom=request.custom,
        inputs=_plain(rpc.deserialize_properties(request.object)),
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
    )


def _plain(value: Any) -> Any:
    """Values as the provider would write them to the API server.

    The mock engine hands numbers back as floats (manifests hold integers) and leaves
    secrets wrapped in the wire format's secret envelope (the provider unwraps them).
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _plain(value.get("value"))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _WarningCollector(logging.Handler):
    def __init__(self, run: ProgramRun):
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        (self.run.warnings if record.levelno >= logging.WARNING else self.run.notes).append(record.getMessage())


def run_program(config: dict[str, str], secret_keys: list[str], stack: str, run: ProgramRun | None = None) -> ProgramRun:
    """Evaluate the program once, in isolation from earlier runs in this process.

    `config` maps full keys ("mlcache:cache") to the strings the CLI would pass (JSON for
    structured values). Exceptions from the program (ConfigError included) propagate; pass
    `run` to see what was captured before one.
    """
    run = run if run is not None else ProgramRun()
    logger = logging.getLogger(f"mlcache.mock.{id(run)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(_WarningCollector(run))
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    monitor = _CapturingMonitor(run)
    mocks.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=monitor)
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    _sync_await(run_pulumi_func(program))
    root = runtime_settings.get_root_resource()
    for name, value in root.outputs.items():
        output = pulumi.Output.from_input(value)
        run.outputs[name] = _plain(_sync_await(output.future()))
        if _sync_await(output.is_secret()):
            run.secret_outputs.add(name)
    return run
