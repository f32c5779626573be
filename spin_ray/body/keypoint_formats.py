"""Keypoint formats people bring (COCO-17, OpenPose BODY_25 and COCO-18, Halpe-26, COCO-WholeBody-133) and
where each of their joints goes among SPIN's 49 (`joints.SPIN49_NAMES`).

Every format has two maps, source joint name -> SPIN49 name, or None where SPIN has no such joint:
- `detector`: the OpenPose-named slots, as SPIN's `openpose` array holds a detector's joints;
- `ground_truth`: the 24 dataset slots (SPIN's `part` array) where the annotated joint is the same one.
Choices (facts of SPIN's own COCO preprocessing where it has one):
- COCO's hips go to the LSP hip slots, as SPIN maps COCO 2014 ground truth; they are not LSP's hips exactly,
  which is why SPIN's fit ignores those slots (`joints.SPIN_IGNORED_JOINT_NAMES`). COCO's face joints go to
  the dataset Nose/Eye/Ear slots.
- Halpe's head (the top of the head) goes to LSP's head top, its hip (the pelvis) to MPII's pelvis and
  OpenPose's MidHip. Its neck (between the shoulders, like OpenPose's) goes to OpenPose's neck only: LSP's
  neck is the upper neck, another point.
- Feet (big toe, small toe, heel) exist only among OpenPose's slots; WholeBody's face and hands have none.
- No joint is made up: a format without a neck or mid-hip leaves those slots at confidence 0. The one
  exception is BlazePose-33 (the bundled photo detector, data/detect.py): its neck and mid-hip are the midpoints
  of its shoulders and hips (`with_blazepose_midpoints`), as OpenPose defines those two joints; its foot index
  (the tip of the foot) fills the big toe, and it has no small toe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spin_ray.body.joints import OPENPOSE25_NAMES, SPIN49_NAMES

Slots = Literal["openpose", "dataset"]

COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)


def openpose_joint_name(slot: str) -> str:
    """OpenPose's own name of a BODY_25 slot of SPIN's 49: 'OP RBigToe' -> 'right_big_toe', 'OP MidHip' -> 'mid_hip'."""
    bare = slot.removeprefix("OP ")
    side = {"R": "right_", "L": "left_"}.get(bare[0], "") if bare[1:2].isupper() else ""
    return side + re.sub(r"(?<!^)(?=[A-Z])", "_", bare[1:] if side else bare).lower()


# OpenPose's own joint names, in BODY_25 order: the first 25 of SPIN's 49 (body/joints.py), renamed.
OPENPOSE_BODY25_NAMES: tuple[str, ...] = tuple(openpose_joint_name(slot) for slot in OPENPOSE25_NAMES)
OPENPOSE_COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
HALPE26_NAMES: tuple[str, ...] = COCO17_NAMES + (
    "head", "neck", "hip", "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe",
    "left_heel", "right_heel",
)
# MediaPipe's BlazePose landmarks in its order (mediapipe.python.solutions.pose.PoseLandmark, lower case).
BLAZEPOSE33_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
# The two joints OpenPose has and BlazePose lacks, each the midpoint of a BlazePose pair (appended in this order).
BLAZEPOSE_MIDPOINTS: dict[str, tuple[str, str]] = {
    "neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip"),
}
WHOLEBODY_FOOT_NAMES: tuple[str, ...] = (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)
WHOLEBODY133_NAMES: tuple[str, ...] = (
    COCO17_NAMES + WHOLEBODY_FOOT_NAMES + tuple(f"face_{i}" for i in range(68))
    + tuple(f"left_hand_{i}" for i in range(21)) + tuple(f"right_hand_{i}" for i in range(21))
)

# The one vocabulary: a joint name of the formats above -> its OpenPose slot and its dataset slot.
_OPENPOSE_SLOT: dict[str, str] = {
    "nose": "OP Nose", "neck": "OP Neck", "right_shoulder": "OP RShoulder", "right_elbow": "OP RElbow",
    "right_wrist": "OP RWrist", "left_shoulder": "OP LShoulder", "left_elbow": "OP LElbow",
    "left_wrist": "OP LWrist", "mid_hip": "OP MidHip", "hip": "OP MidHip", "right_hip": "OP RHip",
    "right_knee": "OP RKnee", "right_ankle": "OP RAnkle", "left_hip": "OP LHip", "left_knee": "OP LKnee",
    "left_ankle": "OP LAnkle", "right_eye": "OP REye", "left_eye": "OP LEye", "right_ear": "OP REar",
    "left_ear": "OP LEar", "left_big_toe": "OP LBigToe", "left_small_toe": "OP LSmallToe",
    "left_heel": "OP LHeel", "right_big_toe": "OP RBigToe", "right_small_toe": "OP RSmallToe",
    "right_heel": "OP RHeel",
    # BlazePose's foot index is the tip of the foot, where OpenPose puts the big toe.
    "left_foot_index": "OP LBigToe", "right_foot_index": "OP RBigToe",
}
_DATASET_SLOT: dict[str, str] = {
    "right_ankle": "Right Ankle", "right_knee": "Right Knee", "right_hip": "Right Hip", "left_hip": "Left Hip",
    "left_knee": "Left Knee", "left_ankle": "Left Ankle", "right_wrist": "Right Wrist",
    "right_elbow": "Right Elbow", "right_shoulder": "Right Shoulder", "left_shoulder": "Left Shoulder",
    "left_elbow": "Left Elbow", "left_wrist": "Left Wrist", "head": "Top of Head (LSP)", "hip": "Pelvis (MPII)",
    "nose": "Nose", "left_eye": "Left Eye", "right_eye": "Right Eye", "left_ear": "Left Ear",
    "right_ear": "Right Ear",
}
# Arms and legs: the joints SPIN matches a detection to a ground-truth person by (its read_openpose's 12).
LIMB12_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
    "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
)
LIMB12_OPENPOSE: tuple[int, ...] = tuple(SPIN49_NAMES.index(_OPENPOSE_SLOT[n]) for n in LIMB12_NAMES)
LIMB12_DATASET: tuple[int, ...] = tuple(SPIN49_NAMES.index(_DATASET_SLOT[n]) for n in LIMB12_NAMES)


@dataclass(frozen=True)
class KeypointFormat:
    """A source keypoint format: its joint names in order and where each goes among SPIN's 49."""

    name: str
    title: str
    joint_names: tuple[str, ...]
    detector: dict[str, str | None]
    ground_truth: dict[str, str | None]

    @property
    def num_joints(self) -> int:
        """Joints per person in this format."""
        return len(self.joint_names)

    def gather(self, slots: Slots) -> tuple[np.ndarray, np.ndarray]:
        """(source indices, SPIN49 indices) of the joints this format fills in `slots`."""
        table = self.detector if slots == "openpose" else self.ground_truth
        pairs = [(i, SPIN49_NAMES.index(table[n])) for i, n in enumerate(self.joint_names) if table[n] is not None]
        return np.array([p[0] for p in pairs], np.intp), np.array([p[1] for p in pairs], np.intp)

    def to_spin49(self, keypoints: np.ndarray, slots: Slots) -> np.ndarray:
        """(N,49,3) from (N,J,3) source keypoints, zero (confidence 0) where the format has no joint."""
        source, target = self.gather(slots)
        out = np.zeros((*keypoints.shape[:-2], len(SPIN49_NAMES), 3), np.float32)
        out[..., target, :] = keypoints[..., source, :]
        return out


def _make(name: str, title: str, joint_names: tuple[str, ...]) -> KeypointFormat:
    return KeypointFormat(name, title, joint_names, {n: _OPENPOSE_SLOT.get(n) for n in joint_names},
                          {n: _DATASET_SLOT.get(n) for n in joint_names})


FORMATS: dict[str, KeypointFormat] = {f.name: f for f in (
    _make("coco", "COCO-17", COCO17_NAMES),
    _make("openpose25", "OpenPose BODY_25", OPENPOSE_BODY25_NAMES),
    _make("openpose18", "OpenPose COCO-18", OPENPOSE_COCO18_NAMES),
    _make("halpe", "Halpe-26", HALPE26_NAMES),
    _make("wholebody", "COCO-WholeBody-133", WHOLEBODY133_NAMES),
    _make("blazepose", "BlazePose-33 (+ neck, mid-hip)", BLAZEPOSE33_NAMES + tuple(BLAZEPOSE_MIDPOINTS)),
)}


def with_blazepose_midpoints(landmarks: np.ndarray) -> np.ndarray:
    """(...,35,3) from BlazePose's (...,33,3) [x, y, confidence]: the neck and mid-hip appended as midpoints, each as
    confident as the less confident of its pair."""
    extra = []
    for a, b in BLAZEPOSE_MIDPOINTS.values():
        pa, pb = landmarks[..., BLAZEPOSE33_NAMES.index(a), :], landmarks[..., BLAZEPOSE33_NAMES.index(b), :]
        extra.append(np.concatenate([(pa[..., :2] + pb[..., :2]) / 2.0, np.minimum(pa[..., 2:], pb[..., 2:])], -1))
    return np.concatenate([landmarks, np.stack(extra, axis=-2)], axis=-2).astype(np.float32)


def blazepose_to_openpose25(landmarks: np.ndarray) -> np.ndarray:
    """(...,25,3) BODY_25-slot keypoints (`OPENPOSE25_NAMES` order) from BlazePose's (...,33,3) landmarks."""
    return FORMATS["blazepose"].to_spin49(with_blazepose_midpoints(landmarks), "openpose")[..., :len(OPENPOSE25_NAMES), :]
