"""Output paths checked before the work: a folder that cannot take the file is one line before hours of fitting."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from spin_ray.errors import InputError


def writable_output(path: Path, flag: str) -> Path:
    """`path` with its folder created and proven writable, else InputError naming `flag` and the folder."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{flag} {path}: cannot write into {folder} ({reason}); choose a writable folder") from None
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path}: the file exists and is not writable; choose another path")
    return path
