"""Golden snapshots of each stack's rendered manifests (tests/snapshots/<stack>.yaml).

python -m tools.snapshots        # refresh them after an intended change, then review the git diff
"""

from __future__ import annotations

import sys

from tools import CHECKOUT
from tools.render import documents, render, to_yaml
from tools.stack_config import stack_names

SNAPSHOT_DIR = CHECKOUT / "tests" / "snapshots"


def rendered_text(stack: str) -> str:
    run, _ = render(stack, [], [])
    return to_yaml(documents(run))


def main() -> int:
    SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for stack in stack_names(CHECKOUT):
        path = SNAPSHOT_DIR / f"{stack}.yaml"
        path.write_text(rendered_text(stack))
        print(f"wrote {path.relative_to(CHECKOUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
