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


def test_a_step_and_the_request_made_of_it_fit_the_same():
    """The trainer's tensors (sync mode) and the pool's read-only numpy request go through one fit, equally."""
    from spin_ray.fitting.canonical_fits import fit_predictions
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.starts import typical_depth
    from spin_ray.pipeline.requests import FitRequest
    from spin_ray.train.supervision import StepPredictions

    body = BodyModel.embedded()
    problem = synthetic_problems(body, 4, torch.Generator().manual_seed(5), CFG.camera)
    aug = torch.stack([torch.from_numpy(AugParams(flip=bool(i % 2), rot=10.0 * i, scale=1.0).as_array())
                       for i in range(4)])
    camera_t = torch.tensor([[0.0, 0.0, typical_depth(CFG.camera)]]).expand(4, -1)
    step = StepPredictions(3, ["d"] * 4, torch.arange(4).numpy(), pose=torch.zeros(4, 72),
                           betas=torch.zeros(4, body.num_betas), camera_t=camera_t,
                           keypoints=augment_keypoints(_normalised(problem.keypoints_2d, CFG.camera.crop_size), aug),
                           aug=aug)
    request = FitRequest.from_predictions(step)
    for array in (request.pose, request.keypoints):
        array.flags.writeable = False  # what Ray's object store hands a fitter
    fitting = CFG.fitting.model_copy(update={"iterations_camera": 5, "iterations_body": 5})
    prior = load_pose_prior(fitting)
    from_step = fit_predictions(body, prior, step, fitting, CFG.camera)
    from_request = fit_predictions(body, prior, request, fitting, CFG.camera)
    torch.testing.assert_close(from_step.pose, from_request.pose)
    torch.testing.assert_close(from_step.error, from_request.error)
    assert torch.isfinite(from_step.error).all() and (from_step.pose.abs().sum(dim=1) > 0).all()
