"""Where a dataset's samples live: the npz and image root of each dataset name, for curation tools.

The fit store names samples only by (dataset, index); the images are found through a run config's
`data.datasets` or `--data NAME=NPZ[:IMAGE_ROOT]` flags (IMAGE_ROOT defaults to the npz's folder).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spin_ray.errors import DataError, FitStoreError
from spin_ray.store.records import check_name


@dataclass(frozen=True)
class DatasetLocation:
    """A dataset name with its SPIN-format .npz and the folder its imgname paths are relative to."""

    name: str
    npz: Path
    image_root: Path


def parse_data_flag(text: str) -> DatasetLocation:
    """A location from `NAME=NPZ[:IMAGE_ROOT]` (IMAGE_ROOT defaults to the folder of NPZ); NPZ may also be a keypoint
    file or folder that `spin-ray data import` reads (COCO/Halpe/WholeBody JSON, OpenPose JSON)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise FitStoreError(
            f"--data {text!r}: expected NAME=NPZ[:IMAGE_ROOT], e.g. --data coco=data/coco.npz:data/coco_images"
        )
    check_name("dataset", name)
    # Split after '.npz' (or '.json') so a colon elsewhere in the path is not taken for the separator.
    npz, root = rest, ""
    for suffix in (".npz:", ".json:"):
        cut = rest.lower().find(suffix)
        if cut >= 0:
            npz, root = rest[: cut + len(suffix) - 1], rest[cut + len(suffix):]
            break
    npz_path = Path(npz)
    return DatasetLocation(name, npz_path, Path(root) if root else npz_path.parent)


def locations_from_config(path: str | Path) -> list[DatasetLocation]:
    """The locations of a run config's data.datasets."""
    from spin_ray.config import load_config

    cfg = load_config(path)
    if cfg.data.datasets:
        return [DatasetLocation(entry.name, Path(entry.npz), Path(entry.image_root)) for entry in cfg.data.datasets]
    # The embedded default: the synthetic splits that the run generated into its cache.
    from spin_ray.data.synth import cached_synthetic_data, synthetic_data_folder

    paths = cached_synthetic_data(cfg)
    if paths is None:
        raise DataError(f"{path} trains on the synthetic data, which is not generated yet in "
                        f"{synthetic_data_folder(cfg)}: run `make run` or `spin-ray synth --config {path}` first, "
                        f"or pass --data NAME=NPZ:IMAGE_ROOT")
    return [DatasetLocation(name, npz, npz.parent) for name, npz in paths.items()]


def merge_locations(*groups: Iterable[DatasetLocation]) -> dict[str, DatasetLocation]:
    """Locations by dataset name; a later group overrides an earlier one (flags over a config)."""
    out: dict[str, DatasetLocation] = {}
    for group in groups:
        for location in group:
            out[location.name] = location
    return out


class DatasetCache:
    """Loads each dataset's npz once, on first use, and remembers why one could not be loaded."""

    def __init__(self, locations: dict[str, DatasetLocation]) -> None:
        self.locations = locations
        self._loaded: dict[str, object] = {}
        self._errors: dict[str, str] = {}

    def get(self, name: str):
        """The SpinDataset of `name`, or None (then `problem(name)` says why)."""
        from spin_ray.data.spin_format import load_spin_npz

        if name in self._loaded:
            return self._loaded[name]
        if name in self._errors:
            return None
        location = self.locations.get(name)
        if location is None:
            self._errors[name] = (
                f"no npz/images known for dataset {name!r}: pass --data {name}=NPZ[:IMAGE_ROOT] "
                f"or --config with a run config that lists it under data.datasets"
            )
            return None
        try:
            if location.npz.suffix.lower() == ".npz":
                dataset = load_spin_npz(location.npz, location.image_root, name=name)
            else:  # keypoints as `spin-ray data import` reads them: the same rows in the same order
                from spin_ray.data.importers.sources import dataset_from_keypoints

                dataset = dataset_from_keypoints(location.npz, location.image_root)
        except DataError as err:
            self._errors[name] = str(err)
            return None
        self._loaded[name] = dataset
        return dataset

    def problem(self, name: str) -> str | None:
        """Why dataset `name` could not be loaded, if it could not."""
        return self._errors.get(name)


def add_image_paths(path: str | Path, locations: dict[str, DatasetLocation]) -> Path:
    """Add image_path, center and scale columns to a Parquet fit export, in place (metadata kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    datasets = table.column("dataset").to_pylist()
    indices = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
    cache = DatasetCache(locations)
    image_paths: list[str | None] = [None] * len(datasets)
    centers = np.full((len(datasets), 2), np.nan, dtype=np.float32)
    scales = np.full(len(datasets), np.nan, dtype=np.float32)
    for name in sorted(set(datasets)):
        dataset = cache.get(name)
        if dataset is None:
            raise FitStoreError(f"--with-paths: {cache.problem(name)}")
        rows = np.flatnonzero(np.asarray([d == name for d in datasets]))
        beyond = rows[indices[rows] >= len(dataset)]
        if beyond.size:
            raise FitStoreError(
                f"--with-paths: the store holds fits of {name} up to index {int(indices[beyond].max())}, but "
                f"{dataset.source} has {len(dataset)} samples: is this the npz the run was trained on?"
            )
        for row in rows.tolist():
            image_paths[row] = str(dataset.image_path(int(indices[row])))
        centers[rows] = dataset.center[indices[rows]]
        scales[rows] = dataset.scale[indices[rows]]
    table = table.append_column("image_path", pa.array(image_paths, pa.string()))
    table = table.append_column("center", pa.FixedSizeListArray.from_arrays(pa.array(centers.reshape(-1)), 2))
    table = table.append_column("scale", pa.array(scales, pa.float32()))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path

