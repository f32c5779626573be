"""Argument types of the `spin-ray` command line: numbers and paths checked when parsed, one-line parse errors.

Use them as `type=` of `add_argument` (e.g. `type=positive_int`): a bad value ends the command with
`spin-ray fit: error: argument --threads: must be a whole number >= 1, got '0' (see spin-ray fit --help)`
and exit code 2, before anything is loaded. `OneLineParser` is the parser class of `spin-ray` and,
through it, of every subcommand's parser.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2), pointing at --help."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        """Print `<prog>: error: <message> (see <prog> --help)` and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _checked(text: str, kind: type, what: str, ok: Callable[[int | float], bool]) -> int | float:
    """`text` as a number of `kind` for which `ok` holds, else the one-line argparse error 'must be {what}'."""
    value = _number(text, kind, what)
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (counts, sizes, threads)."""
    return _checked(text, int, "a whole number >= 1", lambda value: value >= 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (seeds, indices, counts where 0 means something)."""
    return _checked(text, int, "a whole number >= 0", lambda value: value >= 0)


def tcp_port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    return _checked(text, int, "a port number from 1 to 65535", lambda value: 1 <= value <= 65535)


def finite_float(text: str) -> float:
    """Any finite number (no nan, inf)."""
    return _number(text, float, "a finite number")


def positive_float(text: str) -> float:
    """A finite number > 0 (sizes, timeouts, thresholds)."""
    return _checked(text, float, "a finite number > 0", lambda value: value > 0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (errors, thresholds where 0 means something)."""
    return _checked(text, float, "a finite number >= 0", lambda value: value >= 0)


def path_with_suffix(suffix: str) -> Callable[[str], Path]:
    """A path type that appends `suffix` to a name without one and refuses any other suffix."""
    def parse(text: str) -> Path:
        path = Path(text)
        if path.name in ("", ".", "..") or path.is_dir():
            raise argparse.ArgumentTypeError(f"must name a {suffix} file, got the folder {text!r}")
        if path.suffix == "":
            return path.with_name(path.name + suffix)
        if path.suffix != suffix:  # exact: numpy would append .npy to '.NPY'
            raise argparse.ArgumentTypeError(f"must be a {suffix} file, got {text!r} (name it e.g. "
                                             f"{path.with_suffix(suffix).name})")
        return path
    parse.__name__ = f"{suffix.lstrip('.')}_path"
    return parse
