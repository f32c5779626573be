"""Synthetic fitting problems with known truth, and the network-like start a regressor would give.

Used by the tests and the SMPLify benchmark: people posed by the open pose sampler, facing the
camera, projected into the crop camera; a "network-like" initialisation is the truth with noise.
Production starts (the mean pose, the typical depth) live in `spin_ray.fitting.starts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.pose_sampler import sample_body_poses, sample_global_orient
from spin_ray.config import CameraConfig
from spin_ray.fitting.smplify import SmplifyParams, project
from spin_ray.fitting.starts import TYPICAL_CAMERA_SCALE


@dataclass(frozen=True)
class FittingProblem:
    """Ground truth and its observed keypoints (B, 49, 3) [u, v, conf] in crop pixels."""

    pose: torch.Tensor
    betas: torch.Tensor
    camera_t: torch.Tensor
    keypoints_2d: torch.Tensor
    joints_3d: torch.Tensor  # (B, 24, 3) body-frame joints of the truth

    @property
    def params(self) -> SmplifyParams:
        """The truth as SMPLify parameters."""
        return SmplifyParams.from_pose(self.pose, self.betas, self.camera_t)


def synthetic_problems(
    body: BodyModel, n: int, generator: torch.Generator, camera: CameraConfig,
    max_yaw: float = math.radians(30), pixel_noise: float = 0.0,
) -> FittingProblem:
    """n people from the pose sampler, betas ~ N(0, 1), facing the camera within ±max_yaw, seen in the crop."""
    pose = sample_body_poses(n, generator)
    pose[:, :3] = sample_global_orient(n, max_yaw, generator)
    betas = torch.randn(n, body.num_betas, generator=generator)
    with torch.no_grad():
        out = body.keypoints(axis_angle_pose_to_rotmats(pose), betas)
        scale = TYPICAL_CAMERA_SCALE * (0.85 + 0.3 * torch.rand(n, generator=generator))
        depth = 2.0 * camera.focal_length / (camera.crop_size * scale)
        # Centre the pelvis (keypoint "OP MidHip", index 8) in the crop, then jitter a little.
        centre = out[:, 8]
        jitter = 0.05 * torch.randn(n, 2, generator=generator)
        camera_t = torch.cat([-centre[:, :2] + jitter, (depth - centre[:, 2])[:, None]], dim=1)
        uv = project(out, camera_t, camera)
        uv = uv + pixel_noise * torch.randn(uv.shape, generator=generator)
        keypoints_2d = torch.cat([uv, torch.ones(n, uv.shape[1], 1)], dim=-1)
        joints = posed_joints(body, pose, betas)
    return FittingProblem(pose, betas, camera_t, keypoints_2d, joints)


def posed_joints(body: BodyModel, pose: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """The 24 posed joints (B, 24, 3) of axis-angle poses, without the mesh."""
    return body.joints(axis_angle_pose_to_rotmats(pose), betas)


def network_like_init(
    problem: FittingProblem, generator: torch.Generator, pose_noise: float = 0.2, depth_error: float = 0.1,
) -> SmplifyParams:
    """The truth with N(0, pose_noise) rad on every pose axis, betas 0 and the depth off by depth_error."""
    pose = problem.pose + pose_noise * torch.randn(problem.pose.shape, generator=generator)
    camera_t = problem.camera_t.clone()
    camera_t[:, 2] = camera_t[:, 2] * (1.0 + depth_error)
    return SmplifyParams.from_pose(pose, torch.zeros_like(problem.betas), camera_t)
