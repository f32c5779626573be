"""Fitting recipes behind one call: `spin` (the paper's SMPLify, unchanged) and `staged` (a better 3D fit).

`staged` keeps SPIN's camera stage, then runs the body stage as a few steps whose pose, bending and
shape prior weights decrease (a far start first moves under strong priors, the last steps follow the
keypoints), and lets the camera translation move in every body step, the depth with a larger step:
SPIN pins the depth of its start, so a start 10 % too far stays 10 % too far. Measured in
benchmarks/bench_fit_quality.py (RESULTS.md, "Fit quality, recipes").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.errors import InputError
from spin_ray.fitting.smplify import (
    SmplifyParams,
    SmplifyResult,
    body_stage_loss,
    camera_stage,
    fit_result,
    model_keypoints,
    prepare_fit,
    run_stage,
    smplify,
)

RECIPES = ("spin", "staged")


def scaled_priors(fitting: FittingConfig, scale: float) -> FittingConfig:
    """fitting with its pose, bending and shape prior weights times scale."""
    return fitting.model_copy(update={
        "pose_prior_weight": fitting.pose_prior_weight * scale,
        "angle_prior_weight": fitting.angle_prior_weight * scale,
        "shape_prior_weight": fitting.shape_prior_weight * scale,
    })


def staged_fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> SmplifyResult:
    """SPIN's camera stage, then body steps with decreasing prior weights and the camera translation free."""
    inputs = prepare_fit(body, keypoints_2d, init, fitting, camera)
    keypoints_2d = inputs.keypoints_2d

    def kp(p: SmplifyParams) -> torch.Tensor:
        return model_keypoints(body, p, fitting.joints_only)

    params, failed = camera_stage(body, inputs, fitting, camera, on_iteration)
    depth_scale = torch.tensor([1.0, 1.0, fitting.staged_depth_lr_scale], dtype=params.camera_t.dtype)
    for scale in fitting.staged_prior_scales:
        step = scaled_priors(fitting, scale)
        params, failed = run_stage(
            params, ("global_orient", "body_pose", "betas", "camera_t"), fitting.staged_iterations, fitting.lr,
            failed,
            lambda p, step=step: body_stage_loss(kp(p), p, keypoints_2d, inputs.conf, pose_prior, camera, step),
            scales={"camera_t": depth_scale}, on_iteration=on_iteration,
        )
    return fit_result(body, inputs, params, failed, fitting, camera)


def fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> SmplifyResult:
    """Fit SMPL to 2D keypoints (B, 49, 3) with fitting.recipe; `spin` is smplify itself."""
    if fitting.recipe == "spin":
        return smplify(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration)
    if fitting.recipe == "staged":
        return staged_fit(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration)
    raise InputError(f"fitting.recipe {fitting.recipe!r} is not one of {RECIPES}")
