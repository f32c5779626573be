"""Sample-id files: the CSV list of (dataset, index) that curation reads and writes.

Format: UTF-8 CSV with a header row whose first two columns are `dataset,index`, then one sample a
row (`coco,17`). Further columns are allowed and ignored, so the output of `spin-ray store filter`
(`dataset,index,error`) is itself an ids file. Blank lines are skipped; a repeated id counts once.
The gallery page downloads this format, `gallery --ids` and `filter --exclude` read it, and
`filter` writes it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from spin_ray.errors import FitStoreError
from spin_ray.store.records import check_name

IDS_HEADER: tuple[str, str] = ("dataset", "index")

SampleId = tuple[str, int]


def parse_ids(text: str, source: str = "ids file") -> list[SampleId]:
    """Sample ids from CSV text in the format above, in file order without repeats."""
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][:2]]
    if tuple(header) != IDS_HEADER:
        raise FitStoreError(
            f"{source}: the first row is {','.join(rows[0])!r}, expected the header 'dataset,index' "
            f"(an ids file is CSV: a header, then one 'dataset,index' row per sample)"
        )
    seen: set[SampleId] = set()
    out: list[SampleId] = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise FitStoreError(f"{source}: row {line} is {','.join(row)!r}, expected 'dataset,index'")
        dataset, index_text = row[0].strip(), row[1].strip()
        try:
            check_name("dataset", dataset)
        except FitStoreError as err:
            raise FitStoreError(f"{source}: row {line}: {err}") from None
        try:
            index = int(index_text)
        except ValueError:
            index = -1
        if index < 0:
            raise FitStoreError(
                f"{source}: row {line} has index {index_text!r}; an index is a row of the dataset .npz, an integer >= 0"
            )
        if (dataset, index) not in seen:
            seen.add((dataset, index))
            out.append((dataset, index))
    return out


def read_ids(path: str | Path) -> list[SampleId]:
    """Sample ids from an ids file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FitStoreError(
            f"ids file {path} does not exist (write one with the gallery's download button or `spin-ray store filter`)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is not part of the header
    except UnicodeDecodeError as err:
        raise FitStoreError(f"ids file {path} is not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    return parse_ids(text, source=str(path))


def format_ids(ids: Iterable[SampleId]) -> str:
    """CSV text of sample ids with the header, one 'dataset,index' row each."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(IDS_HEADER)
    writer.writerows((dataset, int(index)) for dataset, index in ids)
    return buffer.getvalue()
