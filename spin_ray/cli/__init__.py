"""The `spin-ray` console script: every subcommand, one module per subcommand group in this package."""

from __future__ import annotations

import argparse
import sys

from spin_ray.cli import data, demo, fit, launch, pool, store, synth, train
from spin_ray.cli.arg_types import OneLineParser
from spin_ray.cli import eval as evaluate
from spin_ray.errors import SpinRayError

# In the order `spin-ray --help` lists them; each module's `register(subparsers)` adds its parser
# and sets `func` on it.
SUBCOMMAND_MODULES = (store, data, fit, synth, train, evaluate, demo, pool, launch)


def build_parser() -> argparse.ArgumentParser:
    """Parser with every subcommand registered."""
    parser = OneLineParser(prog="spin-ray", description=__doc__)  # subcommand parsers inherit the class
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn spin-ray errors into one-line messages."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpinRayError as err:
        print(f"spin-ray {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spin-ray {args.command}: interrupted", file=sys.stderr)
        return 130
