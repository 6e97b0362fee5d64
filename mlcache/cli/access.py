"""Say whether `pulumi preview` can dry-run the stack's updates on the API server with your credentials.

    mlcache access --stack STACK [--config KEY=VALUE]... [--context CONTEXT]

With server-side apply, an update preview is a dry-run apply, so the API server refuses in the
preview what it would refuse at `pulumi up`; without the rights to apply, the provider falls back
to a plain diff without a word. This asks the API server (SelfSubjectAccessReview) for get,
create and patch on every kind the stack's render holds, in its namespace, and names what is
missing; and for the reads the program's bound-cache guard makes before every preview and up
(list claims and Jobs in the namespace, get PersistentVolumes and StorageClasses, list nodes),
without which both fail. It connects as the stack's provider does: `kubernetes:kubeconfig`,
`kubernetes:context` (or --context), `kubernetes:cluster` and `kubernetes:namespace`, else
KUBECONFIG and its context. The PR workflow puts the answer in the job summary beside the real
preview. Exit 0 when the preview can dry-run and the guard can read, 1 when not (what is missing
on stdout), 2 on bad usage or config, 3 when the cluster cannot be read.
"""

from __future__ import annotations

import os

from mlcache.cli.contract import CONFIG_HELP, CONTEXT_HELP, STACK_HELP, ArgumentParser, entry_point
from mlcache.cli.main import prog
from mlcache.cluster.access import NotServed, check, guard_report, report
from mlcache.cluster.bound_cache import provider_client
from mlcache.cluster.kube import Kube
from mlcache.cluster.live import cluster_errors, stack_provider
from mlcache.errors import Unreachable


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.access"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help=STACK_HELP)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help=CONFIG_HELP)
    parser.add_argument("--context", help=CONTEXT_HELP)
    args = parser.parse_args(argv)
    from mlcache.preview.render import as_json, render_or_refuse  # noqa: PLC0415

    run, config = render_or_refuse(args.stack, args.config, [])  # bad config fails here, before the cluster is asked
    objects = [entry["manifest"] for entry in as_json(run)["objects"]]

    provider = stack_provider(config, args.context)  # the cluster, credentials and namespace the stack's provider uses
    try:
        api, namespace = provider_client(provider, os.environ)
    except Exception as err:  # no kubeconfig, unknown context, bad credentials plugin (the client raises many types)
        raise Unreachable(f"no usable kubeconfig ({type(err).__name__}: {err})") from None
    with cluster_errors(Kube(api)):
        try:
            wanted, gaps, unread = check(objects, namespace, api)
        except NotServed as err:
            print(f"stack {args.stack}: pulumi preview cannot dry-run on the API server: {err}")
            return 1
    print(report(args.stack, wanted, gaps))
    if unread:
        print(guard_report(args.stack, unread))
    return 1 if gaps or unread else 0
