"""The one way every stored fit is scored: its ranking error in a crop, camera in closed form.

A loop fit, a static fit and a fit found from a flipped, rotated view of the same sample must be
ranked against each other fairly, so none of them keeps the camera its own optimisation found:
the translation is recomputed from the keypoints, as SPIN does for stored fits.
"""

from __future__ import annotations

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.fitting.starts import typical_depth
from spin_ray.fitting.smplify import (
    SmplifyParams,
    camera_from_keypoints,
    ignored_joints,
    model_keypoints,
    ranking_error,
)


def score_fits(
    body: BodyModel, pose: torch.Tensor, betas: torch.Tensor, keypoints_px: torch.Tensor,
    camera: CameraConfig, fitting: FittingConfig,
) -> torch.Tensor:
    """Ranking error (B,) of fits against crop-pixel keypoints, camera translation in closed form."""
    ignored = ignored_joints(fitting)
    with torch.no_grad():
        camera_t = camera_from_keypoints(body, pose, betas, keypoints_px, camera, typical_depth(camera), ignored)
        params = SmplifyParams.from_pose(pose, betas, camera_t)
        error = ranking_error(model_keypoints(body, params), camera_t, keypoints_px, camera, fitting.gmof_sigma,
                              ignored)
    return torch.nan_to_num(error, nan=float("inf"))
