"""The stack outputs: the contract between the program, which exports them (`__main__.py`), and
everything that reads a deployed or rendered stack (verify, heal, rehearse, the tests).

Each output's name is declared once, in OUTPUT_INPUTS; `StackOutputs.read` is the one reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The `zone` output of a stack that lets the scheduler choose, and how reports describe that zone.
SCHEDULER_CHOSEN = "scheduler-chosen"
UNPINNED_ZONE = f"{SCHEDULER_CHOSEN} (unpinned)"

# Stack output -> the config keys its value comes from: what SecretFlow keeps secret when a key is
# given as a secret. Also the list of outputs the program exports (it may export no other).
OUTPUT_INPUTS: dict[str, frozenset[str]] = {
    "backend": frozenset({"backend"}),
    "storageClass": frozenset({"backend", "linstor", "rookCeph"}),
    "storageClassManaged": frozenset({"backend", "linstor"}),
    "pvcName": frozenset({"cache"}),
    "cacheMove": frozenset({"cache", "backend"}),
    "durableCopy": frozenset({"cache", "rookCeph"}),
    "namespace": frozenset({"namespace"}),
    "volumeMode": frozenset({"cache"}),
    "zone": frozenset({"zone"}),
    "jobName": frozenset({"job"}),
    "runMarker": frozenset({"job", "cache"}),
    "benchmarkJob": frozenset({"job", "benchmark"}),
    "run": frozenset({"job", "cache", "benchmark"}),
    "verifyCommands": frozenset({"cache", "job", "namespace", "backend"}),
}


@dataclass(frozen=True)
class RunOutput:
    """The `run` output: the run's workers, what verify and rehearse check placement against."""

    name: str
    nodes: int
    engine: str
    cache_claims: tuple[str, ...]
    jobs: tuple[str, ...]
    benchmark_jobs: tuple[str, ...]
    gpu_product: str
    gpu_resource: str
    gpus_per_node: int

    def exported(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": self.nodes,
            "engine": self.engine,
            "cacheClaims": list(self.cache_claims),
            "jobs": list(self.jobs),
            "benchmarkJobs": list(self.benchmark_jobs),
            "gpuProduct": self.gpu_product,
            "gpuResource": self.gpu_resource,
            "gpusPerNode": self.gpus_per_node,
        }

    @classmethod
    def read(cls, value: dict[str, Any]) -> RunOutput:
        return cls(
            name=value["name"],
            nodes=value["nodes"],
            engine=value["engine"],
            cache_claims=tuple(value["cacheClaims"]),
            jobs=tuple(value["jobs"]),
            benchmark_jobs=tuple(value["benchmarkJobs"]),
            gpu_product=value["gpuProduct"],
            gpu_resource=value["gpuResource"],
            gpus_per_node=value["gpusPerNode"],
        )


@dataclass(frozen=True)
class DurableOutput:
    """The `durableCopy` output: the durable copy's claim, its refresh Job (registered once the cache
    is bound) and the warm-up it follows."""

    claim: str
    refresh_job: str
    warmup: str

    @classmethod
    def read(cls, value: dict[str, Any] | None) -> DurableOutput | None:
        if not value:
            return None
        return cls(claim=value["claim"], refresh_job=value["refreshJob"], warmup=value["warmup"])


@dataclass(frozen=True)
class StackOutputs:
    """What the read side takes from a stack's outputs (`pulumi stack output --json`, the Automation
    API's result, or the mock engine's)."""

    backend: str
    storage_class: str
    pvc_name: str
    namespace: str
    zone: str | None  # None: the scheduler chooses
    job_name: str | None
    benchmark_job: str | None
    run: RunOutput
    durable: DurableOutput | None = None

    @classmethod
    def read(cls, outputs: dict[str, Any]) -> StackOutputs:
        return cls(
            backend=outputs["backend"],
            storage_class=outputs["storageClass"],
            pvc_name=outputs["pvcName"],
            namespace=outputs["namespace"],
            zone=None if outputs["zone"] == SCHEDULER_CHOSEN else outputs["zone"],
            job_name=outputs.get("jobName"),
            benchmark_job=outputs.get("benchmarkJob"),
            run=RunOutput.read(outputs["run"]),
            durable=DurableOutput.read(outputs.get("durableCopy")),
        )
