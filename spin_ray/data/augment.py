"""SPIN's crops and augmentation (flip, in-plane rotation, scale, colour noise), in both directions.

Frames. The *canonical* crop of a sample is its center/scale box at rotation 0, scale 1, no flip;
the *augmented* crop adds the sample's `AugParams`. In normalised crop coordinates (2 * x / res - 1,
principal point at 0) a canonical keypoint k maps to  flip(R(-rot) k / scale),  where R(a) is the
2D rotation [[cos a, -sin a], [sin a, cos a]] in image axes (y down), so a positive `rot` turns the
picture counter-clockwise on screen, as in SPIN. 3D joints and the SMPL global orientation turn by
the same rotation about the camera's z axis (Rz(-rot)); a flip mirrors x and swaps left/right.
Scale changes only 2D quantities. This module does the numpy side (image crops, per-sample
keypoints); the batched torch transforms of keypoints, joints and poses live in `spin_ray.body.frames`.

Pixel coordinates put pixel centres at integers (OpenCV's convention); the flip axis and the
principal point are both at res / 2, so flipping the crop and negating normalised x agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spin_ray.body.frames import AUG_DIM, AUG_FIELDS, NO_AUG, SCALE_UNIT_PX
from spin_ray.body.joints import DATASET24_FLIP_PERM, SPIN49_FLIP_PERM
from spin_ray.errors import InputError
from spin_ray.geometry import pixels_to_normalised

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


IDENTITY_AUG = AugParams.from_array(NO_AUG)


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
    out[:, :2] = pixels_to_normalised(transform_points(keypoints[:, :2], matrix), res)
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
