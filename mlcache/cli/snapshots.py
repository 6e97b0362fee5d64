"""Refresh the golden snapshots of the rendered manifests (tests/snapshots/), for developers.

    mlcache snapshots        # after an intended change; then review the git diff

One file per stack and per variant a stack file does not show (multi-node runs, Block mode).
"""

from __future__ import annotations

from mlcache import CHECKOUT
from mlcache.cli.contract import ArgumentParser, UsageError, entry_point
from mlcache.cli.main import prog
from mlcache.preview.snapshots import SNAPSHOT_DIR, rendered_text, snapshot_cases


@entry_point
def main(argv: list[str] | None = None) -> int:
    ArgumentParser(prog=prog("mlcache.cli.snapshots"), description=__doc__.split("\n\n")[0]).parse_args(argv)
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
