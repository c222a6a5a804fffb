"""The ``medqk`` command: one subcommand per step of the pipeline.

Each package registers its own subcommands (``register(subparsers)`` in its ``commands``
module) and imports its heavy libraries only when a command runs, so ``medqk --help`` is fast.
User mistakes end with a one-line error and exit code 2 (full traceback with -v).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from medqk import console
from medqk.errors import MedqkError

#: Modules with a ``register(subparsers)`` function, in the order of the pipeline.
COMMAND_MODULES = (
    "medqk.commands",          # train, eval
    "medqk.convert.commands",  # convert, inspect
    "medqk.deploy.commands",   # run
    "medqk.energy.commands",   # energy report
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medqk",
        description="MedQKFormer from checkpoint to integer ONNX, Lava (Loihi 2) and energy report.",
        epilog="Run `medqk COMMAND --help` for a command's options.",
    )
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="more detail; full tracebacks on errors")
    level.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.verbosity = 2 if args.verbose else 0 if args.quiet else 1
    try:
        return int(args.func(args) or 0)
    except MedqkError as error:
        if args.verbose:
            raise
        print(f"medqk {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"medqk {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
