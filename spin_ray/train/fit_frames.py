"""Moving fits between a batch's augmented crop and the canonical frame the fit store holds.

The ranking error of a stored fit is always computed the same way, whoever produced it: in the
canonical (un-augmented) 224-pixel crop, with the camera translation in closed form from the
keypoints. So a loop fit, a static fit and a fit found from a flipped, rotated view of the same
sample are ranked against each other fairly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig
from spin_ray.body.frames import augment_pose, canonicalise_keypoints, canonicalise_pose
from spin_ray.fitting.scoring import crop_pixels, score_fits

__all__ = ["CanonicalFits", "augmented_pose", "canonical_fits", "crop_pixels", "score_fits"]


@dataclass(frozen=True)
class CanonicalFits:
    """Fits in the canonical frame with their ranking errors, ready for `FitStore.keep_best`."""

    pose: torch.Tensor  # (B, 72) axis-angle
    betas: torch.Tensor  # (B, num_betas)
    error: torch.Tensor  # (B,) inf where the fit is unusable


def canonical_fits(
    body: BodyModel, pose: torch.Tensor, betas: torch.Tensor, keypoints: torch.Tensor, aug: torch.Tensor,
    camera: CameraConfig, sigma: float,
) -> CanonicalFits:
    """Fits found in a batch's augmented frame (pose (B,72), normalised keypoints (B,49,3)) moved to canonical."""
    canonical_pose = canonicalise_pose(pose, aug)
    canonical_keypoints = crop_pixels(canonicalise_keypoints(keypoints, aug), camera)
    error = score_fits(body, canonical_pose, betas, canonical_keypoints, camera, sigma)
    return CanonicalFits(canonical_pose, betas, error)


def augmented_pose(canonical_pose: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """A stored (canonical) pose (B,72) seen through a batch's augmentation."""
    return augment_pose(canonical_pose, aug)
