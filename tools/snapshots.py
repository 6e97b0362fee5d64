"""Golden snapshots of each stack's rendered manifests (tests/snapshots/<stack>.yaml).

python -m tools.snapshots        # refresh them after an intended change, then review the git diff
"""

from __future__ import annotations

import sys

from tools import CHECKOUT
from tools.cli import ArgumentParser, UsageError, entry_point
from tools.render import documents, render_or_refuse, to_yaml
from tools.stack_config import stack_names

SNAPSHOT_DIR = CHECKOUT / "tests" / "snapshots"


def rendered_text(stack: str) -> str:
    run, _ = render_or_refuse(stack, [], [])
    return to_yaml(documents(run))


@entry_point
def main(argv: list[str] | None = None) -> int:
    ArgumentParser(prog="python -m tools.snapshots", description=__doc__.split("\n\n")[0]).parse_args(argv)
    # Every stack renders before any file is written: a bad stack leaves the snapshots as they were.
    texts = {}
    for stack in stack_names(CHECKOUT):
        try:
            texts[stack] = rendered_text(stack)
        except UsageError as err:
            raise UsageError(f"stack {stack}: {err}") from None
    try:
        SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
        for stack, text in texts.items():
            path = SNAPSHOT_DIR / f"{stack}.yaml"
            path.write_text(text)
            print(f"wrote {path.relative_to(CHECKOUT)}")
    except OSError as err:
        raise UsageError(f"cannot write the snapshots in {SNAPSHOT_DIR}: {err.strerror or err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
