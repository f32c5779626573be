"""The table every keypoint reader returns: one row per person, keypoints already in SPIN's 49-joint layout."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np

from spin_ray.body.joints import NUM_KEYPOINTS

# "gt": annotated joints (SPIN's `part`, the dataset slots); "detections": a detector's (the OpenPose slots).
Role = Literal["gt", "detections"]


@dataclass(frozen=True)
class People:
    """People read from one keypoint source; NaN marks what the source does not give."""

    source: str  # the file or folder, for messages
    format: str  # a key of keypoint_formats.FORMATS
    role: Role
    imgname: np.ndarray  # (N,) str, relative to the image folder
    entry: np.ndarray  # (N,) str: where each row came from in the source, e.g. "annotations[3]"
    keypoints: np.ndarray  # (N,49,3) float32 [x, y, conf]; conf 0 where the source has no such joint
    bbox: np.ndarray  # (N,4) float64 [x, y, w, h] pixels; NaN where the source gives no box
    score: np.ndarray  # (N,) float64 detector score of the person; NaN where none
    crowd: np.ndarray  # (N,) bool: COCO iscrowd
    image_size: np.ndarray  # (N,2) float64 [w, h]; NaN where unknown
    # (N,) str: why the reader says a row cannot be a person (a key of to_spin.FILTERS, e.g. "category"), "" where
    # it can; the importer leaves these out and counts them with the rest.
    excluded: np.ndarray
    category: str | None = None  # the source's category id taken as people (COCO); None: no category
    notes: tuple[str, ...] = ()  # what the reader decided that people should hear about

    def __len__(self) -> int:
        return len(self.imgname)

    def select(self, rows: np.ndarray) -> People:
        """The rows picked by a boolean mask or an index array."""
        return replace(self, **{f.name: getattr(self, f.name)[rows] for f in fields(self)
                                if isinstance(getattr(self, f.name), np.ndarray)})


def make_people(source: str, format: str, role: Role, imgname, entry, keypoints: np.ndarray, *, bbox=None,
                score=None, crowd=None, image_size=None, excluded=None, category: str | None = None,
                notes: tuple[str, ...] = ()) -> People:
    """A People table with NaN/False filled in for what the source does not give."""
    n = len(imgname)
    return People(
        source=source, format=format, role=role,
        imgname=np.asarray(imgname, dtype=str).reshape(n), entry=np.asarray(entry, dtype=str).reshape(n),
        keypoints=np.asarray(keypoints, np.float32).reshape(n, NUM_KEYPOINTS, 3),
        bbox=np.full((n, 4), np.nan) if bbox is None else np.asarray(bbox, np.float64).reshape(n, 4),
        score=np.full(n, np.nan) if score is None else np.asarray(score, np.float64).reshape(n),
        crowd=np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool).reshape(n),
        image_size=np.full((n, 2), np.nan) if image_size is None else np.asarray(image_size, np.float64).reshape(n, 2),
        excluded=np.full(n, "", dtype="<U16") if excluded is None else np.asarray(excluded, dtype="<U16").reshape(n),
        category=category, notes=tuple(notes),
    )


def as_float32(values: np.ndarray) -> np.ndarray:
    """`values` as float32, with numbers beyond float32's range as +-inf (which the row checks name) and no numpy
    overflow warning on the terminal."""
    values = np.asarray(values, np.float64)
    limit = np.finfo(np.float32).max
    with np.errstate(invalid="ignore"):
        beyond = np.abs(values) > limit
    return np.where(beyond, np.copysign(np.inf, values), values).astype(np.float32)


def concat_people(tables: list[People], source: str, format: str, role: Role) -> People:
    """One table from several (e.g. one per OpenPose file); an empty list gives an empty table."""
    if not tables:
        return make_people(source, format, role, [], [], np.zeros((0, NUM_KEYPOINTS, 3)))
    arrays = {f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(People)
              if isinstance(getattr(tables[0], f.name), np.ndarray)}
    notes = tuple(note for t in tables for note in t.notes)
    return People(source=source, format=format, role=role, category=tables[0].category, notes=notes, **arrays)
