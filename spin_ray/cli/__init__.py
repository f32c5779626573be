"""The `spin-ray` console script: every subcommand, one module per subcommand group in this package."""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
from typing import NoReturn

from spin_ray.cli.arg_types import OneLineParser
from spin_ray.errors import SpinRayError

# Each subcommand and the module of this package that registers it (`register(subparsers)` adds its parser
# and sets `func`), in the order `spin-ray --help` lists them. A command imports only its own module:
# `spin-ray store worst` answers without importing torch (~1 s instead of ~5 s).
SUBCOMMANDS = {"store": "store", "data": "data", "fit": "fit", "synth": "synth", "train": "train", "eval": "eval",
               "export-checkpoint": "export_checkpoint", "demo": "demo", "pool": "pool", "launch": "launch"}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Parser with the subcommand `argv` names registered, or every subcommand when it names none of them."""
    parser = OneLineParser(prog="spin-ray", description=__doc__)  # subcommand parsers inherit the class
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    names = [chosen] if chosen in SUBCOMMANDS else list(SUBCOMMANDS)
    for name in names:
        importlib.import_module(f"spin_ray.cli.{SUBCOMMANDS[name]}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn spin-ray errors into one-line messages."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at interpreter exit: a reader that left (`| head`) is met inside the try
        return code
    except BrokenPipeError:
        if not _stdout_reader_left():
            print(f"spin-ray {args.command}: BrokenPipeError: a pipe closed while writing", file=sys.stderr)
            return 1
        return _quiet_sigpipe_exit()
    except SpinRayError as err:
        print(f"spin-ray {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spin-ray {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The console script (and `python -m spin_ray.cli`): main(), then exit with its status."""
    exit_with(main())


def exit_with(code: int) -> NoReturn:
    """Exit with `code`; a run stopped by a signal (128 + its number) exits at once, past native exit handlers.

    A command stopped by SIGINT/SIGTERM has already shut down its actors, Ray and Redis and said so; the
    interpreter's teardown after that crashed with SIGSEGV in about 1 of 3 stops measured (exit -11 in place of
    130, nothing in Python's faulthandler: native exit-time code), which would hide the status from a script.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if code >= 128:
        os._exit(code)
    sys.exit(code)


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on the write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_sigpipe_exit() -> int:
    """Stop as unix tools do when their reader leaves (`| head`): no message, the status of SIGPIPE."""
    # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail and print.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE
