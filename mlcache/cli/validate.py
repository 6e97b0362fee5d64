"""Validate a stack's rendered manifests strictly against Kubernetes OpenAPI schemas and the policy pack.

    mlcache validate --stack dev [--config KEY=VALUE]... [--secret KEY=VALUE]... [--kubernetes-version 1.33]...

Strict mode rejects unknown fields, so a misspelt field fails here instead of being
silently dropped by the API server. The policy pack (policy/) runs over the same objects as
`pulumi up --policy-pack policy` runs it: a mandatory violation fails here as it would fail the
deploy; an advisory one is printed and passes.
"""

from __future__ import annotations

import sys

from mlcache.cli.contract import ArgumentParser, entry_point
from mlcache.cli.main import prog
from mlcache.cli.render import add_config_arguments
from mlcache.preview.policy_check import MANDATORY, policy_findings
from mlcache.preview.render import as_json, ordered_objects, render_or_refuse, sent_documents
from mlcache.preview.validate import TARGET_VERSIONS, kubernetes_minor, kubernetes_minor_from_env, validation_errors


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.validate"), description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        type=kubernetes_minor,
        metavar="MINOR",
        help=f"target version (repeatable; default {', '.join(TARGET_VERSIONS)})",
    )
    args = parser.parse_args(argv)
    versions = tuple(args.versions or (kubernetes_minor_from_env(v) for v in TARGET_VERSIONS))
    run, _ = render_or_refuse(args.stack, args.config, args.secret, args.project)
    sent = sent_documents(run)
    objects = [doc for doc, _ in sent]
    errors = validation_errors(objects, versions, [secret for _, secret in sent])
    for error in errors:
        print(f"invalid: {error}", file=sys.stderr)
    findings = policy_findings(as_json(run)["objects"])
    for finding in findings:
        where = f" ({finding.resource})" if finding.resource else ""
        print(f"policy {finding.policy} ({finding.level}){where}: {finding.message}", file=sys.stderr)
    if errors or any(f.level == MANDATORY for f in findings):
        return 1
    kinds = ", ".join(f"{r.kind}/{r.shown_name}" for r in ordered_objects(run))
    advisory = f" ({len(findings)} advisory)" if findings else ""
    print(
        f"{args.stack}: {len(objects)} objects valid (strict) for Kubernetes {', '.join(versions)} "
        f"and passing the policy pack{advisory}: {kinds}"
    )
    return 0
