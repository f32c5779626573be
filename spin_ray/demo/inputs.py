"""The demo's inputs: an image, OpenPose's JSON output (BODY_25), and the person's box.

OpenPose writes one JSON file per image: `{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, ...]}, ...]}`
with 25 BODY_25 keypoints (`OPENPOSE25_NAMES` order) per person in image pixels; an undetected
keypoint is (0, 0, 0). Every check here raises an InputError that names the file and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from spin_ray.body.joints import NUM_OPENPOSE
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.errors import InputError

# SPIN's demo rule for a box from OpenPose: keypoints above this confidence span the box, which is
# then enlarged by BOX_RESCALE so the limbs are not cut off.
BOX_CONFIDENCE = 0.2
BOX_RESCALE = 1.2
# Other OpenPose body models, so a wrong file gets a helpful message.
_OTHER_MODELS = {18: "COCO", 15: "MPI"}


def read_image(path: str | Path) -> np.ndarray:
    """The image at path as RGB uint8 (H,W,3)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist; give the path of a photo (PNG, JPEG, ...)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"image {path} could not be decoded by OpenCV (corrupt, or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_openpose(path: str | Path) -> list[np.ndarray]:
    """Every person's BODY_25 keypoints (25,3) [x, y, confidence] from an OpenPose JSON file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"keypoint file {path} does not exist; run OpenPose with --write_json and pass "
                         "the file it wrote for this image")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not JSON ({err}); expected OpenPose's --write_json output") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise InputError(f"{path} has no 'people' list; expected OpenPose's --write_json output "
                         '{"people": [{"pose_keypoints_2d": [...]}]}')
    if not people:
        raise InputError(f"{path}: OpenPose found no people in this image (empty 'people' list); "
                         "nothing to fit")
    return [_person_keypoints(person, i, path) for i, person in enumerate(people)]


def _person_keypoints(person: object, index: int, path: Path) -> np.ndarray:
    """One person's (25,3) keypoints, validated."""
    values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
    if not isinstance(values, list):
        raise InputError(f"{path}: person {index} has no 'pose_keypoints_2d' list")
    if len(values) != 3 * NUM_OPENPOSE:
        count = len(values) / 3
        hint = (f" ({int(count)} keypoints: OpenPose's {_OTHER_MODELS[int(count)]} model?)"
                if count in _OTHER_MODELS else "")
        raise InputError(f"{path}: person {index} has {len(values)} values in pose_keypoints_2d{hint}, expected "
                         f"{3 * NUM_OPENPOSE} (BODY_25 x [x, y, c]); run OpenPose with --model_pose BODY_25")
    try:
        keypoints = np.array(values, dtype=np.float64).reshape(NUM_OPENPOSE, 3)
    except (TypeError, ValueError):
        raise InputError(f"{path}: person {index} has non-numeric values in pose_keypoints_2d") from None
    if not np.isfinite(keypoints).all():
        raise InputError(f"{path}: person {index} has NaN or infinite values in pose_keypoints_2d")
    return keypoints


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
