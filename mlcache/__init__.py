"""mlcache: a zone-local model cache and the GPU training Job that reads it, as a Pulumi program.

The package's folders are its architecture:
    program/    what `pulumi up` sends: settings, names, the stack outputs, the components
    cluster/    what is in the live cluster: reading it, diagnosis, the bound-cache guard, heal, drift
    preview/    the offline preview: the stack's config read as the CLI reads it, the program run
                under the SDK's mock engine, rendered, diffed and validated
    rehearsal/  the rehearsal cluster: real control plane, kwok nodes from a fleet file, a report
    bench/      benchmarks that print figures side by side
    cli/        the `mlcache` command: one module per subcommand, one exit contract
`__main__.py` (the Pulumi entry) stays at the project root; workloads/ holds the scripts that run
inside the pods, engine/ the Go parts.
"""

from pathlib import Path

# The project directory (the program and its stack files); tools take another as a parameter.
CHECKOUT = Path(__file__).resolve().parent.parent
