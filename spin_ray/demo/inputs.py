"""The demo's inputs: an image, its keypoints (OpenPose JSON or a COCO-format file, read by
data/importers), and the person's box.

The keypoints of each person land in the OpenPose BODY_25 slots (`OPENPOSE25_NAMES` order) in image
pixels; an undetected keypoint is (0, 0, 0). Every check here names the file and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from spin_ray.body.joints import NUM_OPENPOSE
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.importers.sources import people_of_image
from spin_ray.data.row_checks import check_rows
from spin_ray.data.spin_format import NUM_DATASET_JOINTS, POSE_DIM, SHAPE_DIM, SpinDataset
from spin_ray.errors import InputError

# SPIN's demo rule for a box from OpenPose: keypoints above this confidence span the box, which is
# then enlarged by BOX_RESCALE so the limbs are not cut off.
BOX_CONFIDENCE = 0.2
BOX_RESCALE = 1.2


def read_image(path: str | Path) -> np.ndarray:
    """The image at path as RGB uint8 (H,W,3)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist; give the path of a photo (PNG, JPEG, ...)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"image {path} could not be decoded by OpenCV (corrupt, or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_keypoints(path: str | Path, image: str | Path) -> list[np.ndarray]:
    """Every person's BODY_25-slot keypoints (25,3) [x, y, confidence] for `image` from a keypoint JSON file.

    Any format the data readers take: OpenPose (BODY_25 or COCO-18), or a COCO-format annotation or results
    file (COCO-17, Halpe-26, COCO-WholeBody-133); joints a format lacks have confidence 0.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"keypoint file {path} does not exist; run OpenPose with --write_json (or a COCO-format "
                         "keypoint detector) and pass the file it wrote for this image")
    people = people_of_image(path, image)
    if not people:
        raise InputError(f"{path}: OpenPose found no people in this image (empty 'people' list), or the file has "
                         "no annotations; nothing to fit")
    return people


def select_person(people: list[np.ndarray], index: int | None, path: str | Path) -> int:
    """The person to fit: `index` if given, else the one with the highest total confidence."""
    confidence = [float(np.clip(p[:, 2], 0, None).sum()) for p in people]
    if index is None:
        index = int(np.argmax(confidence))
    elif not 0 <= index < len(people):
        raise InputError(f"--person {index}: {path} has {len(people)} people (valid: 0 to {len(people) - 1})")
    if confidence[index] <= 0:
        raise InputError(f"{path}: every keypoint of person {index} has confidence 0 (nothing was detected); "
                         "pick another person with --person or check the OpenPose run")
    return index


def box_from_keypoints(keypoints: np.ndarray, path: str | Path) -> tuple[np.ndarray, float]:
    """SPIN's box of confident keypoints: center of their bounding box, scale = 1.2 x its longer side / 200."""
    confident = keypoints[keypoints[:, 2] > BOX_CONFIDENCE, :2]
    if len(confident) < 2:
        raise InputError(f"{path}: fewer than 2 keypoints have confidence above {BOX_CONFIDENCE}, too few for a "
                         "box; give the person's box with --bbox x y w h")
    low, high = confident.min(axis=0), confident.max(axis=0)
    side = float((high - low).max())
    if side <= 0:
        raise InputError(f"{path}: the confident keypoints all sit on one pixel; give the box with --bbox x y w h")
    return (low + high) / 2.0, BOX_RESCALE * side / SCALE_UNIT_PX


def box_from_xywh(bbox: list[float] | tuple[float, ...]) -> tuple[np.ndarray, float]:
    """A box given as top-left x, y, width, height in pixels: its center, scale = longer side / 200."""
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
        raise InputError(f"--bbox needs 4 finite numbers x y w h, got {list(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise InputError(f"--bbox width and height must be positive, got w={w:g} h={h:g}")
    return np.array([x + w / 2.0, y + h / 2.0]), max(w, h) / SCALE_UNIT_PX


def check_person(image: np.ndarray, image_path: str | Path, openpose: np.ndarray, center: np.ndarray, scale: float,
                 where: str) -> None:
    """Refuse the person as fit, train and eval refuse a dataset row (data/row_checks.py): a box wholly outside the
    image (the keypoints of another photo, say), NaN or absurd keypoints; `where` names the box's origin."""
    zeros = np.zeros
    row = SpinDataset(
        name="demo", image_root=Path(image_path).parent, imgname=np.array([Path(image_path).name]),
        center=np.asarray(center, np.float32).reshape(1, 2), scale=np.array([scale], np.float32),
        part=zeros((1, NUM_DATASET_JOINTS, 3), np.float32), openpose=np.asarray(openpose, np.float32)[None],
        S=zeros((1, NUM_DATASET_JOINTS, 4), np.float32), pose=zeros((1, POSE_DIM), np.float32),
        betas=zeros((1, SHAPE_DIM), np.float32), has_openpose=np.ones(1, bool), has_smpl=zeros(1, bool),
        has_3d=zeros(1, bool), gender=np.full(1, -1, np.int8),
    )
    height, width = image.shape[:2]
    check = check_rows(row, np.array([[width, height]], np.float64))
    if check.bad[0]:
        raise InputError(f"{where}: {check.detail(0)}; nothing to draw (are these the keypoints of "
                         f"{Path(image_path).name}? give the person's box with --bbox x y w h)")
