"""Exports that never write what is not a fit: corrupt records refuse the export (or are skipped and counted).

An index entry without a record (an orphan) is never a row. A corrupt record refuses the whole export
by default, naming the first keys, so a file is never silently short; with `skip_corrupt` the sound
records are written and the report says how many were skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from spin_ray.store import files
from spin_ray.store.decode import refuse_corrupt
from spin_ray.store.records import BadRecord, NamespaceMeta, StoredFits


class FitReader(Protocol):
    """What an export needs of a FitStore (a protocol, so that fit_store can import this module)."""

    namespace: str

    @property
    def meta(self) -> NamespaceMeta | None: ...

    def datasets(self) -> list[str]: ...

    def require_dataset(self, dataset: str) -> None: ...

    def read_all(self, dataset: str, skip_corrupt: bool = False) -> StoredFits: ...


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and what it left out."""

    path: Path
    rows: int  # records written
    corrupt: tuple[BadRecord, ...]  # records skipped as unreadable (only with skip_corrupt)
    orphans: int  # index entries without a record (never rows)


def sound_fits(store: FitReader, names: Sequence[str], skip_corrupt: bool) -> dict[str, StoredFits]:
    """Each dataset's readable records; FitStoreError naming the corrupt ones unless `skip_corrupt`."""
    for name in names:
        store.require_dataset(name)
    fits = {name: store.read_all(name, skip_corrupt=True) for name in names}
    if not skip_corrupt:
        bad = [b for f in fits.values() for b in f.corrupt]
        sound = sum(f.indices.size for f in fits.values())
        refuse_corrupt(
            bad, f"export of namespace {store.namespace!r} refused",
            f", or pass --skip-corrupt (skip_corrupt=True) to export the {sound} sound records without them",
        )  # fmt: skip
    return fits


def _report(path: Path, fits: dict[str, StoredFits]) -> ExportReport:
    return ExportReport(
        path=path,
        rows=sum(f.indices.size for f in fits.values()),
        corrupt=tuple(b for f in fits.values() for b in f.corrupt),
        orphans=sum(f.orphans for f in fits.values()),
    )


def export_npy(store: FitReader, dataset: str, path: Path, size: int | None, skip_corrupt: bool) -> ExportReport:
    """SPIN's (size, 82) fits file and its errors companion for one dataset (size defaults to max index + 1)."""
    fits = sound_fits(store, [dataset], skip_corrupt)
    files.write_npy_fits(fits[dataset], path, size)
    return _report(path, fits)


def export_parquet(
    store: FitReader, path: Path, datasets: Sequence[str] | None, skip_corrupt: bool
) -> ExportReport:
    """Every field of every sound record of `datasets` (default: all) to one Parquet file."""
    names = list(datasets) if datasets is not None else store.datasets()
    fits = sound_fits(store, names, skip_corrupt)
    files.write_parquet(path, fits, store.namespace, store.meta)
    return _report(path, fits)
