"""People tables to a SPIN-format `.npz`: the person box, the filters (each counted), SPIN §3.3's combination.

The box is SPIN's rule: center = centre of the tight box, scale = factor x its longer side / 200, factor 1.2
(SPIN's COCO preprocessing scales the annotated box by 1.2; its demo does the same to the box of the
keypoints above confidence 0.2). The tight box is the source's `bbox` (COCO) or, with `box: keypoints`
and for sources without one (OpenPose), the extent of the confident keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from spin_ray.body.joints import NUM_OPENPOSE
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.importers.matching import match_detections
from spin_ray.data.importers.people import People
from spin_ray.data.row_checks import check_rows, image_sizes
from spin_ray.data.spin_format import NUM_DATASET_JOINTS, POSE_DIM, SHAPE_DIM, SpinDataset, write_spin_npz
from spin_ray.errors import DataError

# Why a person was left out, in the order the filters run (each counts only what earlier ones kept).
FILTERS: dict[str, str] = {
    "crowd": "crowd (iscrowd)",
    "score": "score < {min_score:g}",
    "joints": "fewer than {min_joints} visible joints",
    "box": "no box (no bbox, < 2 confident keypoints)",
    "tiny": "tiny (box side < {min_box_side:g} px)",
    "truncated": "truncated (< {min_inside:.0%} of the box in the image)",
    "bad_row": "refused by the row checks",
}


class ImportOptions(BaseModel):
    """How keypoints become SPIN rows: box rule and filters."""

    model_config = ConfigDict(extra="forbid")
    box: Literal["box", "keypoints"] = Field("box", description="tight box from the source's bbox or the keypoints")
    box_factor: float = Field(1.2, gt=0, description="scale = box_factor x longer side / 200 (SPIN: 1.2)")
    box_confidence: float = Field(0.2, ge=0, le=1, description="keypoints above this span a keypoint box (SPIN's demo)")
    min_joints: int = Field(6, ge=0, description="people with fewer visible (confidence > 0) joints are left out")
    min_box_side: float = Field(32.0, ge=0, description="people whose tight box's longer side is below this (px) are left out")
    min_inside: float = Field(0.5, ge=0, le=1, description="least fraction of the tight box inside a known image")
    min_score: float = Field(0.0, ge=0, description="detections with a person score below this are left out")
    match_tolerance: float = Field(0.1, gt=0, description="GT+detections: mean limb distance / person size to match")


@dataclass
class ImportReport:
    """What an import read, kept and left out, and where it wrote."""

    read: int
    kept: int
    removed: dict[str, int]
    out: Path | None = None
    matched: int | None = None  # ground-truth people given a detection (GT + detections only)
    notes: list[str] = field(default_factory=list)
    options: ImportOptions = field(default_factory=ImportOptions)

    def left_out(self) -> str:
        """'2 crowd (iscrowd), 1 tiny (box side < 32 px)' or 'none'."""
        limits = self.options.model_dump()
        return ", ".join(f"{n} {FILTERS[key].format(**limits)}" for key, n in self.removed.items() if n) or "none"

    def lines(self) -> list[str]:
        """The summary, for people."""
        removed = self.left_out()
        out = [f"kept {self.kept} of {self.read} people; left out: {removed}"]
        if self.matched is not None:
            out.append(f"detections matched to {self.matched} of {self.kept} ground-truth people "
                       "(the others have no openpose joints)")
        return out + [f"note: {n}" for n in self.notes] + ([f"wrote {self.out}"] if self.out else [])


def tight_boxes(people: People, options: ImportOptions) -> np.ndarray:
    """(N,4) [x, y, w, h]: the source's bbox, or the confident keypoints' extent (NaN with fewer than 2)."""
    kp = people.keypoints
    confident = kp[..., 2] > (options.box_confidence if people.role == "detections" else 0.0)
    with np.errstate(invalid="ignore"):
        low = np.where(confident[..., None], kp[..., :2], np.inf).min(axis=1)
        high = np.where(confident[..., None], kp[..., :2], -np.inf).max(axis=1)
    from_keypoints = np.concatenate([low, high - low], axis=1)
    from_keypoints[confident.sum(axis=1) < 2] = np.nan
    if options.box == "keypoints":
        return from_keypoints
    has_box = np.isfinite(people.bbox).all(axis=1)
    return np.where(has_box[:, None], people.bbox, from_keypoints)


def center_scale(boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """SPIN's rule: (N,2) box centres and (N,) scale = factor x longer side / 200."""
    return boxes[:, :2] + boxes[:, 2:] / 2.0, factor * boxes[:, 2:].max(axis=1) / SCALE_UNIT_PX


def inside_fraction(boxes: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(N,) fraction of each box's area inside its image [w, h]; 1 where the size is unknown."""
    low = np.clip(boxes[:, :2], 0, size)
    high = np.clip(boxes[:, :2] + boxes[:, 2:], 0, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.prod(high - low, axis=1) / np.prod(boxes[:, 2:], axis=1)
    return np.where(np.isnan(size).any(axis=1), 1.0, fraction)


def spin_rows(people: People, boxes: np.ndarray, options: ImportOptions, image_root: Path,
              openpose: np.ndarray | None = None) -> SpinDataset:
    """The SPIN dataset of `people`: GT fills `part`, detections fill `openpose` (or `openpose` is given)."""
    n = len(people)
    center, scale = center_scale(boxes, options.box_factor)
    if people.role == "detections":
        openpose = people.keypoints[:, :NUM_OPENPOSE]
    zeros = np.zeros
    return SpinDataset(
        name="import", image_root=image_root, imgname=people.imgname, center=center.astype(np.float32),
        scale=scale.astype(np.float32), part=people.keypoints[:, NUM_OPENPOSE:] if people.role == "gt"
        else zeros((n, NUM_DATASET_JOINTS, 3), np.float32),
        openpose=zeros((n, NUM_OPENPOSE, 3), np.float32) if openpose is None else openpose,
        S=zeros((n, NUM_DATASET_JOINTS, 4), np.float32), pose=zeros((n, POSE_DIM), np.float32),
        betas=zeros((n, SHAPE_DIM), np.float32), has_openpose=np.full(n, openpose is not None),
        has_smpl=zeros(n, bool), has_3d=zeros(n, bool), gender=np.full(n, -1, np.int8),
    )


def import_people(people: People, options: ImportOptions, out: Path | None, image_dir: Path | None = None,
                  detections: People | None = None) -> tuple[SpinDataset, ImportReport]:
    """Filter `people`, box them, add matched `detections` (GT only) and write `out` (None: write nothing)."""
    if detections is not None and people.role != "gt":
        raise DataError(f"{people.source}: --gt-and-detections needs ground truth as SOURCE (a COCO annotation "
                        "file), but it holds detections")
    removed = dict.fromkeys(FILTERS, 0)
    keep = np.ones(len(people), bool)

    def drop(key: str, mask: np.ndarray) -> None:
        nonlocal keep
        removed[key] += int((keep & mask).sum())
        keep = keep & ~mask

    drop("crowd", people.crowd)
    with np.errstate(invalid="ignore"):
        drop("score", people.score < options.min_score)
    drop("joints", (people.keypoints[..., 2] > 0).sum(axis=1) < options.min_joints)
    boxes = tight_boxes(people, options)
    with np.errstate(invalid="ignore"):
        drop("box", ~(np.isfinite(boxes).all(axis=1) & (boxes[:, 2:].max(axis=1) > 0)))
        drop("tiny", boxes[:, 2:].max(axis=1) < options.min_box_side)
    image_root = image_dir if image_dir is not None else (out.parent if out is not None else Path("."))
    kept, boxes = people.select(keep), boxes[keep]
    sizes = kept.image_size.copy()
    unknown = np.isnan(sizes).any(axis=1)
    if image_dir is not None and unknown.any() and options.min_inside > 0:
        sizes[unknown] = image_sizes(spin_rows(kept.select(unknown), boxes[unknown], options, image_root))
    keep = np.ones(len(kept), bool)
    drop("truncated", inside_fraction(boxes, sizes) < options.min_inside)
    kept, boxes, sizes = kept.select(keep), boxes[keep], sizes[keep]
    report = ImportReport(read=len(people), kept=0, removed=removed, options=options)
    openpose = None
    if detections is not None:
        good = ~(detections.score < options.min_score)
        match = match_detections(kept, detections.select(good), options.match_tolerance)
        openpose = np.where((match >= 0)[:, None, None], detections.select(good).keypoints[match, :NUM_OPENPOSE], 0)
        report.matched = int((match >= 0).sum())
    spin = spin_rows(kept, boxes, options, image_root, None if openpose is None else openpose.astype(np.float32))
    # check_rows cannot reshape zero rows; with none there is nothing to check.
    usable = check_rows(spin, sizes).usable if len(spin) else np.zeros(0, bool)
    removed["bad_row"] = int((~usable).sum())
    spin = _take(spin, np.flatnonzero(usable))
    if report.matched is not None:
        report.matched = int((spin.openpose[..., 2] > 0).any(axis=1).sum())
    report.kept = len(spin)
    if out is not None:
        if not len(spin):
            raise DataError(f"{people.source}: every one of the {len(people)} people was left out "
                            f"({report.left_out()}); nothing to write "
                            "(loosen --min-joints, --min-box-side, --min-inside or --min-score)")
        report.out = write_spin_npz(out, imgname=spin.imgname, center=spin.center, scale=spin.scale, part=spin.part,
                                    openpose=spin.openpose if spin.has_openpose.all() else None)
    return spin, report



def _take(spin: SpinDataset, index: np.ndarray) -> SpinDataset:
    """The rows `index` of `spin`."""
    return replace(spin, **{f.name: getattr(spin, f.name)[index] for f in fields(spin)
                            if isinstance(getattr(spin, f.name), np.ndarray)})
