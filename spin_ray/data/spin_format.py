"""SPIN's dataset `.npz` format: read with validation, write the same format.

Keys (N samples): imgname (N,) str, center (N,2), scale (N,) = box size / 200, part (N,24,3)
[x, y, visibility] in image pixels; optional openpose (N,25,3), S (N,24,4) [x, y, z, conf] in
metres, pose (N,72) axis-angle, shape (N,10), has_smpl (N,), gender (N,) 'm'/'f'.
A missing optional key means "not available": it is recorded in explicit masks (`has_openpose`,
`has_smpl`, `has_3d`, gender -1), never as zeros that could pass for data. A keypoint with confidence
0 is not annotated: NaN coordinates there are read as 0. Values of single rows (NaN, scale <= 0, a box
outside its image) are judged by data/row_checks.py, not here.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from spin_ray.body.joints import NUM_KEYPOINTS, NUM_OPENPOSE
from spin_ray.errors import DataError

NUM_DATASET_JOINTS = NUM_KEYPOINTS - NUM_OPENPOSE  # 24
POSE_DIM = 72
SHAPE_DIM = 10
GENDER_CODES = {"m": 0, "male": 0, "f": 1, "female": 1, "n": -1, "neutral": -1, "": -1}
UNKNOWN_GENDER = -1

# Key -> shape after the sample axis; None marks a key whose rows are scalars.
_SHAPES: dict[str, tuple[int, ...]] = {
    "imgname": (),
    "center": (2,),
    "scale": (),
    "part": (NUM_DATASET_JOINTS, 3),
    "openpose": (NUM_OPENPOSE, 3),
    "S": (NUM_DATASET_JOINTS, 4),
    "pose": (POSE_DIM,),
    "shape": (SHAPE_DIM,),
    "has_smpl": (),
    "gender": (),
}
REQUIRED_KEYS = ("imgname", "center", "scale", "part")
OPTIONAL_KEYS = ("openpose", "S", "pose", "shape", "has_smpl", "gender")


@dataclass(frozen=True)
class SpinDataset:
    """One SPIN-format dataset in memory: per-sample arrays, availability masks, name, image root."""

    name: str
    image_root: Path
    imgname: np.ndarray  # (N,) str, relative to image_root
    center: np.ndarray  # (N,2) float32, pixels
    scale: np.ndarray  # (N,) float32, box size / 200
    part: np.ndarray  # (N,24,3) float32
    openpose: np.ndarray  # (N,25,3) float32; confidence 0 where not available
    S: np.ndarray  # (N,24,4) float32; meaningful only where has_3d
    pose: np.ndarray  # (N,72) float32; meaningful only where has_smpl
    betas: np.ndarray  # (N,10) float32; meaningful only where has_smpl
    has_openpose: np.ndarray  # (N,) bool: the file had openpose detections for this sample
    has_smpl: np.ndarray  # (N,) bool
    has_3d: np.ndarray  # (N,) bool
    gender: np.ndarray  # (N,) int8: 0 male, 1 female, -1 unknown
    source: Path | None = None  # the .npz it came from, for error messages

    def __len__(self) -> int:
        return len(self.imgname)

    def head(self, count: int) -> SpinDataset:
        """The first `count` rows (all of them when count >= len)."""
        arrays = {f.name: getattr(self, f.name)[:count] for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, **arrays)

    def keypoints49(self) -> np.ndarray:
        """(N,49,3) [x, y, conf] in original image pixels, SPIN's order: openpose(25) then part(24)."""
        return np.concatenate([self.openpose, self.part], axis=1)

    def image_path(self, index: int) -> Path:
        """Absolute path of sample `index`'s image."""
        return self.image_root / str(self.imgname[index])


def _fail(path, key: str | None, message: str) -> DataError:
    where = f"{path}" + (f", key '{key}'" if key else "")
    return DataError(f"{where}: {message}")


def _decode_strings(values: np.ndarray, path, key: str) -> np.ndarray:
    """Bytes or str arrays as a str array; object arrays are refused (they need unpickling)."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind == "U":
        return values
    raise _fail(path, key, f"expected an array of strings, got dtype {values.dtype} "
                           "(re-save it with np.array(list_of_str), not an object array)")


def _validate(arrays: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    """Check keys, shapes and lengths; return arrays converted to the in-memory dtypes."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise _fail(path, None, f"missing required key(s) {missing}; a SPIN dataset file needs "
                                f"{list(REQUIRED_KEYS)} (present: {sorted(arrays)})")
    n = len(arrays["imgname"])
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key not in _SHAPES:
            continue  # other keys (e.g. SPIN's 'maskname', 'partname') are not used here
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != n:
            raise _fail(path, key, f"has {value.shape[0] if value.ndim else 0} rows but imgname has {n} "
                                   "(every key must have one row per sample)")
        if value.shape[1:] != _SHAPES[key]:
            raise _fail(path, key, f"rows have shape {value.shape[1:]}, expected {_SHAPES[key]}")
        if key in ("imgname", "gender"):
            value = _decode_strings(value, path, key)
        elif key == "has_smpl":
            if value.dtype.kind not in "biuf":
                raise _fail(path, key, f"expected numbers 0/1, got dtype {value.dtype}")
            value = value.astype(bool)
        else:
            if value.dtype.kind not in "biuf":
                raise _fail(path, key, f"expected numbers, got dtype {value.dtype}")
            with np.errstate(over="ignore"):  # beyond float32 reads as inf, which the row checks name
                value = value.astype(np.float32)
        out[key] = value
    if ("pose" in out) != ("shape" in out):
        present, absent = ("pose", "shape") if "pose" in out else ("shape", "pose")
        raise _fail(path, absent, f"'{present}' is present without '{absent}'; SMPL ground truth needs both")
    if "has_smpl" in out and "pose" not in out and out["has_smpl"].any():
        raise _fail(path, "has_smpl", "marks samples as having SMPL parameters but the file has no 'pose'")
    if "gender" in out:
        unknown = sorted(set(np.char.lower(np.char.strip(out["gender"]))) - set(GENDER_CODES))
        if unknown:
            raise _fail(path, "gender", f"unknown value(s) {unknown}; use 'm', 'f' (or 'n' for unknown)")
    return out


def _unannotated_to_zero(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints [x, y, conf] with NaN/inf coordinates zeroed where conf is 0 (not annotated, never used)."""
    unused = (keypoints[..., 2] == 0)[..., None] & ~np.isfinite(keypoints[..., :2])
    if not unused.any():
        return keypoints
    return np.concatenate([np.where(unused, 0.0, keypoints[..., :2]), keypoints[..., 2:]], axis=-1).astype(np.float32)


def _from_arrays(arrays: dict[str, np.ndarray], name: str, image_root: Path, source) -> SpinDataset:
    a = _validate(arrays, source)
    # A confidence-0 keypoint is "not annotated": NaN there is allowed in the file but must not reach a loss.
    for key in ("part", "openpose"):
        if key in a:
            a[key] = _unannotated_to_zero(a[key])
    n = len(a["imgname"])
    has_openpose = np.full(n, "openpose" in a)
    has_smpl = a.get("has_smpl", np.ones(n, bool)) if "pose" in a else np.zeros(n, bool)
    if "gender" in a:
        gender = np.array([GENDER_CODES[g] for g in np.char.lower(np.char.strip(a["gender"]))], np.int8)
    else:
        gender = np.full(n, UNKNOWN_GENDER, np.int8)
    return SpinDataset(
        name=name,
        image_root=Path(image_root),
        imgname=a["imgname"],
        center=a["center"],
        scale=a["scale"],
        part=a["part"],
        openpose=a.get("openpose", np.zeros((n, NUM_OPENPOSE, 3), np.float32)),
        S=a.get("S", np.zeros((n, NUM_DATASET_JOINTS, 4), np.float32)),
        pose=a.get("pose", np.zeros((n, POSE_DIM), np.float32)),
        betas=a.get("shape", np.zeros((n, SHAPE_DIM), np.float32)),
        has_openpose=has_openpose,
        has_smpl=has_smpl.astype(bool),
        has_3d=np.full(n, "S" in a),
        gender=gender,
        source=None if source is None else Path(source),
    )


def load_spin_npz(
    path: str | Path, image_root: str | Path, name: str | None = None,
    given_by: str = "data.datasets[].npz in the config",
) -> SpinDataset:
    """Read and validate a SPIN dataset `.npz`; `name` defaults to the file's stem; `given_by` names where the path
    came from, for the error when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file does not exist (check {given_by})")
    try:
        # allow_pickle=False: an .npz from elsewhere must never run code on load.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise DataError(f"{path}: not a readable .npz ({type(err).__name__}: {err}); "
                        "the file is corrupt or truncated, re-create or re-download it") from None
    return _from_arrays(arrays, name or path.stem, Path(image_root), path)


def write_spin_npz(
    path: str | Path,
    *,
    imgname,
    center,
    scale,
    part,
    openpose=None,
    S=None,
    pose=None,
    shape=None,
    has_smpl=None,
    gender=None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a SPIN-format `.npz` (validated first); None leaves an optional key out of the file.

    `extra` adds numeric per-sample keys that SPIN's format does not define (e.g. a synthetic
    camera); readers of SPIN's format ignore them.
    """
    path = Path(path)
    arrays = {"imgname": np.asarray(imgname, dtype=str), "center": center, "scale": scale, "part": part,
              "openpose": openpose, "S": S, "pose": pose, "shape": shape, "has_smpl": has_smpl,
              "gender": None if gender is None else np.asarray(gender, dtype=str)}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    _validate(arrays, path)
    for key, value in (extra or {}).items():
        value = np.asarray(value)
        if key in _SHAPES:
            raise _fail(path, key, "is a SPIN key; pass it by its own argument, not in `extra`")
        if value.dtype.kind not in "biuf" or value.ndim == 0 or value.shape[0] != len(arrays["imgname"]):
            raise _fail(path, key, f"extra keys need one numeric row per sample, got {value.dtype} {value.shape}")
        arrays[key] = value
    return save_npz_atomically(path, arrays)


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """np.savez_compressed to `path` through a temporary file renamed into place; no partial file on any way out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # An interrupted writer never leaves a truncated dataset behind, and the temporary file is removed
    # on any way out (an error, Ctrl-C) so none is left beside it either.
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
