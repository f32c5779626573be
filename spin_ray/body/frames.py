"""Batched torch transforms between a sample's canonical frame and its augmented crop.

A sample's augmentation record (`AUG_FIELDS`: flip, in-plane rotation in degrees, box scale, RGB
gains) maps a canonical normalised keypoint k to  flip(R(-rot) k / scale); 3D joints and the SMPL
global orientation turn by Rz(-rot) about the camera's z axis and a flip mirrors x and swaps left
and right. Scale changes only 2D quantities. The data loader augments with these; the fitting
canonicalises with them (fits are stored canonical) and the trainer re-applies a batch's
augmentation after a read. They live with the body because they are facts about the body's joints
and pose (flip permutations), used by every floor above it.
"""

from __future__ import annotations

import torch

from spin_ray.body.joints import DATASET24_FLIP_PERM, SPIN49_FLIP_PERM, flip_keypoints, flip_pose
from spin_ray.errors import InputError
from spin_ray.geometry import (
    axis_angle_to_quaternion,
    quaternion_multiply,
    quaternion_to_axis_angle,
    z_rotation_quaternion,
)

# Layout of an augmentation record as an array (what a batch carries and fitters receive).
AUG_FIELDS: tuple[str, ...] = ("flip", "rot", "scale", "noise_r", "noise_g", "noise_b")
AUG_DIM = len(AUG_FIELDS)
# The record of a canonical crop: no flip, no rotation, unit scale and colour gains (what fits are stored in).
NO_AUG: tuple[float, ...] = tuple(0.0 if name in ("flip", "rot") else 1.0 for name in AUG_FIELDS)
# Box side in pixels of scale 1: SPIN's `scale` key is the person box divided by 200.
SCALE_UNIT_PX = 200.0


def _check_aug(aug: torch.Tensor, batch: int) -> torch.Tensor:
    if aug.ndim != 2 or aug.shape != (batch, AUG_DIM):
        raise InputError(f"aug must be ({batch}, {AUG_DIM}) records {AUG_FIELDS}, got {tuple(aug.shape)}")
    return aug


def _rotation2d(angle_deg: torch.Tensor) -> torch.Tensor:
    """(B,2,2) rotations R(a) in image axes for angles in degrees."""
    a = torch.deg2rad(angle_deg)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _maybe_flip(points: torch.Tensor, flip: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1) > 0.5, flip_keypoints(points, perm), points)


def augment_keypoints(keypoints: torch.Tensor, aug: torch.Tensor, flip_perm=SPIN49_FLIP_PERM) -> torch.Tensor:
    """Canonical normalised keypoints (B,J,2|3) to the augmented crop; the confidence is kept."""
    aug = _check_aug(aug, keypoints.shape[0]).to(keypoints.dtype)
    xy = torch.einsum("bij,bkj->bki", _rotation2d(-aug[:, 1]), keypoints[..., :2]) / aug[:, 2, None, None]
    return _maybe_flip(torch.cat([xy, keypoints[..., 2:]], -1), aug[:, 0], flip_perm)


def canonicalise_keypoints(keypoints: torch.Tensor, aug: torch.Tensor, flip_perm=SPIN49_FLIP_PERM) -> torch.Tensor:
    """Inverse of `augment_keypoints`."""
    aug = _check_aug(aug, keypoints.shape[0]).to(keypoints.dtype)
    unflipped = _maybe_flip(keypoints, aug[:, 0], flip_perm)
    xy = torch.einsum("bij,bkj->bki", _rotation2d(aug[:, 1]), unflipped[..., :2]) * aug[:, 2, None, None]
    return torch.cat([xy, unflipped[..., 2:]], -1)


def _rotate_about_z(points: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    xy = torch.einsum("bij,bkj->bki", _rotation2d(angle_deg), points[..., :2])
    return torch.cat([xy, points[..., 2:]], -1)


def augment_joints3d(joints: torch.Tensor, aug: torch.Tensor, flip_perm=DATASET24_FLIP_PERM) -> torch.Tensor:
    """Canonical camera-frame 3D joints (B,J,3|4) to the augmented frame; a 4th (conf) column is kept."""
    aug = _check_aug(aug, joints.shape[0]).to(joints.dtype)
    return _maybe_flip(_rotate_about_z(joints, -aug[:, 1]), aug[:, 0], flip_perm)


def canonicalise_joints3d(joints: torch.Tensor, aug: torch.Tensor, flip_perm=DATASET24_FLIP_PERM) -> torch.Tensor:
    """Inverse of `augment_joints3d`."""
    aug = _check_aug(aug, joints.shape[0]).to(joints.dtype)
    return _rotate_about_z(_maybe_flip(joints, aug[:, 0], flip_perm), aug[:, 1])


def _rotate_global_orient(pose: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Left-multiply the root rotation of (B,72) poses by Rz(angle)."""
    root = quaternion_to_axis_angle(
        quaternion_multiply(z_rotation_quaternion(angle_deg), axis_angle_to_quaternion(pose[:, :3]))
    )
    return torch.cat([root, pose[:, 3:]], -1)


def augment_pose(pose: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """Canonical axis-angle SMPL poses (B,72) to the augmented frame: root turned by Rz(-rot), then flipped."""
    if pose.ndim != 2 or pose.shape[1] != 72:
        raise InputError(f"pose must be (B,72) axis-angle, got {tuple(pose.shape)}")
    aug = _check_aug(aug, pose.shape[0]).to(pose.dtype)
    rotated = _rotate_global_orient(pose, -aug[:, 1])
    return torch.where(aug[:, :1] > 0.5, flip_pose(rotated), rotated)


def canonicalise_pose(pose: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """Inverse of `augment_pose` (the frame fits are stored in)."""
    if pose.ndim != 2 or pose.shape[1] != 72:
        raise InputError(f"pose must be (B,72) axis-angle, got {tuple(pose.shape)}")
    aug = _check_aug(aug, pose.shape[0]).to(pose.dtype)
    unflipped = torch.where(aug[:, :1] > 0.5, flip_pose(pose), pose)
    return _rotate_global_orient(unflipped, aug[:, 1])


def canonicalise_fit(
    pose: torch.Tensor, keypoints: torch.Tensor, aug: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fit found in an augmented crop and the keypoints it was fitted to, both moved to the canonical crop."""
    return canonicalise_pose(pose, aug), canonicalise_keypoints(keypoints, aug)
