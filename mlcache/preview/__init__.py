"""The offline preview: stack config read as the Pulumi CLI reads it, the program run under the
SDK's mock engine, rendered, diffed and validated, with no CLI and no cluster."""
