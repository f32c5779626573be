"""The `spin-ray` console script: one subcommand per part, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

from spin_ray.errors import SpinRayError

# Subcommand name -> module that defines `register(subparsers)`; each module adds its parser and
# sets `func` on it. Modules are imported only when listed here, so a missing optional part never
# breaks the others.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "spin_ray.store.cli",
    "spin_ray.fitting.cli",
    "spin_ray.data.cli",
    "spin_ray.train.cli",
    "spin_ray.eval.cli",
    "spin_ray.demo.cli",
    "spin_ray.pipeline.cli",
    "spin_ray.launch",
)


def build_parser() -> argparse.ArgumentParser:
    """Parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="spin-ray", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
