"""SPIN's crops and augmentation (flip, in-plane rotation, scale, colour noise), in both directions.

Frames. The *canonical* crop of a sample is its center/scale box at rotation 0, scale 1, no flip;
the *augmented* crop adds the sample's `AugParams`. In normalised crop coordinates (2 * x / res - 1,
principal point at 0) a canonical keypoint k maps to  flip(R(-rot) k / scale),  where R(a) is the
2D rotation [[cos a, -sin a], [sin a, cos a]] in image axes (y down), so a positive `rot` turns the
picture counter-clockwise on screen, as in SPIN. 3D joints and the SMPL global orientation turn by
the same rotation about the camera's z axis (Rz(-rot)); a flip mirrors x and swaps left/right.
Scale changes only 2D quantities. Fits are stored canonical (`canonicalise_pose`) and the trainer
re-applies a batch's augmentation after a read (`augment_pose`).

Pixel coordinates put pixel centres at integers (OpenCV's convention); the flip axis and the
principal point are both at res / 2, so flipping the crop and negating normalised x agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from spin_ray.body.joints import DATASET24_FLIP_PERM, SPIN49_FLIP_PERM, flip_keypoints, flip_pose
from spin_ray.errors import InputError

# Layout of an augmentation record as an array (what a batch carries and fitters receive).
AUG_FIELDS: tuple[str, ...] = ("flip", "rot", "scale", "noise_r", "noise_g", "noise_b")
AUG_DIM = len(AUG_FIELDS)
# Box size in pixels of scale 1 (SPIN's 'scale' key is the person box divided by 200).
SCALE_UNIT_PX = 200.0


@dataclass(frozen=True)
class AugParams:
    """One sample's augmentation: horizontal flip, rotation in degrees, box scale, RGB gains."""

    flip: bool = False
    rot: float = 0.0
    scale: float = 1.0
    noise: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def as_array(self) -> np.ndarray:
        """The record as float32 (6,) in AUG_FIELDS order."""
        return np.array([float(self.flip), self.rot, self.scale, *self.noise], dtype=np.float32)

    @classmethod
    def from_array(cls, values) -> AugParams:
        """Inverse of `as_array`."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != (AUG_DIM,):
            raise InputError(f"an augmentation record has {AUG_DIM} values {AUG_FIELDS}, got {v.shape}")
        return cls(bool(v[0] > 0.5), float(v[1]), float(v[2]), (float(v[3]), float(v[4]), float(v[5])))


IDENTITY_AUG = AugParams()


def sample_aug_params(
    rng: np.random.Generator,
    rot_factor: float = 30.0,
    scale_factor: float = 0.25,
    noise_factor: float = 0.4,
    flip_prob: float = 0.5,
    rot_prob: float = 0.4,
) -> AugParams:
    """Draw SPIN's training augmentation: clipped normal rotation and scale, uniform RGB gains."""
    flip = bool(rng.uniform() < flip_prob)
    noise = tuple(float(x) for x in rng.uniform(1.0 - noise_factor, 1.0 + noise_factor, 3))
    rot = float(np.clip(rng.standard_normal() * rot_factor, -2.0 * rot_factor, 2.0 * rot_factor))
    scale = float(np.clip(1.0 + scale_factor * rng.standard_normal(), 1.0 - scale_factor, 1.0 + scale_factor))
    # SPIN zeroes the rotation with probability 0.6, i.e. rotates 40 % of samples.
    if rng.uniform() >= rot_prob:
        rot = 0.0
    return AugParams(flip=flip, rot=rot, scale=scale, noise=noise)


# -- image side (numpy / OpenCV, one sample) ------------------------------------------------------

def crop_matrix(center, scale: float, res: int, rot: float = 0.0, flip: bool = False) -> np.ndarray:
    """3x3 affine from original-image pixels to crop pixels for a box of `scale` * 200 px."""
    cx, cy = float(center[0]), float(center[1])
    box = SCALE_UNIT_PX * float(scale)
    if not (np.isfinite(box) and box > 0):
        raise InputError(f"crop scale must be positive and finite, got {scale!r}")
    zoom = res / box
    half = res / 2.0
    m = np.array([[zoom, 0.0, half - zoom * cx], [0.0, zoom, half - zoom * cy], [0.0, 0.0, 1.0]])
    if rot:
        a = np.deg2rad(-rot)
        c, s = np.cos(a), np.sin(a)
        about_centre = np.array([[c, -s, half - c * half + s * half], [s, c, half - s * half - c * half], [0, 0, 1]])
        m = about_centre @ m
    if flip:
        m = np.array([[-1.0, 0.0, res], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to points (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def crop_image(image: np.ndarray, matrix: np.ndarray, res: int) -> np.ndarray:
    """Warp `image` (H,W,C) into a res x res crop with `matrix`; outside the image is black."""
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    if zoom < 0.5:
        # Bilinear warping of a strong reduction aliases: shrink with area averaging first, to about
        # twice the crop's resolution, and fold the shrink into the matrix.
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * 2 * zoom)), max(1, round(h * 2 * zoom))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / w, new_h / h
        # cv2.resize maps source pixel centre x to (x + 0.5) * s - 0.5.
        shrink = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ np.linalg.inv(shrink)
    return cv2.warpAffine(image, matrix[:2], (res, res), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def normalise_keypoints(xy: np.ndarray, res: int) -> np.ndarray:
    """Crop pixels to SPIN's [-1, 1] keypoint coordinates (2 * x / res - 1)."""
    return 2.0 * np.asarray(xy) / res - 1.0


def denormalise_keypoints(xy: np.ndarray, res: int) -> np.ndarray:
    """Inverse of `normalise_keypoints`."""
    return (np.asarray(xy) + 1.0) * (res / 2.0)


def apply_colour_noise(image: np.ndarray, noise) -> np.ndarray:
    """Multiply RGB channels by their gains, clipped to [0, 255]; returns float32."""
    gains = np.asarray(noise, dtype=np.float32).reshape(1, 1, 3)
    return np.clip(image.astype(np.float32) * gains, 0.0, 255.0)


def augment_crop(
    image: np.ndarray, keypoints: np.ndarray, center, scale: float, params: AugParams, res: int
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented crop (res,res,3) float32 in [0,255] and its keypoints (J,3) normalised to [-1,1].

    `keypoints` are [x, y, conf] in original-image pixels in SPIN's 49 order (flip swaps sides).
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    matrix = crop_matrix(center, scale * params.scale, res, params.rot, params.flip)
    crop = apply_colour_noise(crop_image(image, matrix, res), params.noise)
    out = keypoints.copy()
    out[:, :2] = normalise_keypoints(transform_points(keypoints[:, :2], matrix), res)
    if params.flip:
        perm = _flip_perm_for(len(out))
        out = out[list(perm)]
    return crop, out


def _flip_perm_for(num_joints: int) -> tuple[int, ...]:
    if num_joints == len(SPIN49_FLIP_PERM):
        return SPIN49_FLIP_PERM
    if num_joints == len(DATASET24_FLIP_PERM):
        return DATASET24_FLIP_PERM
    raise InputError(f"no flip permutation known for {num_joints} joints (expected 49 or 24)")


# -- batched torch side (keypoints, 3D joints, pose) ----------------------------------------------

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


def _axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """(...,3) axis-angle to unit quaternions (...,4) [w, x, y, z]."""
    angle = aa.norm(dim=-1, keepdim=True)
    # sin(angle/2)/angle written with sinc, so it is smooth at angle 0.
    return torch.cat([torch.cos(angle / 2), aa * 0.5 * torch.sinc(angle / (2 * torch.pi))], -1)


def _quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (...,4) to axis-angle (...,3) with angle in [0, pi]."""
    q = torch.where(q[..., :1] < 0, -q, q)  # same rotation, w >= 0 gives the shortest angle
    w, v = q[..., :1], q[..., 1:]
    sin_half = v.norm(dim=-1, keepdim=True)
    safe = sin_half.clamp_min(1e-12)
    factor = torch.where(sin_half > 1e-7, 2.0 * torch.atan2(sin_half, w) / safe, 2.0 / w.clamp_min(1e-12))
    return v * factor


def _z_quaternion(angle_deg: torch.Tensor) -> torch.Tensor:
    half = torch.deg2rad(angle_deg) / 2
    zero = torch.zeros_like(half)
    return torch.stack([torch.cos(half), zero, zero, torch.sin(half)], -1)


def _quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def _rotate_global_orient(pose: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Left-multiply the root rotation of (B,72) poses by Rz(angle)."""
    root = _quaternion_to_axis_angle(
        _quaternion_multiply(_z_quaternion(angle_deg), _axis_angle_to_quaternion(pose[:, :3]))
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
