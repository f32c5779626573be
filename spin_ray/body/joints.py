"""Every keypoint convention in one place: names, parents, flip permutations and the maps between them.

Conventions (indices are facts of the published formats):
- SMPL's 24 kinematic joints.
- OpenPose BODY_25.
- SPIN's 24 "dataset" joints (LSP-14 first, then MPII/H36M/COCO face joints).
- SPIN's 49-keypoint set: BODY_25 followed by the 24 dataset joints.
- H36M-17 in the joint order of SPIN's H36M regressor, and LSP-14.

A body model provides its 24 joints plus the 20 `EXTRA_KEYPOINT_NAMES` as vertex regressors; the
49 SPIN keypoints are a gather from those 44 points (`SPIN49_FROM_JOINTS_AND_EXTRAS`).
"""

from __future__ import annotations

import torch

from spin_ray.errors import InputError

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
NUM_SMPL_JOINTS = 24

OPENPOSE25_NAMES: tuple[str, ...] = (
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder",
    "OP LElbow", "OP LWrist", "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip",
    "OP LKnee", "OP LAnkle", "OP REye", "OP LEye", "OP REar", "OP LEar", "OP LBigToe",
    "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
)
DATASET24_NAMES: tuple[str, ...] = (
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)",
    "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
)
SPIN49_NAMES: tuple[str, ...] = OPENPOSE25_NAMES + DATASET24_NAMES
NUM_KEYPOINTS = 49
NUM_OPENPOSE = 25

# Keypoints a body model regresses from its vertices (rows of its `keypoint_regressor`).
EXTRA_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
    "right_hip_lsp", "left_hip_lsp", "neck_lsp", "head_top", "pelvis_mpii", "thorax_mpii",
    "spine_h36m", "jaw_h36m", "head_h36m",
)
NUM_EXTRA_KEYPOINTS = len(EXTRA_KEYPOINT_NAMES)
# SMPL vertex ids of the first 11 extra keypoints (smplx's published ids); the last 9 come from
# SPIN's J_regressor_extra.npy, whose rows are in the order of EXTRA_KEYPOINT_NAMES[11:].
SMPL_EXTRA_VERTEX_IDS: dict[str, int] = {
    "nose": 332, "right_eye": 6260, "left_eye": 2800, "right_ear": 4071, "left_ear": 583,
    "left_big_toe": 3216, "left_small_toe": 3226, "left_heel": 3387,
    "right_big_toe": 6617, "right_small_toe": 6624, "right_heel": 6787,
}

_SOURCE_OF_SPIN49: dict[str, str] = {
    "OP Nose": "nose", "OP Neck": "neck", "OP RShoulder": "right_shoulder",
    "OP RElbow": "right_elbow", "OP RWrist": "right_wrist", "OP LShoulder": "left_shoulder",
    "OP LElbow": "left_elbow", "OP LWrist": "left_wrist", "OP MidHip": "pelvis",
    "OP RHip": "right_hip", "OP RKnee": "right_knee", "OP RAnkle": "right_ankle",
    "OP LHip": "left_hip", "OP LKnee": "left_knee", "OP LAnkle": "left_ankle",
    "OP REye": "right_eye", "OP LEye": "left_eye", "OP REar": "right_ear", "OP LEar": "left_ear",
    "OP LBigToe": "left_big_toe", "OP LSmallToe": "left_small_toe", "OP LHeel": "left_heel",
    "OP RBigToe": "right_big_toe", "OP RSmallToe": "right_small_toe", "OP RHeel": "right_heel",
    "Right Ankle": "right_ankle", "Right Knee": "right_knee", "Right Hip": "right_hip_lsp",
    "Left Hip": "left_hip_lsp", "Left Knee": "left_knee", "Left Ankle": "left_ankle",
    "Right Wrist": "right_wrist", "Right Elbow": "right_elbow", "Right Shoulder": "right_shoulder",
    "Left Shoulder": "left_shoulder", "Left Elbow": "left_elbow", "Left Wrist": "left_wrist",
    "Neck (LSP)": "neck_lsp", "Top of Head (LSP)": "head_top", "Pelvis (MPII)": "pelvis_mpii",
    "Thorax (MPII)": "thorax_mpii", "Spine (H36M)": "spine_h36m", "Jaw (H36M)": "jaw_h36m",
    "Head (H36M)": "head_h36m", "Nose": "nose", "Left Eye": "left_eye", "Right Eye": "right_eye",
    "Left Ear": "left_ear", "Right Ear": "right_ear",
}
_JOINTS_AND_EXTRAS = SMPL_JOINT_NAMES + EXTRA_KEYPOINT_NAMES
# Index of each SPIN keypoint into cat([24 joints, 20 extras]).
SPIN49_FROM_JOINTS_AND_EXTRAS: tuple[int, ...] = tuple(
    _JOINTS_AND_EXTRAS.index(_SOURCE_OF_SPIN49[name]) for name in SPIN49_NAMES
)


def _swap_side(name: str) -> str:
    """Name of the mirror-image joint (left <-> right), or the name itself on the midline."""
    pairs = (("left", "right"), ("Left", "Right"), ("OP L", "OP R"))
    for a, b in pairs:
        if name.startswith(a):
            return b + name[len(a):]
        if name.startswith(b):
            return a + name[len(b):]
    return name


def flip_permutation(names: tuple[str, ...]) -> tuple[int, ...]:
    """Permutation mapping each joint to its mirror image under a left-right flip."""
    return tuple(names.index(_swap_side(n)) for n in names)


SMPL_FLIP_PERM = flip_permutation(SMPL_JOINT_NAMES)
OPENPOSE25_FLIP_PERM = flip_permutation(OPENPOSE25_NAMES)
DATASET24_FLIP_PERM = flip_permutation(DATASET24_NAMES)
SPIN49_FLIP_PERM = flip_permutation(SPIN49_NAMES)
# Index into the 72-d axis-angle pose vector.
SMPL_POSE_FLIP_PERM: tuple[int, ...] = tuple(3 * j + k for j in SMPL_FLIP_PERM for k in range(3))

H36M17_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
LSP14_NAMES: tuple[str, ...] = DATASET24_NAMES[:14]
# LSP-14 order from H36M-17 (SPIN's evaluation map); the first 14 of the 24 dataset joints are LSP-14.
H36M17_TO_LSP14: tuple[int, ...] = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
DATASET24_TO_LSP14: tuple[int, ...] = tuple(range(14))
SPIN49_TO_LSP14: tuple[int, ...] = tuple(NUM_OPENPOSE + i for i in DATASET24_TO_LSP14)
SPIN49_TO_OPENPOSE25: tuple[int, ...] = tuple(range(NUM_OPENPOSE))
SPIN49_TO_DATASET24: tuple[int, ...] = tuple(range(NUM_OPENPOSE, NUM_KEYPOINTS))
# OpenPose torso joints that SPIN's camera stage uses, and the dataset hips it ignores there.
OPENPOSE_TORSO_NAMES: tuple[str, ...] = ("OP RHip", "OP LHip", "OP RShoulder", "OP LShoulder")
SPIN49_TORSO: tuple[int, ...] = tuple(SPIN49_NAMES.index(n) for n in OPENPOSE_TORSO_NAMES)


def spin49_indices(names: tuple[str, ...] | list[str], key: str = "joints") -> tuple[int, ...]:
    """Indices of named keypoints among the 49 SPIN keypoints; an unknown name is one clear error naming `key`."""
    unknown = [name for name in names if name not in SPIN49_NAMES]
    if unknown:
        raise InputError(f"{key}: unknown keypoint name(s) {unknown}; use names of the 49 SPIN keypoints, e.g. "
                         f"'OP Neck' or 'Right Hip' (the list is SPIN49_NAMES in spin_ray/body/joints.py)")
    return tuple(SPIN49_NAMES.index(name) for name in names)


# The one list of the joints SPIN's SMPLify ignores in its body stage and its ranking error: SMPL's neck
# and hips do not sit where OpenPose and the dataset annotators put them. `fitting.ignored_joints`
# replaces it for other skeletons.
SPIN_IGNORED_JOINT_NAMES: tuple[str, ...] = ("OP Neck", "OP RHip", "OP LHip", "Right Hip", "Left Hip")
SPIN49_IGNORED_IN_FIT: tuple[int, ...] = spin49_indices(SPIN_IGNORED_JOINT_NAMES)
# Dataset torso joints the camera stage falls back to when the OpenPose torso is not fully visible.
DATASET_TORSO_NAMES: tuple[str, ...] = ("Right Hip", "Left Hip", "Right Shoulder", "Left Shoulder")
SPIN49_DATASET_TORSO: tuple[int, ...] = tuple(SPIN49_NAMES.index(n) for n in DATASET_TORSO_NAMES)


def flip_keypoints(points: torch.Tensor, perm: tuple[int, ...] = SPIN49_FLIP_PERM) -> torch.Tensor:
    """Mirror keypoints (..., J, D) across x = 0 and swap left and right joints."""
    flipped = points[..., list(perm), :].clone()
    flipped[..., 0] = -flipped[..., 0]
    return flipped


def flip_pose(pose: torch.Tensor) -> torch.Tensor:
    """Mirror an axis-angle SMPL pose (..., 72): swap sides, negate the y and z rotation axes."""
    flipped = pose[..., list(SMPL_POSE_FLIP_PERM)].clone()
    flipped = flipped.reshape(*pose.shape[:-1], NUM_SMPL_JOINTS, 3)
    flipped[..., 1:] = -flipped[..., 1:]
    return flipped.reshape(pose.shape)
