"""Pulumi.yaml's `config:` block and docs/configuration.md, derived from the declarations in
settings.py (`mlcache config` writes them; the tests check they are not stale).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mlcache import CHECKOUT
from mlcache.program import settings

ROOT = CHECKOUT


PULUMI_YAML = ROOT / "Pulumi.yaml"


REFERENCE = ROOT / "docs" / "configuration.md"


PULUMI_YAML_NOTE = """\
# Generated from the declarations in settings.py by `mlcache config`: edit
# those, not this block. Every key lives in the `mlcache:` namespace. Pulumi's project schema
# types only strings, integers, booleans and arrays, so the object keys carry a description
# and their defaults but no `type`. A stack value for an object key replaces the default
# object whole; the fields it leaves out take their declared defaults.
"""


REFERENCE_HEAD = """\
# Configuration reference

Generated from the declarations in `settings.py` by `mlcache config`
(a test fails when this file is stale). Every key lives in the `mlcache:` namespace: set
top-level keys with `pulumi config set mlcache:zone ucsd`, fields of the object keys with
`pulumi config set --path 'mlcache:cache.size' 500Gi` (or in `Pulumi.<stack>.yaml`).

Values are read as the Pulumi CLI reads a stack file (Go's YAML, then JSON to the program;
`mlcache render` and `mlcache diff` read them the same way). In a stack file an unquoted `8`
is a number and a text setting takes its digits (`job.env: {OMP_NUM_THREADS: 8}` gives "8",
`true` gives "true"); `0022` is octal (18), `0x10` hex (16) and `8.0` the number 8, so quote
what must stay as typed (`UMASK: "0022"`, `TORCH_CUDA_ARCH_LIST: "8.0"`). An unquoted
fraction (`1.10` reaches the program as 1.1), date (`2026-11-28` as the time "2026-11-28
00:00:00 +0000 UTC") or number longer than 2^53 is refused where text is wanted, asking for
quotes. `pulumi config set --path` stores `true`, `false` and decimal digits
without a leading zero as typed values and anything else as text, so `pulumi config set
--path mlcache:job.gpus 0x10` is refused. Quantities follow Kubernetes (`job.cpu: 0.5` or
`500m`). A bad value stops the program before anything is registered, with one line naming
the key, the value as typed and what is allowed:

```
invalid config mlcache:job.gpus = "0x10": expected a whole number from 1 to 64
```

A top-level value of another type than `Pulumi.yaml` declares is refused by the CLI itself,
and offline in the same words (`Stack 'dev' with configuration key 'zones' must be of
type 'array<string>'`).

A key or field of the project that is not declared (`cache.sise`), or a mistyped project
prefix (`mlcahce:backend`), is refused naming the key it probably meant, without its value:

```
invalid config key mlcache:cache.sise (did you mean mlcache:cache.size?): expected a known field of cache: name, size, …
```

| key | type | default | allowed | description |
| --- | --- | --- | --- | --- |
"""


REFERENCE_TAIL = """
## Rules between settings

Checked after each value on its own (settings.py, `_check`), by the rules the API server and
the drivers apply at `up`:

- `zone` is empty or one of `zones`; `adopt` needs `namespace`.
- `linstor.replicas` above 1 needs `drbd` in `linstor.layerList` (only DRBD replicates).
- `cache.size` is at least 300Mi for LINSTOR XFS in Filesystem mode.
- `cache.mountPath` (Filesystem) or `cache.devicePath` (Block) stays clear of the pods' own
  mounts (`/tmp`, `/dev/shm`, `/opt/mlcache`): neither equal to one nor above or below one.
  Nor is it on or under `/proc` or `/sys`, or `/dev` itself: the container runtime mounts those
  and refuses the pod once it is scheduled.
- `cache.prefetch` is empty in Block mode; so is `benchmark.shardLoad` when the benchmark runs.
- `job.memory` is greater than `job.shmSize` (/dev/shm counts against the memory limit).
- Derived names keep to their kind's limit: the Job `job.name-job.runId` and, with the
  benchmark enabled, `job.name-storage-bench` are DNS labels of at most 63 characters.
- Tolerations follow the API server: an empty key needs operator `Exists`, `Exists` takes no
  value, `tolerationSeconds` needs effect `NoExecute`.
- The benchmark needs `benchmark.fioImage` when it runs fio profiles, and at least one
  profile or the shard-loading run.
"""


def pulumi_yaml_text(current: str) -> str:
    """Pulumi.yaml with its `config:` block (and the note above it) regenerated."""
    head = current.split("\n# Generated from the declarations", 1)[0].split("\nconfig:", 1)[0]
    block = yaml.safe_dump({"config": settings.pulumi_config()}, sort_keys=False, width=100, allow_unicode=True)
    return f"{head.rstrip()}\n{PULUMI_YAML_NOTE}{block}"


def reference_text() -> str:
    return REFERENCE_HEAD + "\n".join(settings.reference_rows()) + "\n" + REFERENCE_TAIL


def stale() -> list[Path]:
    wanted = {PULUMI_YAML: pulumi_yaml_text(PULUMI_YAML.read_text()), REFERENCE: reference_text()}
    return [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
