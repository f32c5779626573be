"""The level-wise forward kinematics and the one-matmul extra keypoints equal the earlier joints-only forward."""

import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import SMPL_PARENTS
from spin_ray.body.kinematics import (
    KinematicPlan,
    forward_kinematics,
    keypoint_joint_basis,
    kinematic_levels,
    pair_matrix,
    regressed_skinned_points,
    shaped_rest_joints,
)
from spin_ray.body.model_file import load_body_model_arrays, embedded_model_path


def _homogeneous(rotmats, translations):
    top = torch.cat([rotmats, translations.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def reference_forward_kinematics(rotmats, rest_joints, parents):
    """The forward kinematics before the level-ordered rewrite (commit 50e6394), kept as the reference."""
    levels = kinematic_levels(parents)
    offsets = torch.cat([rest_joints[:, :1], rest_joints[:, 1:] - rest_joints[:, list(parents[1:])]], dim=1)
    local = _homogeneous(rotmats, offsets)
    world = [None] * len(parents)
    for j, joint in enumerate(levels[0]):
        world[joint] = local[:, levels[0]][:, j]
    for level in levels[1:]:
        level_world = torch.stack([world[parents[j]] for j in level], dim=1) @ local[:, level]
        for j, joint in enumerate(level):
            world[joint] = level_world[:, j]
    transforms = torch.stack(world, dim=1)
    posed = transforms[..., :3, 3]
    translation = posed - (transforms[..., :3, :3] @ rest_joints.unsqueeze(-1)).squeeze(-1)
    return posed, _homogeneous(transforms[..., :3, :3], translation)


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


def _random_params(n, num_betas, seed, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(n, 72, generator=g, dtype=torch.float64) * scale
    return axis_angle_pose_to_rotmats(pose), torch.randn(n, num_betas, generator=g, dtype=torch.float64) * 1.5


def test_forward_kinematics_equals_the_reference():
    rotmats, _ = _random_params(16, 10, seed=1, scale=1.0)
    rest = torch.randn(16, 24, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    parents = list(SMPL_PARENTS)
    for levels in (None, KinematicPlan(parents), kinematic_levels(parents)):
        joints, skinning = forward_kinematics(rotmats, rest, parents, levels)
        ref_joints, ref_skinning = reference_forward_kinematics(rotmats, rest, parents)
        torch.testing.assert_close(joints, ref_joints, rtol=0, atol=1e-12)
        torch.testing.assert_close(skinning, ref_skinning, rtol=0, atol=1e-12)


def test_pair_matrix_equals_the_pair_sums():
    g = torch.Generator().manual_seed(3)
    s, k, bt = 40, 6, 5
    regressor = torch.rand(k, s, generator=g, dtype=torch.float64) * (torch.rand(k, s, generator=g) < 0.3)
    weights = torch.rand(s, 24, generator=g, dtype=torch.float64) * (torch.rand(s, 24, generator=g) < 0.2)
    basis = keypoint_joint_basis(regressor, weights, torch.randn(s, 3, generator=g, dtype=torch.float64),
                                 torch.randn(s, 3, bt, generator=g, dtype=torch.float64), None)
    rotmats, betas = _random_params(3, bt, seed=4)
    _, skinning = forward_kinematics(rotmats, torch.randn(3, 24, 3, generator=g, dtype=torch.float64),
                                     list(SMPL_PARENTS))
    dense = regressed_skinned_points(rotmats, skinning, betas, basis)
    fast = regressed_skinned_points(rotmats, skinning, betas, {"pair_matrix": pair_matrix(basis)})
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)


def test_open_model_keypoints_equal_the_reference_forward_to_1e_5_m(body):
    """Today's embedded model: the new joints-only forward vs the earlier one (dense pairs, old FK), float32."""
    arrays = load_body_model_arrays(embedded_model_path(), num_betas=body.num_betas)
    support = np.flatnonzero(np.any(arrays.keypoint_regressor != 0, axis=0))
    f64 = torch.float64
    dense = keypoint_joint_basis(*(torch.tensor(np.array(a), dtype=f64) for a in (
        arrays.keypoint_regressor[:, support], arrays.weights[support], arrays.v_template[support],
        arrays.shapedirs[support])), None)
    dense = {name: value.float() for name, value in dense.items()}
    rotmats, betas = _random_params(32, body.num_betas, seed=5, scale=0.8)
    rotmats, betas = rotmats.float(), betas.float()
    with torch.no_grad():
        rest = shaped_rest_joints(betas, body.j_template, body.j_shapedirs)
        joints, skinning = reference_forward_kinematics(rotmats, rest, list(SMPL_PARENTS))
        extras = regressed_skinned_points(rotmats, skinning, betas, dense)
        reference = torch.cat([joints, extras], dim=1)[:, body.spin49_index]
        assert (body.keypoints(rotmats, betas) - reference).abs().max() < 1e-5
        assert (body.joints(rotmats, betas) - joints).abs().max() < 1e-5


def test_gradients_equal_the_reference(body):
    """What SMPLify's Adam sees: d(loss)/d(rotations, betas) of the joints-only and full-mesh forwards agree."""
    rotmats, betas = _random_params(8, body.num_betas, seed=6)
    rotmats, betas = rotmats.float().requires_grad_(), betas.float().requires_grad_()
    weights = torch.randn(8, 49, 3, generator=torch.Generator().manual_seed(7))
    (body.keypoints(rotmats, betas) * weights).sum().backward()
    new = (rotmats.grad.clone(), betas.grad.clone())
    rotmats.grad, betas.grad = None, None
    (body(rotmats, betas).keypoints * weights).sum().backward()  # the mesh path, independent of both forms
    torch.testing.assert_close(rotmats.grad, new[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(betas.grad, new[1], rtol=1e-3, atol=1e-3)
