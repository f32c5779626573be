"""Where SMPLify starts from: the typical camera depth and the mean-pose start of the paper's static fits."""

from __future__ import annotations

import math

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.pose_sampler import sample_body_poses
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.fitting.smplify import SmplifyParams, camera_from_keypoints, ignored_joints

# Typical SPIN weak-perspective scale: the person's box spans ~0.9 of the crop.
TYPICAL_CAMERA_SCALE = 0.9


def typical_depth(camera: CameraConfig, scale: float = TYPICAL_CAMERA_SCALE) -> float:
    """Depth of a person whose weak-perspective scale is `scale` (2f / (crop * s))."""
    return 2.0 * camera.focal_length / (camera.crop_size * scale)


def mean_body_pose(generator: torch.Generator, samples: int = 20000) -> torch.Tensor:
    """Mean 72-d pose of the open pose sampler, upright and facing the camera."""
    pose = sample_body_poses(samples, generator).mean(dim=0)
    pose[:3] = torch.tensor([math.pi, 0.0, 0.0])
    return pose


def mean_pose_init(
    body: BodyModel, mean_pose: torch.Tensor, keypoints_2d: torch.Tensor, camera: CameraConfig,
    fitting: FittingConfig,
) -> SmplifyParams:
    """The paper's static-fit start: mean pose, mean shape, camera from the closed-form translation."""
    n = keypoints_2d.shape[0]
    pose = mean_pose.to(keypoints_2d.dtype).expand(n, -1).clone()
    betas = torch.zeros(n, body.num_betas, dtype=keypoints_2d.dtype)
    camera_t = camera_from_keypoints(body, pose, betas, keypoints_2d, camera, typical_depth(camera),
                                     ignored_joints(fitting))
    return SmplifyParams.from_pose(pose, betas, camera_t)
