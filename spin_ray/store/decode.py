"""Records read from Redis to arrays, every field checked: a record that fails is named with what was found.

A record is sound when every field is present, pose and betas are exactly 72 and 10 finite float32,
error is a finite number >= 0, step an integer >= 0, source a known source, updates an integer >= 1
and time a finite number. Anything else is corrupt: a strict read refuses it, a skipping read (training,
`export --skip-corrupt`) treats it as "no fit" and lists it in `StoredFits.corrupt`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from spin_ray.errors import FitStoreError
from spin_ray.store.records import (
    BETAS_BYTES,
    BETAS_SIZE,
    FLOAT32_LE,
    POSE_BYTES,
    POSE_SIZE,
    RECORD_FIELDS,
    SOURCES,
    BadRecord,
    StoredFits,
)

SHOWN_KEYS = 5  # bad keys named in one message; the rest are counted
_LENGTHS = {"pose": POSE_BYTES, "betas": BETAS_BYTES}


class _Bad(Exception):
    """One record's first problem: (reason, found)."""


def _number(field: str, data: bytes, kind: type, low: float) -> float | int:
    try:
        value = kind(data.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise _Bad(f"{field}: not a number", f"{data[:40]!r}") from None
    if not math.isfinite(value):
        raise _Bad(f"{field}: not finite", repr(value))
    if value < low:
        raise _Bad(f"{field}: {'negative' if low == 0 else f'below {low}'}", repr(value))
    return value


def parse_fields(fields: tuple[bytes | None, ...]) -> tuple[float, int, str, int, float]:
    """(error, step, source, updates, time) of a record's RECORD_FIELDS, raising _Bad at the first problem.

    Pose and betas are checked for length here and for finite values in `decode_records` (batched).
    """
    for name, data in zip(RECORD_FIELDS, fields):
        if data is None:
            raise _Bad(f"{name}: missing", "no such field")
        if name in _LENGTHS and len(data) != _LENGTHS[name]:
            raise _Bad(f"{name}: wrong length", f"{len(data)} bytes, expected {_LENGTHS[name]}")
    _, _, err, stp, src, upd, tim = fields
    error = _number("error", err, float, 0)
    step = _number("step", stp, int, 0)
    name = src.decode("ascii", errors="replace")
    if name not in SOURCES:
        raise _Bad("source: unknown", f"{name[:20]!r}, expected one of {', '.join(SOURCES)}")
    updates = _number("updates", upd, int, 1)
    stamp = _number("time", tim, float, -math.inf)
    return error, step, name, updates, stamp


def check_fields(key: str, fields: tuple[bytes | None, ...]) -> BadRecord | None:
    """The record's first problem, or None if it is sound (pose and betas values included)."""
    try:
        parse_fields(fields)
    except _Bad as bad:
        return BadRecord(key, *bad.args)
    for name, size in (("pose", POSE_SIZE), ("betas", BETAS_SIZE)):
        values = np.frombuffer(fields[RECORD_FIELDS.index(name)], dtype=FLOAT32_LE, count=size)
        if not np.isfinite(values).all():
            return BadRecord(key, f"{name}: not finite", f"{int((~np.isfinite(values)).sum())} NaN/inf values")
    return None


def describe(bad: list[BadRecord] | tuple[BadRecord, ...]) -> str:
    """The first few bad records with what was found, and how many more there are."""
    shown = ", ".join(str(b) for b in bad[:SHOWN_KEYS])
    more = len(bad) - SHOWN_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def refuse_corrupt(bad: list[BadRecord] | tuple[BadRecord, ...], what: str, extra_fix: str = "") -> None:
    """Raise FitStoreError naming the corrupt records met while `what`, if there are any."""
    if bad:
        raise FitStoreError(
            f"{what}: {len(bad)} corrupt record(s): {describe(bad)}; run `spin-ray store check --repair` "
            f"to quarantine them{extra_fix}"
        )


def decode_records(
    key_of: Callable[[int], str], pattern: str, idx: np.ndarray, replies: list[tuple[bytes | None, ...]],
    skip_corrupt: bool = False,
) -> StoredFits:
    """Arrays from the records' fields (the record of index i is at key_of(i); `pattern` names them all), every field checked first.

    A record with no field at all is absent (found False). A corrupt one raises FitStoreError naming it,
    or with `skip_corrupt` reads as absent and is listed in `corrupt`.
    """
    n = idx.shape[0]
    found = np.zeros(n, dtype=bool)
    error = np.full(n, np.nan)
    step = np.full(n, -1, dtype=np.int64)
    updates = np.zeros(n, dtype=np.int64)
    stamp = np.full(n, np.nan)
    source = np.full(n, "", dtype="<U6")
    pose_parts: list[bytes] = []
    betas_parts: list[bytes] = []
    zero_pose, zero_betas = bytes(POSE_BYTES), bytes(BETAS_BYTES)
    bad: list[BadRecord] = []
    for i, fields in enumerate(replies):
        try:
            if all(f is None for f in fields):
                raise LookupError
            error[i], step[i], source[i], updates[i], stamp[i] = parse_fields(fields)
        except LookupError:
            pose_parts.append(zero_pose)
            betas_parts.append(zero_betas)
            continue
        except _Bad as problem:
            bad.append(BadRecord(key_of(int(idx[i])), *problem.args))
            pose_parts.append(zero_pose)
            betas_parts.append(zero_betas)
            continue
        found[i] = True
        pose_parts.append(fields[0])
        betas_parts.append(fields[1])
    pose = np.frombuffer(b"".join(pose_parts), dtype=FLOAT32_LE).reshape(n, POSE_SIZE).astype(np.float32)
    betas = np.frombuffer(b"".join(betas_parts), dtype=FLOAT32_LE).reshape(n, BETAS_SIZE).astype(np.float32)
    for name, values in (("pose", pose), ("betas", betas)):
        for i in np.flatnonzero(found & ~np.isfinite(values).all(axis=1)).tolist():
            count = int((~np.isfinite(values[i])).sum())
            bad.append(BadRecord(key_of(int(idx[i])), f"{name}: not finite", f"{count} NaN/inf values"))
            found[i] = False
    if bad:
        if not skip_corrupt:
            refuse_corrupt(bad, f"reading {pattern}")
        gone = ~found
        pose[gone], betas[gone], error[gone], step[gone], updates[gone], stamp[gone], source[gone] = (
            0, 0, np.nan, -1, 0, np.nan, ""
        )
    return StoredFits(idx, found, pose, betas, error, step, source, updates, stamp, corrupt=tuple(bad))
