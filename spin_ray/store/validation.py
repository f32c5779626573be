"""Checking a batch of rows before it is written: shapes, finite values, names; packed for the keep-best script.

A batch is checked whole before anything is sent, so a bad row writes nothing and the error names it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spin_ray.errors import FitStoreError
from spin_ray.store import records as rec
from spin_ray.store.records import BETAS_SIZE, POSE_SIZE


def as_numpy(value: Any, dtype: Any, name: str) -> np.ndarray:
    """Array from numpy input or a (possibly CUDA) torch tensor, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise FitStoreError(f"{name} cannot be read as {np.dtype(dtype).name} numbers: {err}") from None


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True)
class WriteBatch:
    """A validated batch of rows ready to be sent; built only when every row passed its checks.

    The text columns hold one value a row, or one value for every row (steps, sources, times, updates);
    `updates` may be empty: each stored count + 1. This is how the keep-best script takes them (store/lua.py).
    """

    indices: np.ndarray  # (n,) int64
    fits: np.ndarray  # (n, 82) little-endian float32: each row's pose, then its betas
    errors: list[str]  # n exact decimal texts (repr)
    steps: list[str]
    sources: list[str]
    times: list[str]
    updates: list[str]


def validate_rows(
    dataset: str,
    indices: Any,
    poses: Any,
    betas: Any,
    errors: Any,
    step: Any,
    source: str | Sequence[str],
    times: Any = None,
    updates: Any = None,
) -> WriteBatch:
    """Check a whole batch and pack it; raise FitStoreError naming the first bad row, before any write."""
    rec.check_name("dataset", dataset)
    idx = as_numpy(indices, np.int64, "indices").reshape(-1)
    n = idx.shape[0]
    pose = as_numpy(poses, np.float32, "poses")
    shape = as_numpy(betas, np.float32, "betas")
    err = as_numpy(errors, np.float64, "errors").reshape(-1)
    if pose.ndim != 2 or pose.shape != (n, POSE_SIZE):
        raise FitStoreError(
            f"poses has shape {tuple(pose.shape)}, expected ({n}, {POSE_SIZE}): "
            f"axis-angle of 24 joints for each of the {n} indices"
        )
    if shape.ndim != 2 or shape.shape != (n, BETAS_SIZE):
        raise FitStoreError(f"betas has shape {tuple(shape.shape)}, expected ({n}, {BETAS_SIZE})")
    if err.shape != (n,):
        raise FitStoreError(f"errors has {err.shape[0]} values, expected one per index ({n})")
    if (idx < 0).any():
        row = _first_bad_row(idx < 0)
        raise FitStoreError(f"indices[{row}] is {idx[row]}: sample indices are rows of a dataset, >= 0")
    bad_error = ~np.isfinite(err) | (err < 0)
    if bad_error.any():
        row = _first_bad_row(bad_error)
        raise FitStoreError(
            f"errors[{row}] (sample {dataset}:{idx[row]}) is {err[row]}: a fit error must be finite and >= 0 "
            f"(do not write failed fits; a negative error would never be replaced)"
        )
    fits = np.concatenate((pose, shape), axis=1, dtype=rec.FLOAT32_LE)  # the script's layout, in one call
    if not np.isfinite(fits).all():  # one check of the batch; the row is looked for only when it fails
        for name, arr in (("poses", pose), ("betas", shape)):
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                row = _first_bad_row(bad)
                raise FitStoreError(f"{name}[{row}] (sample {dataset}:{idx[row]}) holds NaN or inf")
    steps = as_numpy(step, np.int64, "step")
    steps = steps.reshape(1) if steps.ndim == 0 else steps.reshape(-1)
    if steps.shape not in ((1,), (n,)) or (steps < 0).any():
        raise FitStoreError(f"step must be one integer >= 0 or one per index ({n}), got {step!r}")
    sources = [source] if isinstance(source, str) else [str(s) for s in source]
    if len(sources) not in (1, n):
        raise FitStoreError(f"source must be one name or one per index ({n}), got {len(sources)}")
    for s in set(sources):
        rec.check_source(s)
    if times is None:
        time_list = [rec.format_float(time.time())]
    else:
        t = as_numpy(times, np.float64, "times").reshape(-1)
        if t.shape != (n,) or not np.isfinite(t).all():
            raise FitStoreError(f"times must be {n} finite Unix times")
        time_list = [rec.format_float(v) for v in t.tolist()]
    if updates is None:
        update_list = []
    else:
        u = as_numpy(updates, np.int64, "updates").reshape(-1)
        if u.shape != (n,) or (u < 1).any():
            raise FitStoreError(f"updates must be {n} integers >= 1")
        update_list = [str(v) for v in u.tolist()]
    return WriteBatch(
        indices=idx,
        fits=fits,
        errors=list(map(repr, err.tolist())),  # Python floats: repr is rec.format_float, without a call a row
        steps=[str(v) for v in steps.tolist()],
        sources=sources,
        times=time_list,
        updates=update_list,
    )


@dataclass(frozen=True)
class SampleGroups:
    """Rows of a mixed-dataset batch that can be written, grouped by dataset in first-seen order."""

    size: int  # rows in the whole batch
    groups: list[tuple[str, np.ndarray]]  # (dataset, row numbers into the batch) with finite rows only


def group_finite_rows(datasets: str | Sequence[str], n: int, pose: np.ndarray, betas: np.ndarray,
                      error: np.ndarray) -> SampleGroups:
    """Group rows by dataset, leaving out rows whose error, pose or betas are not finite."""
    names = [datasets] * n if isinstance(datasets, str) else [str(d) for d in datasets]
    if len(names) != n:
        raise FitStoreError(f"datasets must be one name or one per row ({n}), got {len(names)}")
    for label, arr in (("pose", pose), ("betas", betas), ("error", error)):
        if arr.shape[:1] != (n,):
            raise FitStoreError(f"{label} has shape {tuple(arr.shape)}, expected {n} rows (one per index)")
    if n == 0:
        return SampleGroups(size=0, groups=[])
    finite = (
        np.isfinite(error)
        & np.isfinite(pose.reshape(n, -1)).all(axis=1)
        & np.isfinite(betas.reshape(n, -1)).all(axis=1)
    )
    by_name = np.asarray(names, dtype=object)
    groups = []
    for name in dict.fromkeys(names):
        rows = np.flatnonzero((by_name == name) & finite)
        if rows.size:
            groups.append((name, rows))
    return SampleGroups(size=n, groups=groups)
