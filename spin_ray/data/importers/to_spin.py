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
from spin_ray.data.importers.people import People, as_float32
from spin_ray.data.row_checks import REASONS, check_rows, image_sizes_of, plausible
from spin_ray.data.spin_format import NUM_DATASET_JOINTS, POSE_DIM, SHAPE_DIM, SpinDataset, write_spin_npz
from spin_ray.errors import DataError

# Why a person was left out, in the order the filters run (each counts only what earlier ones kept).
FILTERS: dict[str, str] = {
    "category": "not a person (category_id other than {category})",
    "image_id": "image id listed twice with different files",
    "image_size": "image width or height 0 or less",
    "image_file": "image file missing or unreadable under --images",
    "crowd": "crowd (iscrowd)",
    "score": "score < {min_score:g}",
    "joints": "fewer than {min_joints} visible joints",
    "box": "no box (no bbox, < 2 confident keypoints)",
    "tiny": "tiny (box side < {min_box_side:g} px)",
    "bbox": "bad bbox (width or height <= 0)",
    "truncated": "truncated (< {min_inside:.0%} of the box in the image)",
    "outside": "fewer than {min_joints} visible joints inside the image",
    "bad_row": "refused by the row checks",
}
# The keys a reader marks in People.excluded (what only the source file can tell).
READER_FILTERS = ("category", "image_id", "image_size")


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
    keypoint_margin: float = Field(0.1, ge=0, description="keypoints further outside a known image than this fraction "
                                                          "of its longer side are set to not visible")


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
    category: str | None = None  # the source's category id taken as people
    bad_rows: str = ""  # the row checks' reasons with counts, e.g. "1 keypoint, 2 box"

    def left_out(self) -> str:
        """'2 crowd (iscrowd), 1 tiny (box side < 32 px)' or 'none'."""
        limits = {**self.options.model_dump(), "category": self.category}
        reasons = {"bad_row": f" ({self.bad_rows})" if self.bad_rows else ""}
        return ", ".join(f"{n} {FILTERS[key].format(**limits)}{reasons.get(key, '')}"
                         for key, n in self.removed.items() if n) or "none"

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
        name="import", image_root=image_root, imgname=people.imgname, center=as_float32(center),
        scale=as_float32(scale), part=people.keypoints[:, NUM_OPENPOSE:] if people.role == "gt"
        else zeros((n, NUM_DATASET_JOINTS, 3), np.float32),
        openpose=zeros((n, NUM_OPENPOSE, 3), np.float32) if openpose is None else openpose,
        S=zeros((n, NUM_DATASET_JOINTS, 4), np.float32), pose=zeros((n, POSE_DIM), np.float32),
        betas=zeros((n, SHAPE_DIM), np.float32), has_openpose=np.full(n, openpose is not None),
        has_smpl=zeros(n, bool), has_3d=zeros(n, bool), gender=np.full(n, -1, np.int8),
    )


def image_files(imgname: np.ndarray, image_dir: Path, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) whether each image is a file under `image_dir` (and readable, where its size had to be read) and (N,2)
    `sizes` with the unknown ones read from the image headers."""
    sizes = sizes.copy()
    unknown = np.isnan(sizes).any(axis=1)
    sizes[unknown] = image_sizes_of(imgname[unknown], image_dir)
    is_file = {name: (image_dir / name).is_file() for name in set(imgname[~unknown].tolist())}
    found = np.array([not np.isnan(size).any() if u else is_file[str(name)]
                      for name, size, u in zip(imgname, sizes, unknown)], bool).reshape(len(imgname))
    return found, sizes


def keypoints_outside(keypoints: np.ndarray, sizes: np.ndarray, margin: float) -> np.ndarray:
    """(N,J) visible keypoints (N,J,3) further outside their image [w, h] (N,2) than `margin` x its longer side.

    Only plausible coordinates count: NaN, inf and absurd values are the row checks' to name, not to hide here;
    images of unknown size are not judged.
    """
    pad = (margin * np.nanmax(sizes, axis=1, initial=0.0))[:, None, None] if len(sizes) else np.zeros((0, 1, 1))
    xy = keypoints[..., :2].astype(np.float64)
    with np.errstate(invalid="ignore"):
        beyond = ((xy < -pad) | (xy > sizes[:, None, :] + pad)).any(axis=-1)
    known = ~np.isnan(sizes).any(axis=1)
    return beyond & (keypoints[..., 2] > 0) & plausible(xy).all(axis=-1) & known[:, None]


def _hide(keypoints: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of keypoints (N,J,3) with the joints in `mask` (N,J) set to (0, 0, 0): not visible."""
    return np.where(mask[..., None], np.float32(0), keypoints).astype(np.float32)


def import_people(people: People, options: ImportOptions, out: Path | None, image_dir: Path | None = None,
                  detections: People | None = None) -> tuple[SpinDataset, ImportReport]:
    """Filter `people`, box them, add matched `detections` (GT only) and write `out` (None: write nothing).

    With `image_dir`, a person whose image file is not there (or unreadable) is left out; visible keypoints
    outside their image (beyond options.keypoint_margin) are set to not visible, and a person left with
    fewer than options.min_joints is left out. Every person left out is counted by why.
    """
    if detections is not None and people.role != "gt":
        raise DataError(f"{people.source}: --gt-and-detections needs ground truth as SOURCE (a COCO annotation "
                        "file), but it holds detections")
    check_image_dir(image_dir)
    removed = dict.fromkeys(FILTERS, 0)
    keep = np.ones(len(people), bool)

    def drop(key: str, mask: np.ndarray) -> None:
        nonlocal keep
        removed[key] += int((keep & mask).sum())
        keep = keep & ~mask

    for key in READER_FILTERS:
        drop(key, people.excluded == key)
    sizes = people.image_size.copy()
    if image_dir is not None:
        found, sizes = image_files(people.imgname, Path(image_dir), sizes)
        drop("image_file", ~found)
    drop("crowd", people.crowd)
    with np.errstate(invalid="ignore"):
        drop("score", people.score < options.min_score)
    drop("joints", (people.keypoints[..., 2] > 0).sum(axis=1) < options.min_joints)
    if options.box == "box":
        with np.errstate(invalid="ignore"):
            drop("bbox", np.isfinite(people.bbox).all(axis=1) & (people.bbox[:, 2:].min(axis=1) <= 0))
    boxes = tight_boxes(people, options)
    with np.errstate(invalid="ignore"):
        drop("box", ~(np.isfinite(boxes).all(axis=1) & (boxes[:, 2:].max(axis=1) > 0)))
        drop("tiny", boxes[:, 2:].max(axis=1) < options.min_box_side)
    image_root = image_dir if image_dir is not None else (out.parent if out is not None else Path("."))
    kept, boxes, sizes = people.select(keep), boxes[keep], sizes[keep]
    keep = np.ones(len(kept), bool)
    drop("truncated", inside_fraction(boxes, sizes) < options.min_inside)
    outside = keypoints_outside(kept.keypoints, sizes, options.keypoint_margin)
    kept = replace(kept, keypoints=_hide(kept.keypoints, outside))
    drop("outside", (kept.keypoints[..., 2] > 0).sum(axis=1) < options.min_joints)
    kept, boxes, sizes, outside = kept.select(keep), boxes[keep], sizes[keep], outside[keep]
    report = ImportReport(read=len(people), kept=0, removed=removed, options=options, category=people.category,
                          notes=list(people.notes))
    openpose = None
    if detections is not None:
        good = ~(detections.score < options.min_score) & (detections.excluded == "")
        match = match_detections(kept, detections.select(good), options.match_tolerance)
        openpose = np.where((match >= 0)[:, None, None], detections.select(good).keypoints[match, :NUM_OPENPOSE], 0)
        detected_outside = keypoints_outside(openpose, sizes, options.keypoint_margin)
        openpose = _hide(openpose, detected_outside)
        outside = outside | np.pad(detected_outside, ((0, 0), (0, outside.shape[1] - NUM_OPENPOSE)))
        report.matched = int((match >= 0).sum())
    spin = spin_rows(kept, boxes, options, image_root, None if openpose is None else openpose.astype(np.float32))
    # check_rows cannot reshape zero rows; with none there is nothing to check.
    check = check_rows(spin, sizes) if len(spin) else None
    usable = check.usable if check is not None else np.zeros(0, bool)
    removed["bad_row"] = int((~usable).sum())
    if check is not None and check.bad.any():
        first = int(np.flatnonzero(check.bad)[0])
        report.bad_rows = ", ".join(f"{int((check.reason == key).sum())} {key}" for key in REASONS
                                    if (check.reason == key).any())
        report.notes.append(f"refused by the row checks: {kept.entry[first]} ({kept.imgname[first]}): "
                            f"{check.detail(first)}" + (", ..." if removed["bad_row"] > 1 else ""))
    hidden = outside[usable]
    if hidden.any():
        persons = int(hidden.any(axis=1).sum())
        report.notes.append(f"{int(hidden.sum())} keypoint{'s' if hidden.sum() > 1 else ''} of {persons} "
                            f"{'person' if persons == 1 else 'people'} lie outside their image (beyond "
                            f"{options.keypoint_margin:.0%} of its side) and were set to not visible")
    unknown = int(np.isnan(sizes[usable]).any(axis=1).sum())
    if unknown:
        report.notes.append(f"the image size of {unknown} of the kept people is unknown (no width/height in the "
                            "file; give --images to read them): their boxes and keypoints were not checked against "
                            "their image")
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


def check_image_dir(image_dir: Path | None) -> None:
    """One line when --images names no folder (its images could not be found, nor their sizes read)."""
    if image_dir is not None and not Path(image_dir).is_dir():
        what = "is a file, not a folder" if Path(image_dir).exists() else "no such folder"
        raise DataError(f"--images {image_dir}: {what}; give the folder the image file names are relative to")


def _take(spin: SpinDataset, index: np.ndarray) -> SpinDataset:
    """The rows `index` of `spin`."""
    return replace(spin, **{f.name: getattr(spin, f.name)[index] for f in fields(spin)
                            if isinstance(getattr(spin, f.name), np.ndarray)})
