"""Realistic fit requests for pipeline tests: synthetic people, network-like predictions, optional augmentation."""

from __future__ import annotations

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, RunConfig
from spin_ray.data.augment import AugParams, augment_keypoints
from spin_ray.fitting.problems import network_like_init, synthetic_problems, typical_depth
from spin_ray.fitting.smplify import camera_from_keypoints
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.fit_store import FitStore
from spin_ray.train.fit_frames import augmented_pose, crop_pixels, score_fits


def fast_config(**pipeline) -> RunConfig:
    """The default run config with short SMPLify stages and half-CPU fitters (tests on 2 cores)."""
    cfg = RunConfig()
    cfg.fitting.iterations_camera = 10
    cfg.fitting.iterations_body = 10
    cfg.pipeline.fitter_num_cpus = 0.5
    for key, value in pipeline.items():
        setattr(cfg.pipeline, key, value)
    return cfg


def normalise(keypoints_px: torch.Tensor, camera: CameraConfig) -> torch.Tensor:
    """Crop-pixel keypoints to the normalised [-1, 1] crop coordinates a batch carries."""
    xy = 2.0 * keypoints_px[..., :2] / camera.crop_size - 1.0
    return torch.cat([xy, keypoints_px[..., 2:]], dim=-1)


def make_request(
    body: BodyModel, camera: CameraConfig, batch: int, seed: int, step: int = 0, dataset: str | list[str] = "synth",
    first_index: int = 0, augment: bool = False,
) -> FitRequest:
    """One request as a trainer would send it: network-like predictions of synthetic people, seen augmented."""
    g = torch.Generator().manual_seed(seed)
    problem = synthetic_problems(body, batch, g, camera)
    init = network_like_init(problem, g)
    keypoints = normalise(problem.keypoints_2d, camera)
    if augment:
        aug = torch.stack([
            torch.from_numpy(AugParams(flip=bool(i % 2), rot=20.0 * ((i % 3) - 1), scale=1.1).as_array())
            for i in range(batch)
        ])
        keypoints = augment_keypoints(keypoints, aug)
        pose = augmented_pose(init.pose, aug)
        # A network predicts its camera in the augmented crop: place the prediction there in closed form.
        camera_t = camera_from_keypoints(body, pose, init.betas, crop_pixels(keypoints, camera), camera,
                                         typical_depth(camera))
    else:
        aug = torch.from_numpy(np.tile(AugParams().as_array(), (batch, 1)))
        pose, camera_t = init.pose, init.camera_t
    return FitRequest.build(step, dataset, np.arange(first_index, first_index + batch), pose, init.betas, camera_t,
                            keypoints, aug)


def seed_store(store: FitStore, body: BodyModel, camera: CameraConfig, batch: int, seed: int, dataset: str = "synth",
               first_index: int = 0, noise: float = 0.6) -> np.ndarray:
    """Write poor 'static' fits (truth + noise, canonical) for the samples make_request(seed) names; their errors."""
    g = torch.Generator().manual_seed(seed)
    problem = synthetic_problems(body, batch, g, camera)
    pose = problem.pose + noise * torch.randn(problem.pose.shape, generator=torch.Generator().manual_seed(seed + 999))
    betas = torch.zeros_like(problem.betas)
    error = score_fits(body, pose, betas, problem.keypoints_2d, camera, 100.0)
    indices = np.arange(first_index, first_index + batch)
    assert store.keep_best(dataset, indices, pose, betas, error, step=0, source="static").all()
    return error.numpy()
