"""Check a deployed stack against the live cluster: the runbook's troubleshooting and
performance checks, automated.

    mlcache verify --stack STACK [--config KEY=VALUE]... [--context CONTEXT]

Reads the PVC, its PV, the training pod(s) and the nodes with the kubernetes client, connected
as the stack's provider connects (its kubernetes:* config, else KUBECONFIG), then decides with
pure functions (`diagnose`): PVC phase (Pending is expected before the first consumer under
WaitForFirstConsumer), the class it used, the PV's node affinity, the training pod's node and
zone, and whether pod and volume share node and zone.
It also recognises node loss: the volume's only node is NotReady or gone, so the pod that
mounts the claim cannot be placed; it says what is lost and the command that heals it.
Exit 0 when everything holds, 1 on a mismatch (with the runbook's remedy), 2 on bad usage or
config, 3 when the cluster cannot be read (no kubeconfig, unreachable, forbidden).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from mlcache.cli.contract import CONFIG_HELP, CONTEXT_HELP, STACK_HELP, ArgumentParser, entry_point
from mlcache.cli.main import prog
from mlcache.cluster.diagnosis import FAIL, expectation_from, render_findings
from mlcache.cluster.live import read_cluster, stack_provider


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.verify"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help=CONFIG_HELP)
    parser.add_argument("--context", help=CONTEXT_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the report")
    args = parser.parse_args(argv)
    from mlcache.preview.render import render_or_refuse  # noqa: PLC0415

    rendered = render_or_refuse(args.stack, args.config, [])  # bad config fails here, before the cluster is asked
    provider = stack_provider(rendered[1], args.context)  # the cluster the stack deploys to
    expect, findings, server = read_cluster(
        lambda namespace: expectation_from(*rendered, namespace, args.stack), provider, args.context
    )
    failed = any(f.level == FAIL for f in findings)
    if args.json:
        document = {
            "stack": args.stack,
            "namespace": expect.namespace,
            "pvc": expect.pvc,
            "storageClass": expect.storage_class,
            "zone": expect.zone,
            "server": server,
            "ok": not failed,
            "findings": [asdict(f) for f in findings],
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"stack {args.stack}: PVC {expect.namespace}/{expect.pvc}, class {expect.storage_class}, "
            f"zone {expect.zone or 'any'}; read from {server}"
        )
        print(render_findings(findings))
    return 1 if failed else 0
