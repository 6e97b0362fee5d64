"""Golden snapshots of each stack's rendered manifests (tests/snapshots/<stack>.yaml), and of the
variants a stack file does not show (tests/snapshots/<variant>.yaml: multi-node runs, Block mode).
`mlcache snapshots` rewrites them; tests/test_snapshots.py holds each render against its file.
"""

from __future__ import annotations

from mlcache import CHECKOUT
from mlcache.preview.render import documents, render_or_refuse, to_yaml
from mlcache.preview.stack_config import stack_names

SNAPSHOT_DIR = CHECKOUT / "tests" / "snapshots"


BENCHMARK_ON = ("benchmark.enabled=true", "benchmark.fioImage=example.org/fio:3.36")


# Snapshot name -> (stack, config overrides): what a refactor of the builders must leave byte-identical
# (a changed pod template replaces a running Job).
VARIANTS = {
    "prod-2-workers-jobs": ("prod", ("job.nodes=2", "job.engine=jobs", *BENCHMARK_ON)),
    "dev-3-workers-jobset": ("dev", ("job.nodes=3", "job.engine=jobset")),
    "prod-2-workers-block": ("prod", ("job.nodes=2", "cache.volumeMode=Block", *BENCHMARK_ON, "benchmark.shardLoad=false")),
}


def snapshot_cases() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every snapshot: each stack as its files say, then the variants."""
    return {**{stack: (stack, ()) for stack in stack_names(CHECKOUT)}, **VARIANTS}


def rendered_text(stack: str, overrides: tuple[str, ...] = ()) -> str:
    run, _ = render_or_refuse(stack, list(overrides), [])
    return to_yaml(documents(run))
