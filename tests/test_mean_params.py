"""Mean regressor parameters: SPIN's file in both pose layouts, and the open model's computed mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spin_ray.errors import ModelError
from spin_ray.geometry import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from spin_ray.model.mean_params import load_mean_params, open_mean_params, project_to_rotation

torch.set_num_threads(1)


def _random_axis_angle(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 3)) * 0.5).astype(np.float32)


def test_loads_spin_6d_layout(tmp_path):
    aa = torch.from_numpy(_random_axis_angle(24))
    pose_6d = matrix_to_rot6d(axis_angle_to_matrix(aa)).reshape(-1).numpy()
    path = tmp_path / "smpl_mean_params.npz"
    np.savez(path, pose=pose_6d, shape=np.arange(10, dtype=np.float64), cam=np.array([0.9, 0.0, 0.0]))
    params = load_mean_params(path)
    assert params.pose_6d.shape == (144,) and params.pose_6d.dtype == torch.float32
    assert torch.allclose(params.pose_6d, torch.from_numpy(pose_6d))
    assert torch.equal(params.betas, torch.arange(10, dtype=torch.float32))
    assert params.vector().shape == (157,)


def test_axis_angle_layout_gives_the_same_rotations(tmp_path):
    aa = _random_axis_angle(24, seed=1)
    path = tmp_path / "mean_aa.npz"
    np.savez(path, pose=aa.reshape(-1), shape=np.zeros(10), cam=np.array([0.9, 0.0, 0.0]))
    params = load_mean_params(path)
    rotations = rot6d_to_matrix(params.pose_6d.view(24, 6))
    assert torch.allclose(rotations, axis_angle_to_matrix(torch.from_numpy(aa)), atol=1e-6)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pose": np.zeros(100), "shape": np.zeros(10), "cam": np.zeros(3)}, r"'pose' has 100 values, expected 144"),
        ({"pose": np.zeros(144), "cam": np.zeros(3)}, r"missing keys \['shape'\]"),
        ({"pose": np.zeros(144), "shape": np.zeros(5), "cam": np.zeros(3)}, r"'shape' has 5 betas, the model needs 10"),
        ({"pose": np.zeros(144), "shape": np.zeros(10), "cam": np.zeros(2)}, r"'cam' has 2 values"),
        ({"pose": np.full(144, np.nan), "shape": np.zeros(10), "cam": np.zeros(3)}, "NaN"),
    ],
)
def test_malformed_files_are_refused(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match=message):
        load_mean_params(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_mean_params(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    with pytest.raises(ModelError, match="not a readable .npz"):
        load_mean_params(junk)


def test_project_to_rotation_recovers_a_rotation_and_fixes_reflections():
    rotation = axis_angle_to_matrix(torch.tensor([[0.3, -1.0, 0.4]], dtype=torch.float64))
    noisy = rotation + 0.01 * torch.randn(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    projected = project_to_rotation(noisy)
    assert torch.allclose(projected, rotation, atol=0.03)
    assert torch.allclose(torch.linalg.det(projected), torch.ones(1, dtype=torch.float64))
    reflected = project_to_rotation(-torch.eye(3, dtype=torch.float64))
    assert torch.allclose(torch.linalg.det(reflected), torch.tensor(1.0, dtype=torch.float64))


def test_open_mean_is_upright_facing_the_camera_and_deterministic():
    params = open_mean_params()
    rotations = rot6d_to_matrix(params.pose_6d.view(24, 6))
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), torch.eye(3).expand(24, 3, 3), atol=1e-5)
    flip = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0]))
    assert torch.allclose(rotations[0], flip, atol=1e-6)
    assert torch.equal(params.betas, torch.zeros(10))
    assert torch.equal(params.camera, torch.tensor([0.9, 0.0, 0.0]))
    # The sampler's people mostly stand with arms down: shoulders are strongly rotated, knees bent a
    # little forward, and the mean is not the T-pose.
    angles = torch.linalg.matrix_norm(rotations[1:] - torch.eye(3), dim=(-2, -1))
    assert angles[15] > 0.5 and angles[16] > 0.5  # left/right shoulder (joints 16, 17)
    assert torch.equal(open_mean_params().pose_6d, params.pose_6d)
    assert open_mean_params(num_betas=16).betas.shape == (16,)


def test_mean_pose_axis_angle_reads_the_configured_file(tmp_path):
    from spin_ray.config import RunConfig
    from spin_ray.model.mean_params import mean_pose_axis_angle

    aa = _random_axis_angle(24, seed=2)
    path = tmp_path / "smpl_mean_params.npz"
    np.savez(path, pose=aa.reshape(-1), shape=np.arange(10, dtype=np.float64), cam=np.array([0.9, 0.0, 0.0]))
    cfg = RunConfig().model_copy(update={"network": RunConfig().network.model_copy(update={"mean_params_path": path})})
    pose, betas = mean_pose_axis_angle(cfg)
    assert pose.shape == (1, 72) and pose.dtype == torch.float32 and betas.shape == (1, 10)
    same = axis_angle_to_matrix(pose.reshape(24, 3))
    assert torch.allclose(same, axis_angle_to_matrix(torch.from_numpy(aa)), atol=1e-5)
    assert torch.equal(betas[0], torch.arange(10, dtype=torch.float32))
