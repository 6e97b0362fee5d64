"""Heal a cache lost with its node: re-create the claim so the next pod binds a fresh volume.

    mlcache heal --stack STACK [--context CONTEXT] [--apply] [--allow-protected]

A single-replica LINSTOR volume lives on one node; when that node is gone, the training pod's
replacement stays Pending for ever (volume node affinity conflict). Only cache data is lost, and
the cache is rebuildable, so the remedy is a new claim: this tool force-deletes the pods still
bound to the dead node that mount the claim, deletes the claim, and runs
`pulumi up --refresh --yes --stack STACK`, which re-creates it (nothing else is replaced); the
pending pod then binds a fresh volume on a healthy node and the warm-up refills it.

Dry run by default: it prints what it would do. It refuses, saying why, when the node is only
cordoned or still Ready, when the volume has more than one replica (LINSTOR fails over by itself),
when the stack protects its cache and --allow-protected is not given, or when it cannot prove the
node is gone: proof is the Node object being deleted, or the node carrying Kubernetes'
`node.kubernetes.io/out-of-service` taint (set by whoever checked it is powered off). A node that
merely stopped reporting (Ready=Unknown) may be partitioned, not dead.
Exit 0 when healed (or, dry run, when it would heal); 1 when it refuses or could not finish (why,
on stdout); 2 on bad usage or config, or --apply without the Pulumi CLI on PATH; 3 when the
cluster cannot be read (no usable kubeconfig, unreachable, forbidden).
"""

from __future__ import annotations

import shutil

from mlcache.cli.contract import CHECK_FAILED, OK, ArgumentParser, UsageError, entry_point
from mlcache.cli.main import prog
from mlcache.cluster.diagnosis import Expectation
from mlcache.cluster.heal import apply_plan, plan_heal, read_heal_snapshot, render_plan


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.heal"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--apply", action="store_true", help="act (default: a dry run that prints the plan)")
    parser.add_argument("--allow-protected", action="store_true", help="heal a stack whose cache.protect is true")
    args = parser.parse_args(argv)
    from mlcache.cluster.diagnosis import expectation_from_outputs  # noqa: PLC0415
    from mlcache.cluster.live import cluster_errors, connect, read_move  # noqa: PLC0415
    from mlcache.preview.render import render_or_refuse  # noqa: PLC0415

    run, stack_config = render_or_refuse(args.stack, [], [])  # bad config fails here, before the cluster is asked
    if args.apply and shutil.which("pulumi") is None:
        raise UsageError("--apply re-creates the claim with `pulumi up`: the Pulumi CLI is not on PATH")

    def expect_for(namespace: str) -> Expectation:
        return expectation_from_outputs(run.outputs, stack_config.values.get("mlcache:namespace") or namespace, args.stack)

    expect, core, serialize = connect(expect_for, args.context)
    protected = any(r.protect for r in run.find("PersistentVolumeClaim"))
    with cluster_errors():
        # After a move the cache is a later generation of the claim: heal the one training mounts.
        expect, _ = read_move(expect, core, serialize)
        snapshot = read_heal_snapshot(expect, core, serialize)
    plan = plan_heal(snapshot, expect, protected=protected, allow_protected=args.allow_protected)
    print(f"stack {args.stack}: claim {expect.namespace}/{expect.pvc}")
    print(render_plan(plan, args.apply))
    if plan.refusal:
        return 1
    if not args.apply:
        return 0
    with cluster_errors():
        return OK if apply_plan(plan, expect, core) else CHECK_FAILED
