"""The contract every command-line tool keeps, whatever it is given (docs/hostile-input.md).

Exit status: 0 done, 1 the tool ran and what it checks failed (its report is on stdout),
2 bad usage or input (one line on stderr, nothing on stdout), 3 the cluster cannot be read,
70 a bug (one line on stderr; MLCACHE_DEBUG=1 re-raises it with the traceback).
A tool's stdout is held until it finishes, so a failure never leaves half an output behind.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import io
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mlcache.errors import Unreachable, UsageError

OK, CHECK_FAILED, USAGE, UNREACHABLE, INTERNAL = 0, 1, 2, 3, 70


# The options every command that reads a stack shares, in the same words.
STACK_HELP = "stack name (Pulumi.<stack>.yaml)"
CONFIG_HELP = "override a key as `pulumi config set --path` would; empty VALUE unsets it"
CONTEXT_HELP = "kubeconfig context (default: the stack's kubernetes:context, else the kubeconfig's current one)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), raised as UsageError; a flag is taken
    only as spelled (`heal --app` is not --apply), and a mistyped one is named before what is missing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        argv = sys.argv[1:] if args is None else list(args)
        tokens = argv[: argv.index("--")] if "--" in argv else argv
        parser, known = self, list(self._option_string_actions)
        for token in tokens:
            subcommands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if subcommands is not None and token in subcommands.choices:
                # The subcommand's flags from here on (its parser is one of these: their class).
                parser = subcommands.choices[token]
                known = [*known, *parser._option_string_actions]
                continue
            flag = token.partition("=")[0]
            if flag.startswith("--") and flag not in known:
                meant = difflib.get_close_matches(flag, known, n=1)
                parser.error(f"unrecognized arguments: {flag}" + (f" (did you mean {meant[0]}?)" if meant else ""))
        return super().parse_args(argv, namespace)


def one_line(text: object) -> str:
    """A message on one line: a library's multi-line error folded (spacing within a line kept)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def project_dir(text: str) -> Path:
    """argparse type: a Pulumi project directory (one that holds a Pulumi.yaml)."""
    path = Path(text)
    if not (path / "Pulumi.yaml").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a Pulumi project directory (no Pulumi.yaml in it)")
    return path


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError:
        # Nothing can reach stdout any more: point it at /dev/null so that the interpreter's
        # own flush at exit does not print a second error.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise


class Main(Protocol):
    """A tool's main: the command line's arguments (sys.argv's when None) to an exit status."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


def entry_point(main: Main) -> Main:
    """Wrap a tool's main(argv) so that any input ends in a documented status and at most one error line."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        held = io.StringIO()
        try:
            with contextlib.redirect_stdout(held):
                code = main(argv)
        except SystemExit as exit_:  # --help (0), or a library's exit with a message
            if not isinstance(exit_.code, int | None):
                print(f"error: {one_line(exit_.code)}", file=sys.stderr)
                return USAGE
            code = exit_.code or OK
        except UsageError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return USAGE
        except Unreachable as err:
            print(f"error: cannot read the cluster: {one_line(err)}", file=sys.stderr)
            return UNREACHABLE
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if os.environ.get("MLCACHE_DEBUG"):
                raise
            # The type and the place only: the message could hold a config value, maybe a secret.
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            print(f"error: internal error ({type(err).__name__} at {where}), please report it", file=sys.stderr)
            return INTERNAL
        if code >= USAGE:
            return code
        try:
            _write_stdout(held.getvalue())
        except OSError as err:
            print(f"error: cannot write the output to stdout: {err.strerror or one_line(err)}", file=sys.stderr)
            return USAGE
        return code

    return run
