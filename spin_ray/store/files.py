"""Fit files: SPIN's static-fits `.npy` (N, 82) with an errors companion, and Parquet with every field."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spin_ray.errors import FitStoreError
from spin_ray.store.records import BETAS_SIZE, POSE_SIZE, SCHEMA_VERSION, NamespaceMeta, StoredFits, check_name

NPY_WIDTH = POSE_SIZE + BETAS_SIZE  # SPIN's static fits: pose 72 then betas 10 per row
PARQUET_COLUMNS: tuple[str, ...] = ("dataset", "index", "pose", "betas", "error", "step", "source", "updates", "time")
_META_HASH = b"spin_ray.body_model_hash"
_META_SCHEMA = b"spin_ray.schema_version"
_META_NAMESPACE = b"spin_ray.namespace"


def errors_path_for(path: Path) -> Path:
    """Where the errors of a fits file live: `coco_fits.npy` -> `coco_fits.errors.npy`."""
    return path.with_name(path.stem + ".errors.npy")


def write_npy_fits(fits: StoredFits, path: Path, size: int | None = None) -> Path:
    """Dense (size, 82) float32 fits and (size,) float64 errors (NaN = no fit); returns the fits path."""
    top = int(fits.indices.max()) + 1 if fits.indices.size else 0
    size = top if size is None else size
    if size < top:
        raise FitStoreError(f"size {size} is too small: the store holds a fit for index {top - 1}")
    table = np.zeros((size, NPY_WIDTH), dtype=np.float32)
    errors = np.full(size, np.nan)
    table[fits.indices, :POSE_SIZE] = fits.pose
    table[fits.indices, POSE_SIZE:] = fits.betas
    errors[fits.indices] = fits.error
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, table)
    np.save(errors_path_for(path), errors)
    return path


def read_npy_fits(path: Path, errors: str | Path | float | None) -> tuple[np.ndarray, np.ndarray]:
    """(fits (N, 82) float32, errors (N,) float64) from SPIN's file and an errors file or one value."""
    if not path.is_file():
        raise FitStoreError(f"fits file {path} does not exist")
    fits = _load_npy(path)
    if fits.ndim != 2 or fits.shape[1] != NPY_WIDTH:
        raise FitStoreError(
            f"{path} has shape {fits.shape}, expected (N, {NPY_WIDTH}): SPIN's pose 72 + betas 10 per row"
        )
    n = fits.shape[0]
    if errors is None:
        companion = errors_path_for(path)
        if not companion.is_file():
            raise FitStoreError(
                f"no errors for {path}: give an errors .npy (N,) or one error for every row "
                f"(e.g. --error 1000 so that any fit from the loop replaces these), or put {companion.name} beside it"
            )
        errors = companion
    if isinstance(errors, (str, Path)):
        errs = _load_npy(Path(errors)).astype(np.float64).reshape(-1)
        if errs.shape != (n,):
            raise FitStoreError(f"errors file {errors} has {errs.size} values, expected {n} (one per row of {path})")
    else:
        value = float(errors)
        if not (np.isnan(value) or (np.isfinite(value) and value >= 0)):
            raise FitStoreError(
                f"error {value} for every row of {path} is not a finite number >= 0: a negative error could never "
                f"be replaced by a real fit (give e.g. 1000 so that any fit from the loop replaces these)"
            )
        errs = np.full(n, value)
    bad = ~np.isnan(errs) & ~(np.isfinite(errs) & (errs >= 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FitStoreError(
            f"errors file {errors} row {row} is {errs[row]}, and {int(bad.sum())} row(s) in all are negative or "
            f"infinite: fit errors must be finite and >= 0 (NaN marks a row without a fit)"
        )
    return fits.astype(np.float32), errs


def _load_npy(path: Path) -> np.ndarray:
    """A plain numeric array; object arrays are refused because loading them unpickles."""
    if not path.is_file():
        raise FitStoreError(f"file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise FitStoreError(f"{path} is not a plain numeric .npy ({err})") from None


def write_parquet(
    path: Path, fits_by_dataset: dict[str, StoredFits], namespace: str, meta: NamespaceMeta | None
) -> Path:
    """One row per record with every field; file metadata names the schema, body model and namespace."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {name: [] for name in PARQUET_COLUMNS}
    for dataset, fits in fits_by_dataset.items():
        n = fits.indices.size
        columns["dataset"].append(pa.array([dataset] * n, pa.string()))
        columns["index"].append(pa.array(fits.indices, pa.int64()))
        columns["pose"].append(_fixed_list(fits.pose, POSE_SIZE))
        columns["betas"].append(_fixed_list(fits.betas, BETAS_SIZE))
        columns["error"].append(pa.array(fits.error, pa.float64()))
        columns["step"].append(pa.array(fits.step, pa.int64()))
        columns["source"].append(pa.array(fits.source.tolist(), pa.string()))
        columns["updates"].append(pa.array(fits.updates, pa.int64()))
        columns["time"].append(pa.array(fits.time, pa.float64()))
    schema = pa.schema(
        [
            ("dataset", pa.string()),
            ("index", pa.int64()),
            ("pose", pa.list_(pa.float32(), POSE_SIZE)),
            ("betas", pa.list_(pa.float32(), BETAS_SIZE)),
            ("error", pa.float64()),
            ("step", pa.int64()),
            ("source", pa.string()),
            ("updates", pa.int64()),
            ("time", pa.float64()),
        ],
        metadata={
            _META_SCHEMA: str(SCHEMA_VERSION).encode(),
            _META_NAMESPACE: namespace.encode(),
            **({_META_HASH: meta.body_model_hash.encode()} if meta is not None else {}),
        },
    )
    arrays = [pa.concat_arrays(columns[f.name]) if columns[f.name] else pa.array([], f.type) for f in schema]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
    return path


def _fixed_list(values: np.ndarray, width: int):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def read_parquet(path: Path) -> tuple[str | None, dict[str, dict[str, np.ndarray]]]:
    """(body-model hash or None, dataset -> column arrays) from a Parquet export, checking its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FitStoreError(f"Parquet file {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise FitStoreError(f"{path} is not a readable Parquet file: {err}") from None
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise FitStoreError(f"{path} lacks columns {', '.join(missing)} (not a spin-ray fit-store export?)")
    meta = table.schema.metadata or {}
    if _META_SCHEMA in meta and meta[_META_SCHEMA] != str(SCHEMA_VERSION).encode():
        raise FitStoreError(
            f"{path} was written with fit-store schema {meta[_META_SCHEMA].decode()}, this code reads {SCHEMA_VERSION}"
        )
    file_hash = meta[_META_HASH].decode() if _META_HASH in meta else None
    datasets = np.asarray(table.column("dataset").to_pylist(), dtype=object)
    out: dict[str, dict[str, np.ndarray]] = {}
    cols = {name: table.column(name) for name in PARQUET_COLUMNS}
    for dataset in sorted(set(datasets.tolist())):
        check_name("dataset", dataset)
        rows = np.flatnonzero(datasets == dataset)
        out[dataset] = {
            "index": cols["index"].to_numpy()[rows],
            "pose": _list_column(cols["pose"], POSE_SIZE, path)[rows],
            "betas": _list_column(cols["betas"], BETAS_SIZE, path)[rows],
            "error": cols["error"].to_numpy()[rows],
            "step": cols["step"].to_numpy()[rows],
            "source": np.asarray(cols["source"].to_pylist(), dtype=object)[rows],
            "updates": cols["updates"].to_numpy()[rows],
            "time": cols["time"].to_numpy()[rows],
        }
    return file_hash, out


def read_parquet_hash(path: Path) -> str | None:
    """The body-model hash recorded in a Parquet export, without reading its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FitStoreError(f"Parquet file {path} does not exist")
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as err:
        raise FitStoreError(f"{path} is not a readable Parquet file: {err}") from None
    value = meta.get(_META_HASH)
    return value.decode() if value else None


def _list_column(column, width: int, path: Path) -> np.ndarray:
    """(rows, width) float32 from a list column, refusing rows of another length."""
    values = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    lengths = np.asarray(values.value_lengths()) if hasattr(values, "value_lengths") else None
    if lengths is not None and (lengths != width).any():
        raise FitStoreError(f"{path}: a {column.type} column has rows of {set(lengths.tolist())} values, expected {width}")
    flat = np.asarray(values.flatten(), dtype=np.float32)
    if flat.size != len(values) * width:
        raise FitStoreError(f"{path}: a list column has {flat.size} values for {len(values)} rows, expected {width} each")
    return flat.reshape(len(values), width)
