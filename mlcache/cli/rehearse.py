"""Rehearse a stack before deploying it: where would the scheduler put the cache and its pods?

    mlcache rehearse --stack STACK [--config KEY=VALUE]... [--fleet FILE] [--keep]
                             [--timeout SECONDS] [--json]

Starts the rehearsal cluster (scripts/local-cluster: the real API server, scheduler, controller
manager, kwok fake nodes from a fleet file, the storage provisioner stand-ins), runs the stack's
`pulumi up` against it with the real CLI (file backend in a temp dir, the
stack's config layered as the CLI does, secure values as placeholders), watches pods, claims and
events until the scheduler settles, and prints the placement report with mlcache verify's
findings. Exit 0 when every pod that mounts the cache is placed with it, 1 when something is not
(the report says why and what to change), 2 for usage or set-up errors. With --json, stdout is one
JSON document instead (`placement_document`: stack, ok, volumes, pods, problems), which
`mlcache diff --markdown --placement DIR` shows in the PR comment.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from mlcache import CHECKOUT
from mlcache.cli.contract import CONFIG_HELP, STACK_HELP, ArgumentParser, UsageError, entry_point
from mlcache.cli.main import prog
from mlcache.preview.render import render_or_refuse
from mlcache.program.outputs import StackOutputs
from mlcache.rehearsal.cluster import DEFAULT_TIMEOUT, Rehearsal, SetupError, UpFailed, stderr_progress
from mlcache.rehearsal.fleet import FleetError
from mlcache.rehearsal.fleet import load as load_fleet
from mlcache.rehearsal.report import placement_document, render_report

MAX_TIMEOUT = 86400.0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.rehearse"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help=CONFIG_HELP)
    parser.add_argument("--fleet", type=Path, help="fleet file (default: the runbook's fleet), or `kubectl get nodes -o yaml`")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and print its kubeconfig")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the scheduler to settle")
    parser.add_argument("--json", action="store_true", help="print the placement as one JSON document instead of the report")
    args = parser.parse_args(argv)
    run, stack_config = render_or_refuse(args.stack, args.config, [])  # the program's own validation, before anything starts
    try:
        if args.fleet:
            load_fleet(args.fleet)  # scripts/local-cluster reads it the same way; a bad file stops here
    except FleetError as err:
        raise UsageError(str(err)) from None
    if not 0 < args.timeout <= MAX_TIMEOUT:  # nan and inf too: the waits take a deadline a clock can hold
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds, at most {MAX_TIMEOUT:g} (a day)")
    read = StackOutputs.read(run.outputs)
    benchmark = read.benchmark_job is not None
    if stack_config.moves_by_copy():
        print(
            "rehearse: cache.relocate is copy, but a rehearsal starts from an empty cluster: there is no cache to move, "
            "so this shows where a first deploy of these settings lands (`mlcache diff` previews the move itself)",
            file=sys.stderr,
        )
    # A TERM (a CI job cancelled, `timeout`) stops the cluster and removes its files, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        jobset = read.run.nodes > 1 and read.run.engine == "jobset"
        with Rehearsal(
            fleet=args.fleet, complete_jobs=benchmark, jobset=jobset, keep=args.keep, progress=stderr_progress()
        ) as rehearsal:
            try:
                outputs = rehearsal.up(args.stack, args.config)
            except UpFailed as err:
                failed = f"pulumi up failed against the rehearsal cluster (it would fail the same way on yours):\n{err}"
                if args.json:  # stdout stays one JSON document; the job log gets the whole error too
                    print(failed, file=sys.stderr)
                    failed = json.dumps({"stack": args.stack, "ok": False, "error": failed}, indent=2)
                print(failed)
                return 1
            report = rehearsal.report(args.stack, outputs, args.timeout)
            sys.stdout.write(json.dumps(placement_document(report), indent=2) + "\n" if args.json else render_report(report))
            if args.keep:
                told = sys.stderr if args.json else sys.stdout  # --json keeps stdout one JSON document
                print(f"\nThe cluster keeps running: export KUBECONFIG={rehearsal.kubeconfig}", file=told)
                print(
                    f"Its stack, for drift and heal: cd {rehearsal.project} && . {rehearsal.write_env()} && "
                    f"venv/bin/python -m mlcache drift --stack {args.stack}",
                    file=told,
                )
                stop = CHECKOUT / "scripts" / "local-cluster"  # a path that works from any directory
                print(f"Stop it with: {stop} stop {rehearsal.cluster} && rm -rf {rehearsal.work}", file=told)
            return report.exit_code
    except SetupError as err:
        raise UsageError(str(err)) from None
    except (ApiException, HTTPError) as err:
        reason = f"{err.status} {err.reason}" if isinstance(err, ApiException) else str(err)
        raise UsageError(f"the rehearsal cluster stopped answering: {reason}") from None
