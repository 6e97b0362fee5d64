"""The real engine: the pulumi CLI, the Kubernetes provider and a local kube-apiserver, all built
by scripts/build-engine. Without them every test here is skipped with the reason printed; with
MLCACHE_REQUIRE_ENGINE=1 (as .ci/run sets it) a missing toolchain is a failure instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tools.rehearse import PROVIDER_VERSION, Rehearsal, SetupError, UpFailed, find_toolchain, stderr_progress, up_stack

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("MLCACHE_ENGINE_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlcache-engine")
)
PASSPHRASE = "mlcache-integration-tests"


def _binary(pattern: str) -> Path | None:
    found = sorted(CACHE.glob(pattern))
    return found[-1] if found else None


def _missing(reason: str) -> None:
    if os.environ.get("MLCACHE_REQUIRE_ENGINE") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def rehearsal(request):
    """A fresh rehearsal cluster, deployed to through tools.rehearse (the same code path as
    `python -m tools.rehearse`): the runbook's fleet, or what a test passes with
    `@pytest.mark.parametrize("rehearsal", [{"fleet": FILE, "complete_jobs": True}], indirect=True)`."""
    try:
        toolchain = find_toolchain()
    except SetupError as err:
        _missing(str(err))
    options = getattr(request, "param", {})
    with Rehearsal(**options, toolchain=toolchain, progress=stderr_progress()) as cluster:
        yield cluster


def toolchain() -> dict[str, Path]:
    wanted = {
        "pulumi": "cli-*/pulumi",
        "langhost": "langhost-*/pulumi-language-python",
        "provider": f"provider-{PROVIDER_VERSION}-*/pulumi-resource-kubernetes",
        "etcd": "etcd-*/etcd",
        "apiserver": "apiserver-*/kube-apiserver",
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
        """`pulumi up` the way tools.rehearse deploys (the Automation API, tools.rehearse.up_stack)."""
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


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Engine:
    tools = toolchain()
    work = tmp_path_factory.mktemp("engine")
    cluster = work / "cluster"
    subprocess.run([str(ROOT / "scripts" / "local-cluster"), "start", str(cluster)], check=True, timeout=120)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for tool in ("pulumi", "langhost"):
        for item in tools[tool].parent.iterdir():
            (bin_dir / item.name).symlink_to(item)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PULUMI_HOME": str(work / "pulumi-home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "KUBECONFIG": str(cluster / "kubeconfig"),
    }
    subprocess.run(
        ["pulumi", "plugin", "install", "resource", "kubernetes", f"v{PROVIDER_VERSION}", "--file", str(tools["provider"])],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield Engine(env=env, kubeconfig=cluster / "kubeconfig", work=work)
    subprocess.run([str(ROOT / "scripts" / "local-cluster"), "stop", str(cluster)], check=False, timeout=60)


@pytest.fixture(scope="session")
def kube(engine):
    """The kubernetes client, logged in to the local API server."""
    from kubernetes import client, config  # noqa: PLC0415

    config.load_kube_config(config_file=str(engine.kubeconfig))
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ml-training")))
    return api


class FakeBinder:
    """Plays the provisioner for Immediate-binding (Rook-Ceph) claims: no controller runs here,
    so a claim on `storage_class` is marked Bound, as a real provisioner would do."""

    def __init__(self, api, storage_class: str):
        from kubernetes import client  # noqa: PLC0415

        self.core = client.CoreV1Api(api)
        self.storage_class = storage_class
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
                if pvc.spec.storage_class_name == self.storage_class and (pvc.status.phase or "Pending") == "Pending":
                    self.core.patch_namespaced_persistent_volume_claim_status(
                        pvc.metadata.name, pvc.metadata.namespace, {"status": {"phase": "Bound"}}
                    )
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)


def rendered_objects(stack: str, overrides: tuple[str, ...] = ()) -> list[dict]:
    """What tools.render prints for the stack (the offline renderer under test)."""
    args = [str(ROOT / "venv" / "bin" / "python"), "-m", "tools.render", "--stack", stack]
    for override in overrides:
        args += ["--config", override]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return list(yaml.safe_load_all(out))
