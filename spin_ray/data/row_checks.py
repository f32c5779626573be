"""Which rows of a SPIN-format dataset cannot be used and why: one check for fit, train and eval.

A row is bad when (first failing rule wins, in this order):
- its center or scale is NaN/inf, or its scale is not > 0 (scale is the box side / 200);
- a keypoint confidence is NaN/inf or outside [0, 1];
- a keypoint with confidence > 0 has NaN/inf coordinates, or coordinates beyond +-MAX_COORDINATE px (an
  absurd magnitude; a value beyond float32's range reads as inf). A keypoint with confidence 0 is "not
  annotated": its coordinates are never used, so NaN there is fine (the loader zeroes them);
- its 3D joints `S` (where the file has them) or SMPL pose/shape (where has_smpl) hold NaN/inf;
- its person box (center +- 100 * scale) does not overlap the image. Where the image size is not
  known, the box must at least reach into x > 0 and y > 0 (no image has pixels left of or above 0).
Shapes and dtypes are checked earlier, when the file is read (spin_format.load_spin_npz).
What happens to bad rows is data.bad_samples: "raise" refuses the dataset with one line naming the
first bad row; "skip" leaves them out (fit: not fitted; train: passed over; eval: not evaluated).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from spin_ray.body.joints import SPIN49_NAMES
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.spin_format import SpinDataset
from spin_ray.errors import DataError

BadSamples = Literal["skip", "raise"]
# No photo is a million pixels across; a keypoint beyond this is a unit or export error, and its square
# (in the reprojection losses) would overflow float32 long before 1e38.
MAX_COORDINATE = 1e6
SKIP_HINT = "set data.bad_samples: skip (or --bad-samples skip) to skip such rows"

# Reason keys, in the order they are checked, and what each says about a row.
REASONS: dict[str, str] = {
    "center": "center is NaN or inf",
    "scale": "scale is not a positive finite number (box side / 200)",
    "confidence": "a keypoint confidence is NaN, inf or outside [0, 1]",
    "keypoint": f"a keypoint with confidence > 0 has NaN, inf or absurd (beyond +-{MAX_COORDINATE:g} px) coordinates",
    "S": "S (3D joints) holds NaN or inf",
    "smpl": "pose or shape holds NaN or inf although has_smpl is set",
    "box": "the person box does not overlap the image",
}


def plausible(coordinates: np.ndarray) -> np.ndarray:
    """Elementwise: finite and within +-MAX_COORDINATE (False for NaN, inf and absurd magnitudes)."""
    with np.errstate(invalid="ignore"):
        return np.abs(coordinates) <= MAX_COORDINATE


def box_overlaps_image(center: np.ndarray, scale: np.ndarray, size: np.ndarray | None = None) -> np.ndarray:
    """(N,) whether each box center (N,2) +- 100*scale (N,) overlaps its image (N,2) [w, h]; NaN size: any x, y > 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        half = SCALE_UNIT_PX * np.asarray(scale, np.float64) / 2.0
        lo = np.asarray(center, np.float64) - half[:, None]
        hi = np.asarray(center, np.float64) + half[:, None]
        limit = np.full_like(lo, np.inf) if size is None else np.asarray(size, np.float64)
        limit = np.where(np.isnan(limit), np.inf, limit)
        return ((hi > 0) & (lo < limit)).all(axis=1)


@dataclass(frozen=True)
class RowCheck:
    """The outcome of check_rows: a reason key per row ("" for a usable row) and what is needed to explain it."""

    spin: SpinDataset
    reason: np.ndarray  # (N,) str: a key of REASONS, "" where the row is usable
    image_size: np.ndarray | None  # (N,2) [w, h], NaN where unknown; None: no image was looked at

    @property
    def bad(self) -> np.ndarray:
        """(N,) bool: rows that cannot be used."""
        return self.reason != ""

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: rows that pass every check."""
        return self.reason == ""

    def where(self, row: int) -> str:
        """'dataset 'name' row i (imgname)', for messages."""
        return f"dataset '{self.spin.name}' row {row} ({self.spin.imgname[row]})"

    def detail(self, row: int) -> str:
        """Why `row` is bad, with its values (empty for a usable row)."""
        return describe(self.spin, row, str(self.reason[row]), None if self.image_size is None else self.image_size[row])

    def error(self) -> DataError:
        """One line: the dataset, the first bad row, why, how many others, and how to skip them."""
        rows = np.flatnonzero(self.bad)
        source = f" of {self.spin.source}" if self.spin.source is not None else ""
        others = f"; {len(rows) - 1} other row(s) of {len(self.spin)} are bad too" if len(rows) > 1 else ""
        return DataError(f"{self.where(int(rows[0]))}{source}: {self.detail(int(rows[0]))}{others} ({SKIP_HINT})")

    def summary(self, examples: int = 3) -> str:
        """'skipping K of N rows ...' with the first reasons, for a warning."""
        rows = np.flatnonzero(self.bad)
        first = "; ".join(f"row {r} ({self.spin.imgname[r]}): {self.detail(int(r))}" for r in rows[:examples])
        more = ", ..." if len(rows) > examples else ""
        counts = ", ".join(f"{int((self.reason == key).sum())} {key}" for key in REASONS if (self.reason == key).any())
        return (f"dataset '{self.spin.name}': skipping {len(rows)} of {len(self.spin)} rows with bad annotations "
                f"({counts}): {first}{more}")

    def enforce(self, policy: BadSamples, report: Callable[[str], None] | None = None) -> np.ndarray:
        """Usable-row mask; under "raise" a bad row raises the one-line error, under "skip" the summary is
        reported once (a UserWarning unless `report` is given)."""
        if self.bad.any():
            if policy == "raise":
                raise self.error()
            if report is None:
                warnings.warn(self.summary(), stacklevel=2)
            else:
                report(self.summary())
        return self.usable


def check_rows(spin: SpinDataset, image_size: np.ndarray | None = None) -> RowCheck:
    """Check every row of `spin` at once; `image_size` (N,2) [w, h] (NaN where unknown) enables the full box check."""
    keypoints = spin.keypoints49()
    conf = keypoints[..., 2]
    with np.errstate(invalid="ignore"):
        failing = {
            "center": ~np.isfinite(spin.center).all(axis=1),
            "scale": ~(np.isfinite(spin.scale) & (spin.scale > 0)),
            "confidence": ~((conf >= 0) & (conf <= 1)).all(axis=1),  # NaN fails both comparisons
            "keypoint": ((conf > 0) & ~plausible(keypoints[..., :2]).all(axis=-1)).any(axis=1),
            "S": spin.has_3d & ~np.isfinite(spin.S).reshape(len(spin), -1).all(axis=1) if len(spin) else spin.has_3d,
            "smpl": spin.has_smpl & ~(np.isfinite(spin.pose).all(axis=1) & np.isfinite(spin.betas).all(axis=1)),
            "box": ~box_overlaps_image(spin.center, spin.scale, image_size),
        }
    reason = np.full(len(spin), "", dtype=f"<U{max(map(len, REASONS))}")
    for key in reversed(REASONS):  # the first failing rule in REASONS' order names the row
        reason = np.where(failing[key], key, reason)
    return RowCheck(spin, reason, None if image_size is None else np.asarray(image_size, np.float64))


def describe(spin: SpinDataset, row: int, key: str, size: np.ndarray | None = None) -> str:
    """The reason `key` for `row` in words, with the offending values."""
    if key == "center":
        return f"center is {_rounded(spin.center[row])} ({REASONS[key]})"
    if key == "scale":
        return f"scale is {float(spin.scale[row])} (must be a positive box side / 200)"
    keypoints = spin.keypoints49()[row]
    if key == "confidence":
        j = int(np.flatnonzero(~((keypoints[:, 2] >= 0) & (keypoints[:, 2] <= 1)))[0])
        return f"keypoint {j} ({SPIN49_NAMES[j]}) has confidence {float(keypoints[j, 2])} (must be in [0, 1])"
    if key == "keypoint":
        j = int(np.flatnonzero((keypoints[:, 2] > 0) & ~plausible(keypoints[:, :2]).all(axis=1))[0])
        why = ("NaN or inf; a value beyond float32's range (+-3.4e38) reads as inf"
               if not np.isfinite(keypoints[j, :2]).all() else f"an absurd magnitude, beyond +-{MAX_COORDINATE:g} px")
        return (f"keypoint {j} ({SPIN49_NAMES[j]}) is at {_coordinates(keypoints[j, :2])} with confidence "
                f"{float(keypoints[j, 2])} ({why}; set its confidence to 0 if it is not annotated)")
    if key == "box":
        cx, cy = spin.center[row]
        side = SCALE_UNIT_PX * float(spin.scale[row])
        known = size is not None and np.isfinite(size).all()
        image = f"the {int(size[0])}x{int(size[1])} image" if known else "the image (it must reach x > 0 and y > 0)"
        return f"box of side {side:.1f} px centred at ({cx:.1f}, {cy:.1f}) lies wholly outside {image}"
    return REASONS.get(key, "")


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in values]


def _coordinates(values: np.ndarray) -> str:
    """'[12.5, inf]' or '[3e+30, 40.0]': pixels to 0.1, huge values in short scientific notation."""
    return "[" + ", ".join(f"{v:.3g}" if np.isfinite(v) and abs(v) >= 1e6 else str(round(float(v), 1))
                           for v in values) + "]"


def image_sizes(spin: SpinDataset) -> np.ndarray:
    """(N,2) [w, h] of each row's image read from its header, NaN where the image is missing or unreadable."""
    return image_sizes_of(spin.imgname, spin.image_root)


def image_sizes_of(imgname: np.ndarray, image_root: str | Path) -> np.ndarray:
    """(N,2) [w, h] of each image (relative to `image_root`) read from its header, NaN where missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    sizes = np.full((len(imgname), 2), np.nan)
    known: dict[str, tuple[int, int]] = {}  # many rows can share one image
    for row, name in enumerate(imgname):
        name = str(name)
        if name not in known:
            path = Path(image_root) / name
            try:
                with Image.open(path) as image:  # reads the header only
                    known[name] = image.size
            except (OSError, UnidentifiedImageError, ValueError):
                known[name] = (np.nan, np.nan)
        sizes[row] = known[name]
    return sizes
