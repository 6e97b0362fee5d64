"""Render a stack offline: every Kubernetes object the program would send, as YAML.

    mlcache render --stack dev [--config KEY=VALUE]... [--secret KEY=VALUE]...
                           [--out DIR] [--summary | --json]

Runs `__main__.py` under the Pulumi SDK's mock engine with the stack's config (Pulumi.yaml
defaults, then Pulumi.<stack>.yaml, then the overrides). Prints the manifests; with --out
writes them to DIR instead (one file each, replacing an earlier render's), and stdout then
carries only --summary or --json if asked. Bad input exits 2 with one line on stderr and
nothing on stdout (mlcache/cli/contract.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from mlcache import CHECKOUT
from mlcache.cli.contract import CONFIG_HELP, STACK_HELP, ArgumentParser, entry_point, project_dir
from mlcache.cli.main import prog
from mlcache.preview.render import (
    as_json,
    documents,
    file_name,
    manifest,
    ordered_objects,
    out_dir,
    render_or_refuse,
    summary,
    to_yaml,
    write_out,
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument(
        "--project",
        type=project_dir,
        default=CHECKOUT,
        metavar="DIR",
        help="the program and its stack files (default: this checkout)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=CONFIG_HELP,
    )
    parser.add_argument(
        "--secret", action="append", default=[], metavar="KEY=VALUE", help="supply a secret config value (never printed)"
    )


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.render"), description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", type=out_dir, metavar="DIR", help="write one file per object into DIR instead of stdout")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--summary", action="store_true", help="print resource options, outputs and warnings")
    formats.add_argument("--json", action="store_true", help="print objects with their engine options as JSON")
    args = parser.parse_args(argv)

    run, _ = render_or_refuse(args.stack, args.config, args.secret, args.project)
    if args.out:
        objects = ordered_objects(run)
        files = {file_name(i, r): to_yaml([manifest(r)]) for i, r in enumerate(objects, start=1)}
        write_out(args.out, files)
        for name in files:
            print(args.out / name, file=sys.stderr)
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.summary:
        sys.stdout.write(summary(run))
    elif args.json:
        sys.stdout.write(json.dumps(as_json(run), indent=1) + "\n")
    elif not args.out:
        sys.stdout.write(to_yaml(documents(run)))
    return 0
