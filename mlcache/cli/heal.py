"""Heal a cache lost with its node: re-create the claim so the next pod binds a fresh volume.

    mlcache heal --stack STACK [--config KEY=VALUE]... [--context CONTEXT] [--apply] [--allow-protected]

A single-replica LINSTOR volume lives on one node; when that node is gone, the training pod's
replacement stays Pending for ever (volume node affinity conflict). Only cache data is lost, and
the cache is rebuildable, so the remedy is a new claim: this tool force-deletes the pods still
bound to the dead node that mount the claim, deletes the claim, and runs
`pulumi up --refresh --yes --skip-preview --non-interactive --stack STACK --target CLAIM-URN`, which re-creates it and
nothing else (a setting changed since the last up waits for yours); the
pending pod then binds a fresh volume on a healthy node and the warm-up refills it. After a
protected move, when the lost claim is the new one and the old one is kept on a live node, it
deletes the lost claim and the Jobs that mount it, and prints the steps that restore it from the
kept claim (a move, copied and verified; those steps change settings, so they are yours to run).

Dry run by default: it prints what it would do. It refuses, saying why, when the node is only
cordoned or still Ready, when the volume has more than one replica (LINSTOR fails over by itself),
when the stack protects its cache and --allow-protected is not given, or when it cannot prove the
node is gone: proof is the Node object being deleted, or the node carrying Kubernetes'
`node.kubernetes.io/out-of-service` taint (set by whoever checked it is powered off). A node that
merely stopped reporting (Ready=Unknown) may be partitioned, not dead.
A `secure:` value of the stack file that the offline render cannot read (its check refuses the
placeholder) is given with --config KEY=VALUE; only such keys: every other value comes from the
stack file, so the claim healed is the one `pulumi up` re-creates. The value is trusted: give the
stack's own.
Exit 0 when healed (or, dry run, when it would heal); 1 when it refuses or could not finish (why,
on stdout); 2 on bad usage or config, or --apply without the Pulumi CLI on PATH; 3 when the
cluster cannot be read (no usable kubeconfig, unreachable, forbidden).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from mlcache import CHECKOUT
from mlcache.cli.contract import CHECK_FAILED, CONTEXT_HELP, OK, STACK_HELP, ArgumentParser, UsageError, entry_point
from mlcache.cli.main import prog
from mlcache.cluster.diagnosis import Expectation
from mlcache.cluster.heal import (
    apply_plan,
    connection_blocker,
    plan_heal,
    read_heal_snapshot,
    read_kept,
    render_plan,
    state_urns,
    targeted_up_blocker,
    up_blocker,
)


def checked_secure_overrides(stack: str, overrides: list[str], project_dir: Path) -> list[str]:
    """The --config values, once each is found to set a `secure:` value of the stack file (the
    path compared as `pulumi config set --path` reads it; the value stays secret: the file marks it)."""
    from mlcache.preview.stack_config import StackConfigError, secure_values, split_key, stack_file  # noqa: PLC0415

    def path(key: str) -> tuple[str, tuple[str | int, ...]]:
        top, parts = split_key(key)
        return top, tuple(parts)

    try:
        stack_file(stack, project_dir)
        secure = set()
        for key in secure_values(stack, project_dir):
            with contextlib.suppress(StackConfigError):  # a key no `--config` path can name
                secure.add(path(key))
        for text in overrides:
            typed = text.partition("=")[0].strip()
            if path(typed) not in secure:  # a typed path that cannot be read is its own one-line error
                raise UsageError(
                    f"--config {typed}: heal takes --config only for a `secure:` value of Pulumi.{stack}.yaml, which the "
                    "offline render cannot read; every other value comes from the stack file, which `pulumi up` applies"
                )
    except (StackConfigError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    return overrides


def heal_targets_blocker(stack: str, expect: Expectation, targets: list[str]) -> str | None:
    """Fill `targets` with the URNs heal's `pulumi up` targets: the claim, and the durable copy's
    refresh Job when the state holds it (pinned to the lost node, the program drops it). Why not
    (None: found, and the targeted preview passes)."""
    claim_id = f"{expect.namespace}/{expect.pvc}"
    wanted = {claim_id: "kubernetes:core/v1:PersistentVolumeClaim"}
    if expect.durable is not None:
        wanted[f"{expect.namespace}/{expect.durable.refresh_job}"] = "kubernetes:batch/v1:Job"
    found, why = state_urns(stack, wanted, CHECKOUT)
    if claim_id not in found:
        reason = why or f"the state of stack {stack} holds no claim {claim_id}"
        return f"the claim's URN for `pulumi up --target` cannot be read ({reason}); nothing was changed"
    targets += [found[claim_id], *(urn for key, urn in found.items() if key != claim_id)]
    return targeted_up_blocker(stack, targets, CHECKOUT)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.heal"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the value of a `secure:` key of the stack file, which the offline render cannot read (only those)",
    )
    parser.add_argument("--context", help=CONTEXT_HELP)
    parser.add_argument("--apply", action="store_true", help="act (default: a dry run that prints the plan)")
    parser.add_argument("--allow-protected", action="store_true", help="heal a stack whose cache.protect is true")
    parser.add_argument("--json", action="store_true", help="print the plan (and, with --apply, the outcome) as JSON")
    args = parser.parse_args(argv)
    from mlcache.cluster.diagnosis import expectation_from  # noqa: PLC0415
    from mlcache.cluster.live import cluster_errors, connect, read_durable, read_move, stack_provider  # noqa: PLC0415
    from mlcache.preview.render import render_or_refuse  # noqa: PLC0415

    # Bad config fails here, before the cluster is asked.
    run, stack_config = render_or_refuse(args.stack, checked_secure_overrides(args.stack, args.config, CHECKOUT), [])
    if args.apply and (blocker := connection_blocker(args.stack, stack_config, args.context)):
        raise UsageError(blocker)
    if args.apply and shutil.which("pulumi") is None:
        raise UsageError("--apply re-creates the claim with `pulumi up`: the Pulumi CLI is not on PATH")
    if args.apply and (blocker := up_blocker(args.stack, CHECKOUT)):
        raise UsageError(f"--apply re-creates the claim with `pulumi up` after deleting it: {blocker}")

    def expect_for(namespace: str) -> Expectation:
        return expectation_from(run, stack_config, namespace, args.stack)

    expect, kube = connect(expect_for, stack_provider(stack_config, args.context), args.context)
    with cluster_errors(kube):
        # After a move the cache is a later generation of the claim: heal the one training mounts.
        expect, _, generations = read_move(expect, kube)
        snapshot = read_heal_snapshot(expect, kube)
        kept, jobs = read_kept(expect, generations, kube)
        durable = None
        if expect.durable is not None:
            durable = read_durable(expect.durable.claim, expect.durable.refresh_job, expect.namespace, kube)
    plan = plan_heal(
        snapshot,
        expect,
        protected=expect.protected,
        allow_protected=args.allow_protected,
        durable=durable,
        generations=generations,
        kept=kept,
        jobs=jobs,
    )
    document = {"stack": args.stack, "namespace": expect.namespace, "claim": expect.pvc, "plan": asdict(plan), "applied": False}
    if not args.json:
        print(f"stack {args.stack}: claim {expect.namespace}/{expect.pvc}")
        print(render_plan(plan, args.apply), flush=True)  # the plan before the steps' lines on stderr
    if plan.refusal or not args.apply:
        if args.json:
            print(json.dumps(document, indent=2))
        return CHECK_FAILED if plan.refusal else OK
    targets: list[str] = []
    # Re-created by `pulumi up --target`: what it targets, found and previewed before anything is deleted.
    if not plan.then and (blocker := heal_targets_blocker(args.stack, expect, targets)):
        if args.json:
            print(json.dumps({**document, "plan": {**document["plan"], "refusal": blocker}}, indent=2))
        else:
            print(f"not healed: {blocker}")
        return CHECK_FAILED
    with cluster_errors(kube):
        if args.json:
            # apply_plan reports each outcome on stdout: under --json that text goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                healed = apply_plan(plan, expect, kube, targets)
        else:
            healed = apply_plan(plan, expect, kube, targets)
    if args.json:
        print(json.dumps({**document, "applied": True, "healed": healed}, indent=2))
    return OK if healed else CHECK_FAILED
