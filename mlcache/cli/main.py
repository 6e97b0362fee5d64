"""mlcache: one command for the offline look, the live cluster and the rehearsal.

    mlcache <command> [options]      (mlcache <command> --help for each command's options)

Each command is a module of mlcache/cli/ and keeps the exit contract of mlcache/cli/contract.py:
0 done, 1 the check failed (report on stdout), 2 bad usage or input (one line on stderr), 3 the
cluster cannot be read, 70 a bug. `python -m tools.<module>` keeps working with the same flags
for a deprecation period (users' CI calls it; tools/).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

from mlcache.cli.contract import OK, USAGE

# Command -> its module. The one place a command's name is declared.
COMMANDS = {
    "render": "mlcache.cli.render",
    "diff": "mlcache.cli.diff",
    "validate": "mlcache.cli.validate",
    "verify": "mlcache.cli.verify",
    "access": "mlcache.cli.access",
    "heal": "mlcache.cli.heal",
    "drift": "mlcache.cli.drift",
    "rehearse": "mlcache.cli.rehearse",
    "fleet": "mlcache.cli.fleet",
    "bench": "mlcache.cli.bench",
    "config": "mlcache.cli.config",
    "figures": "mlcache.cli.figures",
    "snapshots": "mlcache.cli.snapshots",
}


def prog(module: str) -> str:
    """A command's name in usage lines and errors: `mlcache render` for mlcache.cli.render."""
    return next(f"mlcache {name}" for name, owner in COMMANDS.items() if owner == module)


def summary(module: str) -> str:
    """The first line of a command module's docstring, read without importing it (help stays instant)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    with open(spec.origin, encoding="utf-8") as source:
        docstring = ast.get_docstring(ast.parse(source.read())) or ""
    return docstring.split("\n\n")[0].replace("\n", " ")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [(__doc__ or "").split("\n\n")[1].strip(), "", "commands:"]
    lines += [f"  {name:<{width}}  {summary(module)}" for name, module in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(f"error: mlcache: a command is required (commands: {', '.join(COMMANDS)}; see mlcache --help)", file=sys.stderr)
        return USAGE
    if args[0] in ("-h", "--help"):
        print(usage())
        return OK
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: mlcache: unknown command {name!r} (commands: {', '.join(COMMANDS)}; see mlcache --help)", file=sys.stderr)
        return USAGE
    return importlib.import_module(COMMANDS[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
