"""Read SMPL-layout body model files (.npz, or official .pkl without chumpy) into validated numpy arrays."""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import scipy.sparse

from spin_ray.body.joints import (
    EXTRA_KEYPOINT_NAMES,
    NUM_EXTRA_KEYPOINTS,
    NUM_SMPL_JOINTS,
    SMPL_EXTRA_VERTEX_IDS,
)
from spin_ray.errors import BodyModelError

NUM_POSE_BASIS = 9 * (NUM_SMPL_JOINTS - 1)
NUM_H36M_JOINTS = 17
EMBEDDED_MODEL_FILE = "open_body_model.npz"
# Where SPIN's regressors come from, for error messages.
_SPIN_DATA_HINT = "SPIN's data archive (fetch_data.sh in github.com/nkolot/SPIN puts it under data/)"


@dataclasses.dataclass(frozen=True, eq=False)
class BodyModelArrays:
    """A validated SMPL-layout body model as read-only numpy arrays, named by a hash of their content."""

    source: str
    v_template: np.ndarray  # (V, 3) float32, metres
    faces: np.ndarray  # (F, 3) int64
    shapedirs: np.ndarray  # (V, 3, num_betas) float32
    posedirs: np.ndarray  # (V, 3, 207) float32
    J_regressor: np.ndarray  # (24, V) float32, dense
    weights: np.ndarray  # (V, 24) float32
    parents: np.ndarray  # (24,) int64, parents[0] == -1
    keypoint_regressor: np.ndarray  # (20, V) float32, rows are EXTRA_KEYPOINT_NAMES
    J_regressor_h36m: np.ndarray | None  # (17, V) float32 or None
    sha256: str

    @property
    def num_vertices(self) -> int:
        """Number of mesh vertices V."""
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        """Number of shape coefficients kept."""
        return int(self.shapedirs.shape[-1])


def embedded_model_path() -> Path:
    """Path of the embedded open body model shipped with the package (it may not be built yet)."""
    return Path(__file__).parent / "assets" / EMBEDDED_MODEL_FILE


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of official SMPL .pkl files.


class _ChumpyShim:
    """Stands in for any chumpy class: keeps the pickled state, whose array (if any) is under 'x'."""

    chumpy_class = "chumpy"

    def __init__(self, *args, **kwargs) -> None:
        self.state: dict = {}

    def __setstate__(self, state) -> None:
        # chumpy pickles a dict; Python 2 files may pickle (dict, slots) pairs.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"state": state}


def _numpy_core_attr(name: str):
    """numpy.core.multiarray was renamed numpy._core.multiarray in numpy 2."""
    from numpy._core import multiarray

    return getattr(multiarray, name)


# (module, name) -> what the unpickler gets. Everything else is refused: a pickle can call any
# global it names, so only pure data constructors are allowed.
_ALLOWED_GLOBALS: Mapping[tuple[str, str], object] = MappingProxyType({
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    # Plain containers: chumpy's pickled state holds sets and tuples (e.g. its dirty-variable set).
    **{(module, cls.__name__): cls for module in ("__builtin__", "builtins")
       for cls in (object, set, frozenset, list, dict, tuple, slice)},
    ("_codecs", "encode"): __import__("_codecs").encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_core_attr("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_core_attr("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): _numpy_core_attr("scalar"),
    ("numpy._core.multiarray", "scalar"): _numpy_core_attr("scalar"),
})
_SPARSE_CLASSES = {"csc_matrix": scipy.sparse.csc_matrix, "csr_matrix": scipy.sparse.csr_matrix}
_SPARSE_MODULES = {"scipy.sparse.csc", "scipy.sparse.csr", "scipy.sparse._csc", "scipy.sparse._csr", "scipy.sparse"}


class _SmplUnpickler(pickle.Unpickler):
    """Unpickler that resolves only chumpy (to a shim), numpy and scipy.sparse data classes."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            # A subclass per chumpy class, so an error can name what a value was.
            return type(name, (_ChumpyShim,), {"chumpy_class": f"{module}.{name}"})
        if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
            return _SPARSE_CLASSES[name]
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise BodyModelError(
                f"{self._path}: refusing to unpickle class {module}.{name}; an SMPL model file holds "
                "only numpy, scipy.sparse and chumpy data (is this file really an SMPL model?)"
            )
        return allowed

    def persistent_load(self, pid):
        raise BodyModelError(f"{self._path}: refusing a pickle persistent id {pid!r}; not an SMPL model file")


def _read_pickle(path: Path) -> dict:
    """Unpickle an SMPL .pkl with the restricted unpickler and unwrap chumpy objects to arrays."""
    data = path.read_bytes()
    try:
        obj = _SmplUnpickler(io.BytesIO(data), path).load()
    except BodyModelError:
        raise
    except Exception as err:  # truncated/corrupt pickles raise many types; all mean the same here
        raise BodyModelError(
            f"{path}: not a readable pickle ({type(err).__name__}: {err}); the file may be truncated "
            "or corrupt, download it again"
        ) from None
    if not isinstance(obj, dict):
        raise BodyModelError(f"{path}: expected a pickled dict of model arrays, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(value, _ChumpyShim) and "x" in value.state:
            value = value.state["x"]
        # A chumpy expression without 'x' (e.g. a reordering) would need chumpy to evaluate; it stays
        # a shim and is an error only if a key we need holds one.
        out[str(key)] = value
    return out


def _read_npz(path: Path) -> dict:
    """Read every array of an .npz without allowing pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise BodyModelError(
            f"{path}: not a readable .npz ({type(err).__name__}: {err}); the file may be truncated "
            "or corrupt (or hold pickled objects), rebuild or download it again"
        ) from None


# ---------------------------------------------------------------------------------------------
# Validation and canonical form.


def _dense(value, path: Path, key: str) -> np.ndarray:
    """A dense float array from an ndarray or scipy sparse matrix, or a BodyModelError."""
    if isinstance(value, _ChumpyShim):
        raise BodyModelError(
            f"{path}: key '{key}' is an unevaluated chumpy expression ({value.chumpy_class}); re-save the "
            "model with plain arrays (e.g. SMPL's 'remove chumpy' script) or use an .npz"
        )
    if scipy.sparse.issparse(value):
        value = value.toarray()
    try:
        array = np.asarray(value)
    except Exception as err:
        raise BodyModelError(f"{path}: key '{key}' is not an array ({type(err).__name__}: {err})") from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise BodyModelError(f"{path}: key '{key}' is not a numeric array (dtype {array.dtype})")
    return array


def _check_shape(array: np.ndarray, expected: tuple, path: Path, key: str, hint: str = "") -> None:
    """Raise BodyModelError unless array.shape matches expected (None matches any size)."""
    ok = array.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, array.shape))
    if not ok:
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise BodyModelError(f"{path}: key '{key}' has shape {array.shape}, expected {shown}{hint}")


def _finite(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Return array, or raise BodyModelError if it holds NaN or infinity."""
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise BodyModelError(f"{path}: key '{key}' holds {bad} NaN/infinite values; the file is corrupt")
    return array


def _require(raw: dict, key: str, path: Path) -> object:
    """raw[key], or a BodyModelError naming the missing key."""
    if key not in raw:
        raise BodyModelError(
            f"{path}: missing key '{key}' (has: {', '.join(sorted(raw)) or 'nothing'}); "
            "an SMPL-layout model needs v_template, f, shapedirs, posedirs, J_regressor, weights, kintree_table"
        )
    return raw[key]


def _load_regressor_file(file: Path | None, rows: int, num_vertices: int, what: str) -> np.ndarray:
    """Read an (rows, V) regressor .npy such as SPIN's J_regressor_extra.npy."""
    file = Path(file)
    if not file.is_file():
        raise BodyModelError(f"{file}: {what} file does not exist; it comes from {_SPIN_DATA_HINT}")
    try:
        array = np.load(file, allow_pickle=False)
    except Exception as err:
        raise BodyModelError(f"{file}: not a readable .npy ({type(err).__name__}: {err})") from None
    array = _dense(array, file, what).astype(np.float32)
    _check_shape(array, (rows, num_vertices), file, what)
    return _finite(array, file, what)


def _assemble_keypoint_regressor(num_vertices: int, path: Path, extra_file: Path | None) -> np.ndarray:
    """SMPL's 20 extra keypoints: one-hot rows at SMPL vertex ids, then SPIN's 9 J_regressor_extra rows."""
    one_hot_names = EXTRA_KEYPOINT_NAMES[: len(SMPL_EXTRA_VERTEX_IDS)]
    if num_vertices <= max(SMPL_EXTRA_VERTEX_IDS.values()):
        raise BodyModelError(
            f"{path}: has no 'keypoint_regressor' and only {num_vertices} vertices, so SMPL's keypoint "
            "vertex ids do not apply; add a (20, V) 'keypoint_regressor' to the file"
        )
    if extra_file is None:
        raise BodyModelError(
            f"{path}: an official SMPL model needs SPIN's J_regressor_extra.npy for 9 of its 49 keypoints; "
            f"get it from {_SPIN_DATA_HINT} and set body.joint_regressor_extra to its path"
        )
    one_hot = np.zeros((len(one_hot_names), num_vertices), dtype=np.float32)
    one_hot[np.arange(len(one_hot_names)), [SMPL_EXTRA_VERTEX_IDS[n] for n in one_hot_names]] = 1.0
    extra = _load_regressor_file(extra_file, NUM_EXTRA_KEYPOINTS - len(one_hot_names), num_vertices,
                                 "J_regressor_extra")
    return np.concatenate([one_hot, extra], axis=0)


def _parents_from_kintree(kintree: np.ndarray, path: Path) -> np.ndarray:
    """Parent index per joint from kintree_table row 0; joints must come after their parents."""
    parents = kintree[0].astype(np.int64).copy()
    parents[0] = -1  # SMPL stores 2**32-1 (uint32 -1) for the root
    children = np.arange(1, len(parents))
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= children):
        raise BodyModelError(
            f"{path}: key 'kintree_table' row 0 must give each joint a parent with a smaller index, "
            f"got {parents.tolist()}"
        )
    return parents


def _identity_hash(arrays: dict[str, np.ndarray | None]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the canonical arrays."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = arrays[key]
        if value is None:
            digest.update(f"{key}:none;".encode())
            continue
        value = np.ascontiguousarray(value)
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def load_body_model_arrays(
    path: str | Path,
    joint_regressor_extra: str | Path | None = None,
    joint_regressor_h36m: str | Path | None = None,
    num_betas: int = 10,
) -> BodyModelArrays:
    """Read, validate and canonicalise an SMPL-layout model file (.npz or official .pkl)."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelError(
            f"{path}: body model file does not exist (set body.model_path to an SMPL .pkl/.npz, "
            "or leave it unset for the embedded open model)"
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raw = _read_npz(path)
    elif suffix == ".pkl":
        raw = _read_pickle(path)
    else:
        raise BodyModelError(f"{path}: unknown body model format '{suffix}', expected .npz or .pkl")

    def get(key: str) -> np.ndarray:
        return _dense(_require(raw, key, path), path, key)

    v_template = _finite(get("v_template").astype(np.float32), path, "v_template")
    _check_shape(v_template, (None, 3), path, "v_template")
    num_vertices = v_template.shape[0]

    faces = get("f")
    _check_shape(faces, (None, 3), path, "f")
    if not np.issubdtype(faces.dtype, np.integer) and not np.all(faces == np.round(faces)):
        raise BodyModelError(f"{path}: key 'f' must hold integer vertex indices")
    faces = faces.astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
        raise BodyModelError(f"{path}: key 'f' indexes vertices outside 0..{num_vertices - 1}")

    shapedirs = _finite(get("shapedirs").astype(np.float32), path, "shapedirs")
    _check_shape(shapedirs, (num_vertices, 3, None), path, "shapedirs")
    if shapedirs.shape[-1] < num_betas:
        raise BodyModelError(
            f"{path}: key 'shapedirs' has {shapedirs.shape[-1]} shape components but body.num_betas is "
            f"{num_betas}; lower body.num_betas"
        )
    shapedirs = np.ascontiguousarray(shapedirs[..., :num_betas])

    posedirs = _finite(get("posedirs").astype(np.float32), path, "posedirs")
    _check_shape(posedirs, (num_vertices, 3, NUM_POSE_BASIS), path, "posedirs",
                 " (SMPL layout, not (207, 3V))")

    j_regressor = _finite(get("J_regressor").astype(np.float32), path, "J_regressor")
    _check_shape(j_regressor, (NUM_SMPL_JOINTS, num_vertices), path, "J_regressor")

    weights = _finite(get("weights").astype(np.float32), path, "weights")
    _check_shape(weights, (num_vertices, NUM_SMPL_JOINTS), path, "weights")

    kintree = get("kintree_table")
    _check_shape(kintree, (2, NUM_SMPL_JOINTS), path, "kintree_table")
    parents = _parents_from_kintree(kintree, path)

    if "keypoint_regressor" in raw:
        keypoint_regressor = _finite(get("keypoint_regressor").astype(np.float32), path, "keypoint_regressor")
        _check_shape(keypoint_regressor, (NUM_EXTRA_KEYPOINTS, num_vertices), path, "keypoint_regressor",
                     " (rows are spin_ray.body.joints.EXTRA_KEYPOINT_NAMES)")
    else:
        keypoint_regressor = _assemble_keypoint_regressor(
            num_vertices, path, None if joint_regressor_extra is None else Path(joint_regressor_extra))

    if joint_regressor_h36m is not None:
        # An explicit file wins over one stored in the model, as the config is the user's latest word.
        j_h36m = _load_regressor_file(Path(joint_regressor_h36m), NUM_H36M_JOINTS, num_vertices, "J_regressor_h36m")
    elif "J_regressor_h36m" in raw:
        j_h36m = _finite(get("J_regressor_h36m").astype(np.float32), path, "J_regressor_h36m")
        _check_shape(j_h36m, (NUM_H36M_JOINTS, num_vertices), path, "J_regressor_h36m")
    else:
        j_h36m = None

    arrays = {
        "v_template": v_template, "faces": faces, "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": j_regressor, "weights": weights, "parents": parents,
        "keypoint_regressor": keypoint_regressor, "J_regressor_h36m": j_h36m,
    }
    for value in arrays.values():
        if value is not None:
            value.flags.writeable = False
    return BodyModelArrays(source=str(path), sha256=_identity_hash(arrays), **arrays)
