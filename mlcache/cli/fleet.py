"""The rehearsal cluster's fake nodes, from a fleet file (docs/rehearsal-cluster.md).

    mlcache fleet FILE [--pool-size SIZE]

Prints one Node object per line (JSON), ready to create: labels, taints and allocatable from
the file, the annotation and label that hand the node to kwok, and the LINSTOR storage pools
the provisioner stand-in reads. FILE is either a fleet description (a `nodes:` list, see
fleets/runbook.yaml) or the output of `kubectl get nodes -o yaml` from a real cluster (labels,
taints and allocatable kept, status and the rest dropped). Bad input: one line naming the
entry, the value as typed and what is allowed; exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlcache.cli.contract import ArgumentParser, UsageError, entry_point
from mlcache.cli.main import prog
from mlcache.rehearsal.fleet import DEFAULT_POOL_SIZE, FleetError, load


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.fleet"), description=__doc__.split("\n\n")[0])
    parser.add_argument("fleet", type=Path)
    parser.add_argument(
        "--pool-size",
        default=DEFAULT_POOL_SIZE,
        help=f"LINSTOR pool size for nodes read from kubectl output (default {DEFAULT_POOL_SIZE})",
    )
    args = parser.parse_args(argv)
    try:
        nodes = load(args.fleet, args.pool_size)
    except FleetError as error:
        raise UsageError(str(error)) from None
    for node in nodes:
        print(json.dumps(node, separators=(",", ":")))
    return 0
