"""Fits move between the augmented crop and the canonical frame without changing their rank."""

import math

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.frames import augment_keypoints, augment_pose
from spin_ray.config import RunConfig
from spin_ray.data.augment import AugParams
from spin_ray.fitting.canonical_fits import to_canonical
from spin_ray.fitting.scoring import score_fits
from spin_ray.geometry import axis_angle_to_matrix, pixels_to_normalised
from spin_ray_sim.fitting_problems import synthetic_problems

torch.set_num_threads(1)
CFG = RunConfig()


def _normalised(keypoints_px, crop):
    return torch.cat([pixels_to_normalised(keypoints_px[..., :2], crop), keypoints_px[..., 2:]], dim=-1)


def test_fit_from_augmented_view_reads_back_identical_and_scores_like_canonical():
    body = BodyModel.embedded()
    problem = synthetic_problems(body, 8, torch.Generator().manual_seed(2), CFG.camera, max_yaw=math.radians(20))
    canonical_kp = _normalised(problem.keypoints_2d, CFG.camera.crop_size)
    aug = torch.stack([torch.from_numpy(AugParams(flip=bool(i % 2), rot=15.0 * (i - 4), scale=1.1).as_array())
                       for i in range(8)])
    # What a fitter sees: the batch's augmented keypoints and a fit of the augmented view.
    seen_kp = augment_keypoints(canonical_kp, aug)
    seen_pose = augment_pose(problem.pose, aug)
    fits = to_canonical(body, seen_pose, problem.betas, seen_kp, aug, CFG.camera, CFG.fitting)
    # Compare rotations, not axis-angle vectors: near pi, (axis, angle) and (-axis, 2 pi - angle) agree.
    as_matrices = lambda pose: axis_angle_to_matrix(pose.view(-1, 24, 3))  # noqa: E731
    assert torch.allclose(as_matrices(fits.pose), as_matrices(problem.pose), atol=1e-4)
    direct = score_fits(body, problem.pose, problem.betas, problem.keypoints_2d, CFG.camera, CFG.fitting)
    assert torch.allclose(fits.error, direct, atol=1e-2)
    assert (fits.error < 1.0).all()  # the truth reprojects onto its own keypoints


def test_a_worse_fit_scores_higher():
    body = BodyModel.embedded()
    problem = synthetic_problems(body, 8, torch.Generator().manual_seed(3), CFG.camera)
    good = score_fits(body, problem.pose, problem.betas, problem.keypoints_2d, CFG.camera, CFG.fitting)
    noisy_pose = problem.pose + 0.3 * torch.randn(problem.pose.shape, generator=torch.Generator().manual_seed(0))
    bad = score_fits(body, noisy_pose, problem.betas, problem.keypoints_2d, CFG.camera, CFG.fitting)
    assert (bad > good).all()
