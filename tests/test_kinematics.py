"""Pure kinematics functions: FK against smplx, both forms of regressed skinning against each other."""

from __future__ import annotations

import pytest
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from spin_ray.body.joints import SMPL_PARENTS
from spin_ray.body.kinematics import (
    forward_kinematics,
    joint_shape_basis,
    keypoint_joint_basis,
    kinematic_levels,
    regressed_skinned_points,
    shaped_rest_joints,
    skin_vertices,
)

torch.set_num_threads(1)


def _rotmats(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return batch_rodrigues(torch.randn(batch * 24, 3, generator=g, dtype=torch.float64) * 0.5).view(batch, 24, 3, 3)


def test_kinematic_levels_cover_every_joint_once_after_its_parent():
    levels = kinematic_levels(list(SMPL_PARENTS))
    order = [j for level in levels for j in level]
    assert sorted(order) == list(range(24)) and levels[0] == [0]
    depth = {j: d for d, level in enumerate(levels) for j in level}
    assert all(depth[j] == depth[SMPL_PARENTS[j]] + 1 for j in range(1, 24))
    assert len(levels) == 9  # pelvis ... spine3, collar, shoulder, elbow, wrist, hand


def test_forward_kinematics_matches_smplx():
    g = torch.Generator().manual_seed(0)
    rest = torch.randn(5, 24, 3, generator=g, dtype=torch.float64) * 0.3
    rotmats = _rotmats(5, 1)
    joints, transforms = forward_kinematics(rotmats, rest, list(SMPL_PARENTS))
    ref_joints, ref_transforms = batch_rigid_transform(rotmats, rest, torch.tensor(SMPL_PARENTS))
    torch.testing.assert_close(joints, ref_joints, atol=1e-12, rtol=0)
    torch.testing.assert_close(transforms, ref_transforms, atol=1e-12, rtol=0)
    # Identity rotations leave the rest joints where they are.
    joints, _ = forward_kinematics(torch.eye(3, dtype=torch.float64).expand(5, 24, 3, 3), rest, list(SMPL_PARENTS))
    torch.testing.assert_close(joints, rest)


def test_shaped_rest_joints_equal_regressing_the_shaped_mesh():
    g = torch.Generator().manual_seed(2)
    v_template = torch.randn(50, 3, generator=g, dtype=torch.float64)
    shapedirs = torch.randn(50, 3, 7, generator=g, dtype=torch.float64)
    regressor = torch.rand(24, 50, generator=g, dtype=torch.float64)
    betas = torch.randn(4, 7, generator=g, dtype=torch.float64)
    j_template, j_shapedirs = joint_shape_basis(regressor, v_template, shapedirs)
    mesh = v_template + torch.einsum("bk,vck->bvc", betas, shapedirs)
    torch.testing.assert_close(shaped_rest_joints(betas, j_template, j_shapedirs), regressor @ mesh)


@pytest.mark.parametrize("with_posedirs", [True, False])
def test_pair_form_equals_skinning_then_regressing(with_posedirs):
    g = torch.Generator().manual_seed(3)
    s, k, bt = 40, 6, 5
    regressor = torch.rand(k, s, generator=g, dtype=torch.float64) * (torch.rand(k, s, generator=g) < 0.3)
    weights = torch.rand(s, 24, generator=g, dtype=torch.float64) * (torch.rand(s, 24, generator=g) < 0.2)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-9)
    v_template = torch.randn(s, 3, generator=g, dtype=torch.float64)
    shapedirs = torch.randn(s, 3, bt, generator=g, dtype=torch.float64) * 0.1
    posedirs = torch.randn(s, 3, 207, generator=g, dtype=torch.float64) * 0.1 if with_posedirs else None
    rotmats = _rotmats(3, 4)
    betas = torch.randn(3, bt, generator=g, dtype=torch.float64)
    _, skinning = forward_kinematics(rotmats, torch.randn(3, 24, 3, generator=g, dtype=torch.float64),
                                     list(SMPL_PARENTS))
    flat_posedirs = None if posedirs is None else posedirs.reshape(s * 3, 207).T
    skinned = skin_vertices(rotmats, skinning, betas, v_template, shapedirs, flat_posedirs, weights)
    expected = torch.einsum("ks,bsc->bkc", regressor, skinned)
    basis = keypoint_joint_basis(regressor, weights, v_template, shapedirs, posedirs)
    assert basis["pair_weight"].shape == (k, 24)
    torch.testing.assert_close(regressed_skinned_points(rotmats, skinning, betas, basis), expected)
