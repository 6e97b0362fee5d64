"""Cache warm-up: download the models listed in the mlcache-scripts ConfigMap onto the cache.

Runs as an init container of the training pod, after the durable copy's restore step if any
(so training never starts on a half-filled cache, and the volume is bound by the training pod
itself). Each model gets a marker under
<cache>/.mlcache/prefetch/ once fully downloaded; a model with a marker is skipped without
touching the network. Once every model is there, the warm-up's own marker (`complete`) names the
list it finished (`warmup_id`): the durable copy's refresh waits for it (cache_copy.py refresh).
Hub clients read HF_HOME / MODELSCOPE_CACHE and the tokens from the environment (HF_TOKEN,
MODELSCOPE_API_TOKEN, from a Secret).

    python prefetch.py LIST_FILE MARKER_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

HUGGINGFACE, MODELSCOPE = "huggingface", "modelscope"
WARMUP_DONE = "complete"


def warmup_id(list_text: str) -> str:
    """Names a warm-up by its list: a changed list is a new warm-up."""
    return hashlib.sha256(list_text.encode()).hexdigest()[:16]


def parse_entry(entry: str) -> tuple[str, str]:
    """'huggingface:org/name' -> (huggingface, org/name); no prefix means ModelScope."""
    hub, sep, model = entry.partition(":")
    return (hub, model) if sep else (MODELSCOPE, entry)


def marker_path(marker_dir: Path, hub: str, model: str) -> Path:
    return marker_dir / f"{hub}--{re.sub(r'[^A-Za-z0-9_.-]', '--', model)}.done"


def download(hub: str, model: str) -> str:
    # Imported on use: an image may carry only one of the two hub clients.
    if hub == HUGGINGFACE:
        from huggingface_hub import snapshot_download  # noqa: PLC0415

        return snapshot_download(repo_id=model)
    from modelscope import snapshot_download  # noqa: PLC0415

    token = os.environ.get("MODELSCOPE_API_TOKEN")
    if token:
        from modelscope.hub.api import HubApi  # noqa: PLC0415

        HubApi().login(token)
    return snapshot_download(model)


def prefetch(entries: list[str], marker_dir: Path, warmup: str) -> int:
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / WARMUP_DONE).unlink(missing_ok=True)
    failed = 0
    for entry in entries:
        hub, model = parse_entry(entry)
        marker = marker_path(marker_dir, hub, model)
        if marker.exists():
            print(json.dumps({"model": entry, "status": "cached", "marker": str(marker)}), flush=True)
            continue
        began = time.monotonic()
        try:
            path = download(hub, model)
        except Exception as err:  # report every model, then fail the init container
            failed += 1
            print(json.dumps({"model": entry, "status": "failed", "error": f"{type(err).__name__}: {err}"}), flush=True)
            continue
        marker.write_text(json.dumps({"path": str(path), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        seconds = round(time.monotonic() - began, 1)
        print(json.dumps({"model": entry, "status": "downloaded", "path": str(path), "seconds": seconds}), flush=True)
    if failed:
        return 1
    done = marker_dir / f"{WARMUP_DONE}.tmp"
    done.write_text(warmup + "\n")
    done.rename(marker_dir / WARMUP_DONE)
    return 0


def main(argv: list[str]) -> int:
    list_file, marker_dir = Path(argv[0]), Path(argv[1])
    text = list_file.read_text()
    entries = [line.strip() for line in text.splitlines() if line.strip()]
    return prefetch(entries, marker_dir, warmup_id(text))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
