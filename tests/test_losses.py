"""SPIN's training losses: zero at the target, positive away from it, masks and the betas limit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from spin_ray.config import FittingConfig, LossConfig
from spin_ray.errors import InputError
from spin_ray.geometry import axis_angle_to_matrix
from spin_ray.train.losses import (
    LossInputs,
    LossTargets,
    camera_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    smpl_losses,
    spin_loss,
    supervision_betas,
    valid_fit_mask,
    vertex_loss,
)

torch.set_num_threads(1)
B = 4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _keypoints_2d(conf: float = 1.0) -> torch.Tensor:
    xy = torch.rand(B, 49, 2, generator=_gen(1)) * 2 - 1
    return torch.cat([xy, torch.full((B, 49, 1), conf)], dim=-1)


def _joints_3d() -> torch.Tensor:
    xyz = torch.randn(B, 24, 3, generator=_gen(2)) * 0.3
    return torch.cat([xyz, torch.ones(B, 24, 1)], dim=-1)


def _rotmats(seed: int = 3) -> torch.Tensor:
    return axis_angle_to_matrix(torch.randn(B, 24, 3, generator=_gen(seed)) * 0.5)


def test_keypoint_2d_loss_zero_at_target_and_weighted_by_group():
    target = _keypoints_2d()
    assert keypoint_2d_loss(target[..., :2], target, 1.0, 1.0) == 0
    shifted = target[..., :2] + 0.1
    # SPIN's squared error is averaged over B * 49 * 2 entries.
    assert keypoint_2d_loss(shifted, target, 1.0, 1.0).item() == pytest.approx(0.01, rel=1e-5)
    # Moving only the OpenPose keypoints is invisible with openpose_weight 0 (SPIN's default).
    openpose_only = target[..., :2].clone()
    openpose_only[:, :25] += 0.5
    assert keypoint_2d_loss(openpose_only, target, 0.0, 1.0) == 0
    assert keypoint_2d_loss(openpose_only, target, 1.0, 1.0) > 0
    dataset_only = target[..., :2].clone()
    dataset_only[:, 25:] += 0.5
    assert keypoint_2d_loss(dataset_only, target, 0.0, 1.0) > 0
    assert keypoint_2d_loss(dataset_only, target, 1.0, 0.0) == 0


def test_keypoint_2d_loss_ignores_unseen_nan_keypoints_in_value_and_gradient():
    target = _keypoints_2d()
    target[0, 30] = torch.tensor([float("nan"), float("nan"), 0.0])
    pred = (target[..., :2].nan_to_num() + 0.1).requires_grad_()
    loss = keypoint_2d_loss(pred, target, 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert pred.grad[0, 30].abs().sum() == 0 and pred.grad[0, 31].abs().sum() > 0


def test_keypoint_3d_loss_is_translation_invariant_and_masked():
    target = _joints_3d()
    has_3d = torch.tensor([True, True, False, True])
    assert keypoint_3d_loss(target[..., :3] + torch.tensor([0.5, -1.0, 3.0]), target, has_3d) < 1e-10
    pred = target[..., :3].clone()
    pred[:, 7] += 0.2
    assert keypoint_3d_loss(pred, target, has_3d) > 0
    # Errors on a sample without 3D do not count, whatever its target holds.
    wrong_only_where_missing = target[..., :3].clone()
    wrong_only_where_missing[2] += torch.randn(24, 3, generator=_gen(5))
    target[2, :, :3] = float("nan")
    pred_nan_safe = wrong_only_where_missing.requires_grad_()
    loss = keypoint_3d_loss(pred_nan_safe, target, has_3d)
    loss.backward()
    assert loss.abs() < 1e-10 and torch.isfinite(pred_nan_safe.grad).all()


def test_keypoint_3d_loss_is_zero_without_any_3d_but_keeps_the_graph():
    pred = torch.randn(B, 24, 3, requires_grad=True)
    loss = keypoint_3d_loss(pred, _joints_3d(), torch.zeros(B, dtype=torch.bool))
    assert loss == 0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_keypoint_3d_loss_averages_over_samples_with_3d_only():
    target = _joints_3d()
    pred = target[..., :3].clone()
    pred[0, 0] += torch.tensor([0.3, 0.0, 0.0])  # not a hip, so centring leaves it alone
    one = keypoint_3d_loss(pred, target, torch.tensor([True, False, False, False]))
    two = keypoint_3d_loss(pred, target, torch.tensor([True, True, False, False]))
    assert one.item() == pytest.approx(0.09 / (24 * 3), rel=1e-4)
    assert two.item() == pytest.approx(one.item() / 2, rel=1e-4)


def test_smpl_losses_zero_at_target_and_only_on_valid_fits():
    target_rot, target_betas = _rotmats(), torch.randn(B, 10, generator=_gen(4))
    valid = torch.tensor([True, False, True, False])
    pose, betas = smpl_losses(target_rot, target_betas, target_rot, target_betas, valid)
    assert pose == 0 and betas == 0
    pred_rot = target_rot.clone()
    pred_betas = target_betas.clone()
    pred_rot[1], pred_betas[1] = _rotmats(9)[1], pred_betas[1] + 1.0  # only the invalid sample is wrong
    target_rot_nan = target_rot.clone()
    target_rot_nan[3] = float("nan")  # a failed fit
    pred_rot.requires_grad_()
    pose, betas = smpl_losses(pred_rot, pred_betas, target_rot_nan, target_betas, valid)
    assert pose == 0 and betas == 0
    pose.backward()
    assert torch.isfinite(pred_rot.grad).all()
    pred_betas[0] += 1.0
    # One of the two valid samples is off by 1 in all 10 betas: MSE over the valid ones only is 0.5.
    assert smpl_losses(target_rot, pred_betas, target_rot, target_betas, valid)[1].item() == pytest.approx(0.5)


def test_vertex_and_camera_losses():
    verts = torch.randn(B, 50, 3, generator=_gen(6))
    valid = torch.tensor([True, True, False, False])
    assert vertex_loss(verts, verts, valid) == 0
    moved = verts.clone()
    moved[2:] += 1.0
    assert vertex_loss(moved, verts, valid) == 0
    moved[0] += 0.5
    assert vertex_loss(moved, verts, valid).item() == pytest.approx(0.25)
    cams = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.1, 0.1]])
    assert camera_loss(cams[:1]) < 1e-7
    assert camera_loss(cams[1:]).item() == pytest.approx(1.0)
    assert camera_loss(-cams[:1]) > 1e7


def test_valid_fit_rule():
    error = torch.tensor([50.0, 150.0, float("nan"), float("inf"), 100.0])
    has_smpl = torch.tensor([False, False, False, True, False])
    assert valid_fit_mask(error, has_smpl, 100.0).tolist() == [True, False, False, True, False]


def test_betas_beyond_the_limit_pull_only_to_the_mean():
    betas = torch.tensor([[0.5, -2.9], [3.5, 0.1], [-4.0, 0.0], [3.5, 0.0]])
    has_smpl = torch.tensor([False, False, False, True])
    targets = supervision_betas(betas, has_smpl, 3.0)
    assert torch.equal(targets[0], betas[0])
    assert torch.equal(targets[1:3], torch.zeros(2, 2))
    assert torch.equal(targets[3], betas[3])  # ground truth is never clipped


def _perfect_batch():
    rotmat, betas = _rotmats(), torch.randn(B, 10, generator=_gen(7)) * 0.5
    kp2d, joints = _keypoints_2d(), _joints_3d()
    kp3d = torch.cat([torch.randn(B, 25, 3), joints[..., :3]], dim=1)
    pred = LossInputs(rotmat=rotmat, betas=betas, camera=torch.tensor([[0.9, 0.0, 0.0]]).repeat(B, 1),
                      keypoints_2d=kp2d[..., :2], keypoints_3d=kp3d)
    target = LossTargets(keypoints_2d=kp2d, keypoints_3d=joints, has_3d=torch.ones(B, dtype=torch.bool),
                         fit_rotmat=rotmat.clone(), fit_betas=betas.clone(), fit_error=torch.full((B,), 10.0),
                         has_smpl=torch.zeros(B, dtype=torch.bool))
    return pred, target


def test_spin_loss_is_near_zero_at_the_target_and_combines_the_weights():
    pred, target = _perfect_batch()
    weights, fitting = LossConfig(), FittingConfig()
    terms = spin_loss(pred, target, weights, fitting)
    assert terms.total < 1e-4 and terms.valid_fits.all()
    wrong = replace(pred, betas=pred.betas + 1.0)
    terms = spin_loss(wrong, target, weights, fitting)
    assert terms.betas.item() == pytest.approx(1.0, rel=1e-5)
    expected = weights.loss_scale * (weights.beta_loss_weight * terms.betas + weights.cam_loss_weight * terms.camera)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_spin_loss_uses_only_valid_fits_and_2d_mode_has_no_fit_terms():
    pred, target = _perfect_batch()
    bad_fit = replace(target, fit_betas=target.fit_betas + 1.0, fit_error=torch.full((B,), 500.0))
    terms = spin_loss(pred, bad_fit, LossConfig(), FittingConfig())
    assert not terms.valid_fits.any() and terms.betas == 0 and terms.pose == 0
    no_fits = LossTargets(keypoints_2d=target.keypoints_2d, keypoints_3d=target.keypoints_3d, has_3d=target.has_3d)
    terms = spin_loss(replace(pred, betas=pred.betas + 1.0), no_fits, LossConfig(), FittingConfig())
    assert terms.betas == 0 and not terms.valid_fits.any()
    with pytest.raises(InputError, match="all of fit_rotmat"):
        spin_loss(pred, replace(target, has_smpl=None), LossConfig(), FittingConfig())


def test_spin_loss_vertex_term_needs_vertices():
    pred, target = _perfect_batch()
    with pytest.raises(InputError, match="shape_loss_weight"):
        spin_loss(pred, target, LossConfig(shape_loss_weight=1.0), FittingConfig())
    verts = torch.randn(B, 30, 3)
    pred = replace(pred, vertices=verts + 0.1)
    target = replace(target, fit_vertices=verts)
    terms = spin_loss(pred, target, LossConfig(shape_loss_weight=1.0), FittingConfig())
    assert terms.vertices.item() == pytest.approx(0.1, rel=1e-4)


def test_spin_loss_backpropagates_to_every_prediction():
    pred, target = _perfect_batch()
    leaves = {k: v.clone().add(0.05).requires_grad_() for k, v in pred.__dict__.items() if v is not None}
    terms = spin_loss(LossInputs(**leaves), target, LossConfig(), FittingConfig())
    terms.total.backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name


def test_shape_errors_name_the_argument():
    with pytest.raises(InputError, match=r"target_keypoints has shape \(4, 24, 3\)"):
        keypoint_2d_loss(torch.zeros(B, 49, 2), torch.zeros(B, 24, 3), 0.0, 1.0)


def test_default_weights_are_spins():
    w = LossConfig()
    assert (w.keypoint_loss_weight, w.keypoint_3d_loss_weight) == (5, 5)
    assert (w.pose_loss_weight, w.beta_loss_weight) == (1, 0.001)
    assert (w.shape_loss_weight, w.cam_loss_weight, w.loss_scale) == (0, 1, 60)
    assert (w.openpose_train_weight, w.gt_train_weight) == (0, 1)
