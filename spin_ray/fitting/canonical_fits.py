"""The one path from a network's predictions to fits the store can rank: SMPLify, then the canonical frame.

Predictions are made in a batch's augmented crop (flipped, rotated, scaled as the network saw the
sample); the store holds fits in the sample's canonical crop, ranked by one error computed the same
way whoever made the fit (`scoring.score_fits`: canonical crop, camera in closed form). So the
`sync` step, the fitter actors and anything else that fits from predictions call `fit_predictions`,
and nothing else moves fits between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.frames import canonicalise_keypoints, canonicalise_pose
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.fitting.scoring import score_fits
from spin_ray.fitting.recipes import fit
from spin_ray.fitting.smplify import SmplifyParams
from spin_ray.geometry import keypoints_to_pixels


@dataclass(frozen=True)
class StepPredictions:
    """A step's detached predictions as an SMPLify start, with the batch's sample names, keypoints and augmentation.

    What the trainer hands the fitter pool and what `spin-ray fit` sends it: it lives here, below both.
    """

    step: int
    datasets: list[str]  # (B,) dataset of each row
    indices: np.ndarray  # (B,) int64 dataset rows
    start: SmplifyParams  # axis-angle pose, betas, camera translation, in the batch's augmented frame
    keypoints: torch.Tensor  # (B, 49, 3) normalised in the augmented crop
    aug: torch.Tensor  # (B, 6) augmentation records


@dataclass(frozen=True)
class CanonicalFits:
    """Fits in the canonical frame with their ranking errors, ready for `FitStore.keep_best_samples`."""

    pose: torch.Tensor  # (B, 72) axis-angle
    betas: torch.Tensor  # (B, num_betas)
    error: torch.Tensor  # (B,) ranking error; inf where the fit is unusable


def to_canonical(
    body: BodyModel, pose: torch.Tensor, betas: torch.Tensor, keypoints: torch.Tensor, aug: torch.Tensor,
    camera: CameraConfig, fitting: FittingConfig,
) -> CanonicalFits:
    """Fits found in an augmented crop (pose (B,72), normalised keypoints (B,49,3)) moved to canonical and scored."""
    canonical_pose = canonicalise_pose(pose, aug)
    canonical_keypoints = keypoints_to_pixels(canonicalise_keypoints(keypoints, aug), camera.crop_size)
    error = score_fits(body, canonical_pose, betas, canonical_keypoints, camera, fitting)
    return CanonicalFits(canonical_pose, betas, error)


def fit_predictions(
    body: BodyModel, prior: torch.nn.Module, start: SmplifyParams, keypoints: torch.Tensor, aug: torch.Tensor,
    fitting: FittingConfig, camera: CameraConfig,
) -> CanonicalFits:
    """SMPLify (fitting.recipe) from predictions in an augmented crop (normalised keypoints (B,49,3)), canonical.

    The error is inf where SMPLify failed or any value of the fit is not finite; such rows are
    never written (`FitStore.keep_best_samples` skips them).
    """
    result = fit(body, prior, keypoints_to_pixels(keypoints, camera.crop_size), start, fitting, camera)
    fits = to_canonical(body, result.params.pose, result.params.betas, keypoints, aug, camera, fitting)
    usable = (
        ~result.failed
        & torch.isfinite(fits.error)
        & torch.isfinite(fits.pose).all(dim=1)
        & torch.isfinite(fits.betas).all(dim=1)
    )
    error = torch.where(usable, fits.error, torch.full_like(fits.error, float("inf")))
    return CanonicalFits(fits.pose.detach(), fits.betas.detach(), error.detach())
