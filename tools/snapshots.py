"""Golden snapshots of each stack's rendered manifests (tests/snapshots/<stack>.yaml), and of the
variants a stack file does not show (tests/snapshots/<variant>.yaml: multi-node runs, Block mode).

python -m tools.snapshots        # refresh them after an intended change, then review the git diff
"""

from __future__ import annotations

import sys

from tools import CHECKOUT
from tools.cli import ArgumentParser, UsageError, entry_point
from tools.render import documents, render_or_refuse, to_yaml
from tools.stack_config import stack_names

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


@entry_point
def main(argv: list[str] | None = None) -> int:
    ArgumentParser(prog="python -m tools.snapshots", description=__doc__.split("\n\n")[0]).parse_args(argv)
    # Every stack renders before any file is written: a bad stack leaves the snapshots as they were.
    texts = {}
    for name, (stack, overrides) in snapshot_cases().items():
        try:
            texts[name] = rendered_text(stack, overrides)
        except UsageError as err:
            raise UsageError(f"snapshot {name}: {err}") from None
    try:
        SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            path = SNAPSHOT_DIR / f"{name}.yaml"
            path.write_text(text)
            print(f"wrote {path.relative_to(CHECKOUT)}")
    except OSError as err:
        raise UsageError(f"cannot write the snapshots in {SNAPSHOT_DIR}: {err.strerror or err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
