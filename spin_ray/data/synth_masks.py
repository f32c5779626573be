"""The six-part body segmentation of LSP (SPIN's Table 2) and the synthetic test split's mask files.

Labels: 0 background, 1 head, 2 torso, 3 left arm, 4 right arm, 5 left leg, 6 right leg (PART_NAMES).
A vertex belongs to the part of the SMPL joint that skins it most (the dominant skinning weight), so
the same map serves the ground truth the generator draws and the predicted meshes evaluation draws.
spin-ray chose this order; UP-3D's masks of the real LSP set use their own numbering, so check it
before scoring real masks.

Files, in SPIN's format for LSP: per image, a foreground mask `<stem>_segmentation.png` (0 background,
255 person) and a part map `<stem>_part_segmentation.png` (the labels above), beside the images
under `masks/<split>/`; the dataset `.npz` names them in the string keys `maskname` and `partname`,
relative to the image root, as SPIN's `lsp_dataset_original_test.npz` does.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from spin_ray.body.joints import SMPL_JOINT_NAMES
from spin_ray.errors import DataError

PART_NAMES: tuple[str, ...] = ("background", "head", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
_PART_OF_JOINT: dict[str, str] = {
    "pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso",
    "left_collar": "torso", "right_collar": "torso", "neck": "head", "head": "head",
    "left_shoulder": "left_arm", "left_elbow": "left_arm", "left_wrist": "left_arm", "left_hand": "left_arm",
    "right_shoulder": "right_arm", "right_elbow": "right_arm", "right_wrist": "right_arm", "right_hand": "right_arm",
    "left_hip": "left_leg", "left_knee": "left_leg", "left_ankle": "left_leg", "left_foot": "left_leg",
    "right_hip": "right_leg", "right_knee": "right_leg", "right_ankle": "right_leg", "right_foot": "right_leg",
}
# Part label (1..6) of each of SMPL's 24 joints.
SMPL_JOINT_PART_LABELS: np.ndarray = np.array([PART_NAMES.index(_PART_OF_JOINT[j]) for j in SMPL_JOINT_NAMES],
                                              np.uint8)
MASK_FOLDER = "masks"
MASK_SUFFIX = "_segmentation.png"
PART_SUFFIX = "_part_segmentation.png"
_FOREGROUND_VALUE = 255


def vertex_part_labels(skinning_weights: np.ndarray) -> np.ndarray:
    """Part label (V,) in 1..6 of each vertex, from its dominant skinning joint (weights (V,24))."""
    return SMPL_JOINT_PART_LABELS[np.asarray(skinning_weights).argmax(axis=1)]


def part_labels_of_joint_map(joint_map: np.ndarray) -> np.ndarray:
    """A map of SMPL joint ids (-1 background) as part labels (uint8, 0 background)."""
    joint_map = np.asarray(joint_map)
    return np.where(joint_map >= 0, SMPL_JOINT_PART_LABELS[np.clip(joint_map, 0, None)], 0).astype(np.uint8)


def mask_names(split: str, index: int) -> tuple[str, str]:
    """Paths of a sample's foreground mask and part map, relative to the image root (SPIN's maskname, partname)."""
    stem = f"{MASK_FOLDER}/{split}/{index:06d}"
    return stem + MASK_SUFFIX, stem + PART_SUFFIX


def write_masks(root: Path, split: str, start: int, part_labels: np.ndarray) -> None:
    """Write the mask and part PNGs of samples start.. of a split from their part label maps (n,H,W)."""
    (root / MASK_FOLDER / split).mkdir(parents=True, exist_ok=True)
    for offset, labels in enumerate(part_labels):
        mask_name, part_name = mask_names(split, start + offset)
        mask = np.where(labels > 0, _FOREGROUND_VALUE, 0).astype(np.uint8)
        for name, image in ((mask_name, mask), (part_name, labels.astype(np.uint8))):
            if not cv2.imwrite(str(root / name), image):
                raise DataError(f"could not write the mask {root / name}")


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel PNG mask or part map as uint8 (H,W); one clear error if missing or unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if Path(path).is_file() else None
    if image is None:
        raise DataError(f"segmentation mask {path} is missing or not an image (maskname/partname of the dataset "
                        "npz are relative to its image root)")
    return image
