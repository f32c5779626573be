"""A person cut off at the waist (legs outside the crop): the staged and multistart recipes keep the height and fits what is seen."""

import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import SPIN49_NAMES
from spin_ray.config import RunConfig
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.recipes import fit
from spin_ray.fitting.starts import mean_body_pose, mean_pose_init
from spin_ray_sim.fitting_problems import synthetic_problems

torch.set_num_threads(1)
CFG = RunConfig()


def rest_height(body: BodyModel, betas: torch.Tensor) -> torch.Tensor:
    """Standing height (B,) in metres: the vertical extent of the zero-pose mesh."""
    rest = body(axis_angle_pose_to_rotmats(torch.zeros(betas.shape[0], 72)), betas).vertices
    return rest[..., 1].amax(dim=1) - rest[..., 1].amin(dim=1)


@pytest.mark.parametrize("recipe", ["staged", "multistart"])
def test_waist_truncated_person_keeps_height_and_fits_the_visible_joints(recipe):
    body = BodyModel.embedded()
    problem = synthetic_problems(body, 16, torch.Generator().manual_seed(11), CFG.camera)
    keypoints = problem.keypoints_2d.clone()
    waist = keypoints[:, SPIN49_NAMES.index("OP MidHip"), 1:2]
    keypoints[..., 2] = torch.where(keypoints[..., 1] >= waist, 0.0, keypoints[..., 2])  # image y grows downwards
    assert (keypoints[:, SPIN49_NAMES.index("OP RAnkle"), 2] == 0).all()
    init = mean_pose_init(body, mean_body_pose(torch.Generator().manual_seed(1)), keypoints,
                          CFG.camera, CFG.fitting)
    result = fit(body, load_pose_prior(CFG.fitting), keypoints, init,
                 CFG.fitting.model_copy(update={"recipe": recipe}), CFG.camera)
    truth = rest_height(body, problem.betas)
    height_error = (rest_height(body, result.params.betas) - truth).abs() / truth
    assert not result.failed.any()
    assert (height_error < 0.10).all(), f"height errors {height_error.tolist()}"
    assert result.pixel_error.median() < 2.0 and result.pixel_error.max() < 4.0  # visible keypoints only
