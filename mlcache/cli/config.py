"""Derive Pulumi.yaml's `config:` block and docs/configuration.md from the declarations in settings.py.

mlcache config          # rewrite both after changing a setting
mlcache config --check  # exit 1 if either is stale (the tests do the same)
"""

from __future__ import annotations

import sys

from mlcache.cli.contract import ArgumentParser, entry_point
from mlcache.cli.main import prog
from mlcache.program.reference import PULUMI_YAML, REFERENCE, ROOT, pulumi_yaml_text, reference_text, stale


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("mlcache.cli.config"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if Pulumi.yaml or the reference is stale")
    args = parser.parse_args(argv)
    if args.check:
        for path in stale():
            print(f"stale: {path.relative_to(ROOT)} (run mlcache config)", file=sys.stderr)
        return 1 if stale() else 0
    PULUMI_YAML.write_text(pulumi_yaml_text(PULUMI_YAML.read_text()))
    REFERENCE.write_text(reference_text())
    print(f"wrote {PULUMI_YAML.relative_to(ROOT)} and {REFERENCE.relative_to(ROOT)}")
    return 0
