"""Fit requests as a trainer would send them, made from synthetic people: for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.frames import augment_keypoints, augment_pose
from spin_ray.config import CameraConfig
from spin_ray.data.augment import AugParams
from spin_ray.fitting.smplify import SPIN49_IGNORED_IN_FIT, camera_from_keypoints
from spin_ray.fitting.starts import typical_depth
from spin_ray.pipeline.requests import FitRequest
from spin_ray.geometry import keypoints_to_pixels, pixels_to_normalised
from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems


def normalise_keypoints(keypoints_px: torch.Tensor, camera: CameraConfig) -> torch.Tensor:
    """Crop-pixel keypoints (B, J, 3) to the normalised [-1, 1] crop coordinates a batch carries."""
    return torch.cat([pixels_to_normalised(keypoints_px[..., :2], camera.crop_size), keypoints_px[..., 2:]], dim=-1)


def synthetic_request(
    body: BodyModel, camera: CameraConfig, batch: int, seed: int, step: int = 0,
    dataset: str | list[str] = "synth", first_index: int = 0, augment: bool = False,
) -> FitRequest:
    """Network-like predictions (truth + noise) of `batch` synthetic people, optionally seen through augmentation.

    The people are `synthetic_problems(body, batch, Generator(seed), camera)`; sample i is
    (dataset, first_index + i). With `augment`, samples alternate flips and rotate by -20/0/+20
    degrees at scale 1.1, and the predicted camera is placed in the augmented crop in closed form,
    as a network trained on augmented crops would predict it.
    """
    g = torch.Generator().manual_seed(seed)
    problem = synthetic_problems(body, batch, g, camera)
    init = network_like_init(problem, g)
    keypoints = normalise_keypoints(problem.keypoints_2d, camera)
    if augment:
        aug = torch.stack([
            torch.from_numpy(AugParams(flip=bool(i % 2), rot=20.0 * ((i % 3) - 1), scale=1.1).as_array())
            for i in range(batch)
        ])
        keypoints = augment_keypoints(keypoints, aug)
        pose = augment_pose(init.pose, aug)
        camera_t = camera_from_keypoints(body, pose, init.betas, keypoints_to_pixels(keypoints, camera.crop_size), camera,
                                         typical_depth(camera), SPIN49_IGNORED_IN_FIT)  # the default config's
    else:
        aug = torch.from_numpy(np.tile(AugParams().as_array(), (batch, 1)))
        pose, camera_t = init.pose, init.camera_t
    return FitRequest.build(step, dataset, np.arange(first_index, first_index + batch), pose, init.betas, camera_t,
                            keypoints, aug)
