"""Evaluation metrics on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from spin_ray.errors import InputError
from spin_ray.eval.metrics import H36M17_PELVIS, LSP14_PELVIS, mpjpe, pa_mpjpe, pelvis_centred, pve
from spin_ray.geometry import axis_angle_to_matrix

torch.set_num_threads(1)


def _joints(batch: int = 3, count: int = 14, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, count, 3, generator=torch.Generator().manual_seed(seed)) * 0.3


def test_identical_sets_score_zero():
    joints = _joints()
    assert torch.allclose(mpjpe(joints, joints), torch.zeros(3))
    assert torch.allclose(pa_mpjpe(joints, joints), torch.zeros(3), atol=1e-3)
    assert torch.allclose(pve(joints, joints), torch.zeros(3))


def test_known_offset_is_reported_in_millimetres():
    target = _joints()
    pred = target + torch.tensor([0.03, 0.0, 0.04])  # 5 cm from every joint
    assert torch.allclose(mpjpe(pred, target), torch.full((3,), 50.0), atol=1e-3)
    assert torch.allclose(pve(pred, target), torch.full((3,), 50.0), atol=1e-3)


def test_rotation_and_scale_vanish_under_procrustes_only():
    target = _joints()
    rotation = axis_angle_to_matrix(torch.tensor([0.2, -0.9, 0.4]))
    pred = 1.3 * target @ rotation.T + torch.tensor([0.1, -0.2, 0.05])
    assert (mpjpe(pred, target) > 50).all()
    assert torch.allclose(pa_mpjpe(pred, target), torch.zeros(3), atol=1e-3)


def test_per_sample_values_are_independent():
    target = _joints(batch=2)
    pred = target.clone()
    pred[1, 0] += torch.tensor([0.014, 0.0, 0.0])  # one joint of sample 1 moved by 14 mm
    err = mpjpe(pred, target)
    assert err[0] == 0 and err[1] == pytest.approx(1.0, abs=1e-3)  # 14 mm / 14 joints


def test_translation_only_is_zero_after_pelvis_centring():
    target = _joints()
    pred = target + torch.tensor([1.0, 2.0, -3.0])
    assert (mpjpe(pred, target) > 1000).all()
    for pelvis in (H36M17_PELVIS, LSP14_PELVIS):
        centred = mpjpe(pelvis_centred(pred, pelvis), pelvis_centred(target, pelvis))
        assert torch.allclose(centred, torch.zeros(3), atol=1e-3)


def test_pelvis_centring_puts_the_hip_midpoint_at_the_origin():
    joints = _joints()
    centred = pelvis_centred(joints, LSP14_PELVIS)
    assert torch.allclose(0.5 * (centred[:, 2] + centred[:, 3]), torch.zeros(3, 3), atol=1e-6)
    with pytest.raises(InputError, match="do not index 14 joints"):
        pelvis_centred(joints, (20,))


def test_reflection_is_not_removed_by_procrustes():
    target = _joints()
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0])
    assert (pa_mpjpe(mirrored, target) > 1.0).all()


def test_a_rotation_about_the_pelvis_gives_the_expected_mpjpe():
    # Two joints 1 m from the origin, rotated by 60 degrees: each moves by a 1 m chord.
    target = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]])
    rotation = axis_angle_to_matrix(torch.tensor([0.0, math.pi / 3, 0.0]))
    pred = target @ rotation.T
    assert mpjpe(pred, target).item() == pytest.approx(1000.0, rel=1e-5)


def test_shape_mismatch_is_refused():
    with pytest.raises(InputError, match=r"\(B, N, 3\)"):
        mpjpe(torch.zeros(2, 14, 3), torch.zeros(2, 17, 3))
