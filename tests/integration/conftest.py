"""The real engine: the pulumi CLI, the Kubernetes provider and the rehearsal cluster
(scripts/local-cluster: control plane, scheduler, kwok nodes, provisioner stand-ins), all built by
scripts/build-engine. Without them every test here is skipped with the reason printed; with
MLCACHE_REQUIRE_ENGINE=1 (as .ci/run sets it) a missing toolchain is a failure instead.

Fixtures for other suites:
  `cluster_factory` starts a rehearsal cluster on a fleet file: `cluster_factory(fleet=PATH)` ->
      Cluster (kubeconfig, api client, kill_node); stopped at the end of the session.
  `cluster` / `kube`: one shared cluster on fleets/runbook.yaml, and its kubernetes ApiClient
      (namespace ml-training created), kept while the worker's next test uses it too.
  `pulumi_cli`: the environment to run the pulumi CLI in, with no cluster (`pulumi config`).
  `engine`: the pulumi CLI and provider wired to the shared cluster (Engine.project(...)).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcache.rehearsal.cluster import PROVIDER_VERSION, Rehearsal, SetupError, UpFailed, find_toolchain, stderr_progress, up_stack

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("MLCACHE_ENGINE_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlcache-engine")
)
PASSPHRASE = "mlcache-integration-tests"


def ended(containers: Iterable[tuple[str, str]], phase: str, finished_at: str | None = None) -> dict:
    """A pod status patch: the pod `phase` (Failed or Succeeded) and each (name, image) container
    terminated, as a kubelet reports them (kwok runs nothing, so tests end pods this way)."""
    failed = phase == "Failed"
    terminated = {"exitCode": 1 if failed else 0, "reason": "Error" if failed else "Completed"}
    if finished_at:
        terminated["finishedAt"] = finished_at
    statuses = [
        {"name": name, "image": image, "ready": False, "restartCount": 0, "imageID": "", "state": {"terminated": terminated}}
        for name, image in containers
    ]
    return {"status": {"phase": phase, "containerStatuses": statuses}}


def wait_for(probe: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `probe` until it returns something truthy (returned); fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout} s")
        time.sleep(0.2)


def _binary(pattern: str) -> Path | None:
    found = sorted(CACHE.glob(pattern), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None  # the most recent build


def pytest_collection_modifyitems(config, items) -> None:
    """Every test under this folder carries the `integration` marker (`./test unit` leaves them
    out). Without the toolchain they are not run, and the reason is said once, not per test;
    with MLCACHE_REQUIRE_ENGINE=1 (CI) they run and fail instead."""
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(item.fspath).parents]
    for item in ours:
        item.add_marker(pytest.mark.integration)
    # Tests on the same cluster one after the other (no cluster, the shared one, then each kind of
    # rehearsal cluster), so each worker keeps a cluster for the next test instead of starting
    # one per test; module order otherwise kept.
    items.sort(key=lambda item: cluster_group(item) if item in ours else (0, ""))
    if not ours or os.environ.get("MLCACHE_REQUIRE_ENGINE") == "1":
        return
    try:
        find_toolchain()
    except SetupError as err:
        items[:] = [item for item in items if item not in ours]
        config.hook.pytest_deselected(items=ours)
        config.stash[_NOT_RUN] = f"{len(ours)} real-engine tests not run: {err}"


_NOT_RUN = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, config) -> None:
    if _NOT_RUN in config.stash:
        terminalreporter.write_line(config.stash[_NOT_RUN], yellow=True)


def _missing(reason: str) -> None:
    if os.environ.get("MLCACHE_REQUIRE_ENGINE") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def cluster_group(item: pytest.Item) -> tuple[int, str]:
    """The cluster a test runs on: none (0), the shared one (1), or a rehearsal cluster (2) with
    these options. Tests are run grouped by it, and a worker keeps a cluster only for a next test
    of the same group."""
    if "rehearsal" in item.fixturenames:
        callspec = getattr(item, "callspec", None)
        return (2, repr(sorted(callspec.params.get("rehearsal", {}).items() if callspec else [])))
    return (1, "") if "cluster" in item.fixturenames else (0, "")


_NEXT_GROUP = pytest.StashKey[tuple[int, str] | None]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Tell the cluster fixtures, before they are torn down, what the worker runs next (None: nothing yet)."""
    item.stash[_NEXT_GROUP] = cluster_group(nextitem) if nextitem is not None else None
    return (yield)


@pytest.fixture(scope="session")
def kept_cluster() -> Iterator[dict[tuple[int, str], Any]]:
    """The cluster (a Rehearsal or the shared Cluster) kept for the worker's next test, by its
    group; stopped at the end of the session. One at most, and only for a next test that uses
    it: an idle cluster still takes about 10% of a core (kwok renews 11 node leases every 2 s,
    the controllers resync), which slowed the other workers' tests more than starting one."""
    kept: dict[tuple[int, str], Any] = {}
    yield kept
    for cluster in kept.values():
        cluster.stop()


def take(kept: dict[tuple[int, str], Any], group: tuple[int, str]) -> Any:
    """The cluster kept for this test's group, if any (any other kept one is stopped)."""
    cluster = kept.pop(group, None)
    for other in kept.values():
        other.stop()
    kept.clear()
    return cluster


def hand_on(request, kept: dict[tuple[int, str], Any], cluster: Any, reset: Callable[[], None] = lambda: None) -> None:
    """After a test: keep `cluster` for the worker's next test if it runs on the same group (made
    ready by `reset`), else stop it. One that does not reset is stopped (an interrupt re-raised)."""
    group = cluster_group(request.node)
    if request.node.stash.get(_NEXT_GROUP, None) != group:
        cluster.stop()
        return
    try:
        reset()
    except BaseException as err:
        cluster.stop()
        if not isinstance(err, Exception):
            raise
        print(f"cluster stopped, not reused: {type(err).__name__}: {err}", file=sys.stderr)
    else:
        kept[group] = cluster


@pytest.fixture
def rehearsal(request, kept_cluster):
    """A rehearsal cluster as `start` made it, deployed to through mlcache rehearse (the same code
    path as `mlcache rehearse`): the runbook's fleet, or what a test passes with
    `@pytest.mark.parametrize("rehearsal", [{"fleet": FILE, "complete_jobs": True}], indirect=True)`.
    When the worker's next test asks for the same options, the cluster is reset for it
    (Rehearsal.reset: namespaces, volumes, classes, edited nodes, Pulumi state) instead of
    stopped (hand_on)."""
    try:
        toolchain = find_toolchain()
    except SetupError as err:
        _missing(str(err))
    cluster = take(kept_cluster, cluster_group(request.node))
    if cluster is None:
        options = getattr(request, "param", {})
        cluster = Rehearsal(**options, toolchain=toolchain, progress=stderr_progress()).__enter__()
    else:
        cluster.progress = stderr_progress()
    try:
        yield cluster
    finally:
        hand_on(request, kept_cluster, cluster, cluster.reset)


def toolchain() -> dict[str, Path]:
    wanted = {
        "pulumi": "cli-*/pulumi",
        "langhost": "langhost-*/pulumi-language-python",
        "provider": f"provider-{PROVIDER_VERSION}-*/pulumi-resource-kubernetes",
        "etcd": "etcd-*/etcd",
        "apiserver": "apiserver-*/kube-apiserver",
        "scheduler": "apiserver-*/kube-scheduler",
        "kwok": "kwok-*/kwok",
        "provisioner": "provisioner-*/mlcache-provisioner",
    }
    found = {name: _binary(pattern) for name, pattern in wanted.items()}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        _missing(f"real-engine toolchain missing in {CACHE} ({', '.join(missing)}): run scripts/build-engine")
    return found


@dataclass
class Engine:
    env: dict[str, str]
    kubeconfig: Path
    work: Path

    def project(self, name: str) -> Project:
        """A fresh copy of the project (tracked files) with its own file state backend."""
        directory = self.work / name
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        for file in files:
            (directory / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / file, directory / file)
        (directory / "venv").symlink_to(ROOT / "venv")
        # The policy pack's virtualenv (PulumiPolicy.yaml): ./venv has pulumi-policy too.
        (directory / "policy" / "venv").symlink_to(ROOT / "venv")
        state = self.work / f"{name}-state"
        state.mkdir()
        project = Project(directory, {**self.env, "PULUMI_BACKEND_URL": f"file://{state}"})
        return project


@dataclass
class Project:
    directory: Path
    env: dict[str, str]

    def pulumi(self, *args: str, stack: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["pulumi", *args, "--stack", stack, "--non-interactive"],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def init(self, stack: str) -> None:
        self.pulumi("stack", "init", stack=stack)

    def set(self, stack: str, key: str, value: str) -> None:
        self.pulumi("config", "set", "--path", f"mlcache:{key}", value, stack=stack)

    def up(self, stack: str, check: bool = True) -> subprocess.CompletedProcess:
        """`pulumi up` the way mlcache rehearse deploys (mlcache.rehearsal.cluster.up_stack)."""
        bin_dir = Path(shutil.which("pulumi", path=self.env["PATH"])).parent
        try:
            outputs = up_stack(self.directory, stack, self.env, bin_dir)
        except UpFailed as err:
            if check:
                raise AssertionError(f"pulumi up failed:\n{err}") from None
            return subprocess.CompletedProcess(["pulumi", "up"], 1, "", str(err))
        return subprocess.CompletedProcess(["pulumi", "up"], 0, json.dumps(outputs), "")

    def preview_ops(self, stack: str) -> dict[str, str]:
        """Kubernetes kind -> step op of a `pulumi preview --json` (changed objects only)."""
        result = self.pulumi("preview", "--json", stack=stack)
        ops = {}
        for step in json.loads(result.stdout).get("steps", []):
            resource_type = step["urn"].split("::")[2].split("$")[-1]
            if resource_type.startswith("kubernetes:") and step["op"] != "same":
                ops[resource_type.rsplit(":", 1)[-1]] = step["op"]
        return ops

    def outputs(self, stack: str) -> dict:
        return json.loads(self.pulumi("stack", "output", "--json", stack=stack).stdout)

    def destroy(self, stack: str) -> None:
        self.pulumi("state", "unprotect", "--all", "--yes", stack=stack, check=False)
        self.pulumi("destroy", "--yes", "--skip-preview", stack=stack)


@dataclass
class Cluster:
    """A running rehearsal cluster (scripts/local-cluster) and a client logged in to it."""

    directory: Path
    fleet: Path
    api: object = field(repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def kill_node(self, node: str, wait: bool = True) -> subprocess.CompletedProcess:
        """kwok stops managing the node: it goes NotReady as a dead machine does."""
        args = [str(ROOT / "scripts" / "local-cluster"), "kill-node", str(self.directory), node]
        return subprocess.run([*args] if wait else [*args, "--no-wait"], check=True, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "local-cluster"), "stop", str(self.directory)], check=False, timeout=60)


def start_cluster(directory: Path, fleet: Path = ROOT / "fleets" / "runbook.yaml", *extra: str) -> Cluster:
    """Start a rehearsal cluster in `directory` on `fleet`; returns once its nodes are Ready."""
    from kubernetes import client, config  # noqa: PLC0415

    result = subprocess.run(
        [str(ROOT / "scripts" / "local-cluster"), "start", str(directory), "--fleet", str(fleet), *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        subprocess.run([str(ROOT / "scripts" / "local-cluster"), "stop", str(directory)], check=False, timeout=60)
        raise AssertionError(f"scripts/local-cluster start failed:\n{result.stderr[-3000:]}")
    api = config.new_client_from_config(config_file=str(directory / "kubeconfig"))
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ml-training")))
    # Pods need the namespace's default service account (made by the serviceaccount controller).
    wait_for(lambda: core.list_namespaced_service_account("ml-training").items, 30, "ml-training/default service account")
    return Cluster(directory=directory, fleet=fleet, api=api)


@pytest.fixture(scope="session")
def cluster_factory(tmp_path_factory) -> Callable[..., Cluster]:
    """Start extra clusters (another fleet, --complete-jobs...); all are stopped at session end."""
    toolchain()
    started: list[Cluster] = []

    def factory(fleet: Path = ROOT / "fleets" / "runbook.yaml", *extra: str) -> Cluster:
        cluster = start_cluster(tmp_path_factory.mktemp("cluster"), fleet, *extra)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster(request, cluster_factory, kept_cluster) -> Iterator[Cluster]:
    """The shared rehearsal cluster on the default fleet (fleets/runbook.yaml): started for the
    first of the worker's tests that use it, kept while the next test uses it too (hand_on)."""
    cluster = take(kept_cluster, cluster_group(request.node)) or cluster_factory()
    yield cluster
    hand_on(request, kept_cluster, cluster)


@pytest.fixture(scope="session")
def pulumi_cli(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The environment of the pulumi CLI and its language host, with a home of their own (no cluster)."""
    tools = toolchain()
    work = tmp_path_factory.mktemp("cli")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for tool in ("pulumi", "langhost"):
        for item in tools[tool].parent.iterdir():
            (bin_dir / item.name).symlink_to(item)
    yield {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PULUMI_HOME": str(work / "pulumi-home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
    }
    # A pulumi command that fails while reading the stack's config leaves its language host running
    # (seen an hour after the suite): end the ones started from this bin directory.
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(str(bin_dir / "pulumi-language-python").encode()):
                os.kill(int(cmdline.parent.name), signal.SIGTERM)
        except (OSError, ValueError):
            pass  # gone meanwhile


@pytest.fixture(scope="session")
def engine_work(tmp_path_factory, pulumi_cli) -> Path:
    """The engine's working directory, with the locally built provider registered in its CLI home."""
    tools = toolchain()
    subprocess.run(
        ["pulumi", "plugin", "install", "resource", "kubernetes", f"v{PROVIDER_VERSION}", "--file", str(tools["provider"])],
        env=pulumi_cli,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tmp_path_factory.mktemp("engine")


@pytest.fixture
def engine(engine_work, cluster, pulumi_cli) -> Engine:
    return Engine(env={**pulumi_cli, "KUBECONFIG": str(cluster.kubeconfig)}, kubeconfig=cluster.kubeconfig, work=engine_work)


@pytest.fixture
def kube(cluster):
    """The kubernetes client, logged in to the shared rehearsal cluster."""
    return cluster.api


def rendered_objects(stack: str, overrides: tuple[str, ...] = ()) -> list[dict]:
    """What mlcache render prints for the stack (the offline renderer under test)."""
    args = [str(ROOT / "venv" / "bin" / "python"), "-m", "mlcache", "render", "--stack", stack]
    for override in overrides:
        args += ["--config", override]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return list(yaml.safe_load_all(out))
