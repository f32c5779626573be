"""Pipeline test helpers: a fast config, requests from synthetic people, poor stored fits to improve on."""

from __future__ import annotations

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, FittingConfig, RunConfig
from spin_ray_sim.fitting_problems import synthetic_problems
from spin_ray.pipeline.requests import FitRequest
from spin_ray_sim.synthetic import synthetic_request
from spin_ray.store.fit_store import FitStore
from spin_ray.fitting.scoring import score_fits


def fast_config(**pipeline) -> RunConfig:
    """The default run config with short SMPLify stages and half-CPU fitters (tests on 2 cores)."""
    cfg = RunConfig()
    cfg.fitting.iterations_camera = 10
    cfg.fitting.iterations_body = 10
    cfg.pipeline.fitter_num_cpus = 0.5
    for key, value in pipeline.items():
        setattr(cfg.pipeline, key, value)
    return cfg


def make_request(
    body: BodyModel, camera: CameraConfig, batch: int, seed: int, step: int = 0, dataset: str | list[str] = "synth",
    first_index: int = 0, augment: bool = False,
) -> FitRequest:
    """One request as a trainer would send it (see synthetic_request); seed_store(seed) names the same samples."""
    return synthetic_request(body, camera, batch, seed, step, dataset, first_index, augment)


def seed_store(store: FitStore, body: BodyModel, camera: CameraConfig, batch: int, seed: int, dataset: str = "synth",
               first_index: int = 0, noise: float = 0.6) -> np.ndarray:
    """Write poor 'static' fits (truth + noise, canonical) for the samples make_request(seed) names; their errors."""
    g = torch.Generator().manual_seed(seed)
    problem = synthetic_problems(body, batch, g, camera)
    pose = problem.pose + noise * torch.randn(problem.pose.shape, generator=torch.Generator().manual_seed(seed + 999))
    betas = torch.zeros_like(problem.betas)
    error = score_fits(body, pose, betas, problem.keypoints_2d, camera, FittingConfig())
    indices = np.arange(first_index, first_index + batch)
    assert store.keep_best(dataset, indices, pose, betas, error, step=0, source="static").all()
    return error.numpy()
