"""The one path from a network's predictions to fits the store can rank: SMPLify, then the canonical frame.

Predictions are made in a batch's augmented crop (flipped, rotated, scaled as the network saw the
sample); the store holds fits in the sample's canonical crop, ranked by one error computed the same
way whoever made the fit (`scoring.score_fits`: canonical crop, camera in closed form). So the
`sync` step, the fitter actors and anything else that fits from predictions call `fit_predictions`,
and nothing else moves fits between frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.frames import canonicalise_fit
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.fitting.scoring import score_fits
from spin_ray.fitting.recipes import fit
from spin_ray.fitting.smplify import SmplifyParams
from spin_ray.geometry import keypoints_to_pixels


class FitStart(Protocol):
    """What `fit_predictions` fits: an SMPLify start in a batch's augmented crop, with its keypoints and augmentation.

    Tensors or numpy arrays: the trainer's `StepPredictions`, `StartBatch` and the pipeline's `FitRequest` all
    have these fields, so each hands itself to `fit_predictions` as it is (no torch object crosses Ray).
    """

    pose: Any  # (B, 72) axis-angle, augmented frame
    betas: Any  # (B, num_betas)
    camera_t: Any  # (B, 3) camera translation
    keypoints: Any  # (B, 49, 3) [x, y, conf] normalised to [-1, 1] in the augmented crop
    aug: Any  # (B, 6) augmentation records in AUG_FIELDS order


@dataclass(frozen=True)
class StartBatch:
    """A `FitStart` of tensors: what `static_fits.static_start` builds from given parameters."""

    pose: torch.Tensor
    betas: torch.Tensor
    camera_t: torch.Tensor
    keypoints: torch.Tensor
    aug: torch.Tensor


class SampleStarts(FitStart, Protocol):
    """A `FitStart` of named samples at a trainer step: what the fitter pool takes (`FitQueue.submit_predictions`).

    The trainer's `StepPredictions` (train/supervision.py) is one; the pool turns it into its own `FitRequest`.
    """

    step: int  # the trainer step whose predictions these are (0: a dataset fit's starts)
    datasets: Any  # (B,) dataset name of each row
    indices: Any  # (B,) int64 dataset rows


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
    canonical_pose, canonical_keypoints = canonicalise_fit(pose, keypoints, aug)
    error = score_fits(body, canonical_pose, betas, keypoints_to_pixels(canonical_keypoints, camera.crop_size),
                       camera, fitting)
    return CanonicalFits(canonical_pose, betas, error)


def _tensor(values: Any, device: torch.device) -> torch.Tensor:
    """A tensor on `device` that owns its memory (arrays Ray hands over are read-only views of its object store)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device)
    return torch.tensor(np.asarray(values), device=device)


def fit_predictions(
    body: BodyModel, prior: torch.nn.Module, start: FitStart, fitting: FittingConfig, camera: CameraConfig,
) -> CanonicalFits:
    """SMPLify (fitting.recipe) from a start in an augmented crop (normalised keypoints (B,49,3)), canonical.

    Runs on the body model's device. The error is inf where SMPLify failed or any value of the fit
    is not finite; such rows are never written (`FitStore.keep_best_samples` skips them).
    """
    device = body.j_template.device
    keypoints, aug = _tensor(start.keypoints, device), _tensor(start.aug, device)
    params = SmplifyParams.from_pose(_tensor(start.pose, device), _tensor(start.betas, device),
                                     _tensor(start.camera_t, device))
    result = fit(body, prior, keypoints_to_pixels(keypoints, camera.crop_size), params, fitting, camera)
    fits = to_canonical(body, result.params.pose, result.params.betas, keypoints, aug, camera, fitting)
    usable = (
        ~result.failed
        & torch.isfinite(fits.error)
        & torch.isfinite(fits.pose).all(dim=1)
        & torch.isfinite(fits.betas).all(dim=1)
    )
    error = torch.where(usable, fits.error, torch.full_like(fits.error, float("inf")))
    return CanonicalFits(fits.pose.detach(), fits.betas.detach(), error.detach())
