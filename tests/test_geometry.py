import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from spin_ray.errors import InputError
from spin_ray.geometry import (
    axis_angle_to_matrix,
    camera_translation_from_keypoints,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    perspective_projection,
    rot6d_to_matrix,
    similarity_procrustes,
    weak_perspective_to_translation,
)

torch.set_num_threads(1)
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def random_axis_angle(n: int, dtype: torch.dtype, seed: int = 0, max_angle: float = math.pi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle
    return (axis * angle).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_matches_scipy_and_is_a_rotation(dtype):
    aa = random_axis_angle(500, dtype)
    rot = axis_angle_to_matrix(aa)
    expected = Rotation.from_rotvec(aa.double().numpy()).as_matrix()
    assert np.allclose(rot.double().numpy(), expected, atol=10 * TOL[dtype])
    eye = torch.eye(3, dtype=dtype).expand(500, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=10 * TOL[dtype])
    assert torch.allclose(torch.linalg.det(rot), torch.ones(500, dtype=dtype), atol=10 * TOL[dtype])


def test_known_rotation_quarter_turn_about_z_maps_x_to_y():
    rot = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64))
    assert torch.allclose(rot[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_round_trip_random_batch(dtype):
    aa = random_axis_angle(1000, dtype, max_angle=math.pi - 1e-3)
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    assert torch.allclose(back, aa, atol=100 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-4, 1.0, math.pi / 2, math.pi - 1e-4, math.pi])
def test_axis_angle_round_trip_edge_angles(dtype, angle):
    axis = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8], [1.0, 0, 0], [0, 0, -1.0]]), dim=-1)
    aa = (axis.double() * angle).to(dtype)
    rot = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(rot)
    assert torch.isfinite(back).all()
    # At exactly pi, n and -n are the same rotation: compare matrices; elsewhere the vectors.
    assert torch.allclose(axis_angle_to_matrix(back), rot, atol=20 * TOL[dtype])
    if angle < math.pi - 1e-3:
        assert torch.allclose(back, aa, atol=20 * TOL[dtype])
    else:
        assert torch.allclose(back.norm(dim=-1), aa.norm(dim=-1), atol=1e-5)


def test_matrix_to_axis_angle_near_pi_matches_scipy_in_float32():
    # float32 matrix entries carry ~1e-7 noise; near pi the axis must still come out right.
    aa = random_axis_angle(200, torch.float64, seed=3)
    aa = torch.nn.functional.normalize(aa, dim=-1) * (math.pi - 1e-4)
    rot = axis_angle_to_matrix(aa).float()
    back = matrix_to_axis_angle(rot).double()
    assert torch.allclose(back, aa, atol=1e-4)


def test_rodrigues_gradient_finite_at_zero():
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(aa)[..., 0, 1].sum().backward()
    assert torch.isfinite(aa.grad).all()
    # d R_01 / d aa_z at 0 is -1 (R ~ I + [aa]_x).
    assert torch.allclose(aa.grad[:, 2], -torch.ones(4, dtype=torch.float64))
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (random_axis_angle(5, torch.float64).requires_grad_(),))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rot6d_round_trip_and_spin_layout(dtype):
    rot = axis_angle_to_matrix(random_axis_angle(300, dtype, seed=1))
    six = matrix_to_rot6d(rot)
    assert six.shape == (300, 6)
    # SPIN's layout: reshape (3, 2), columns are the matrix's first two columns.
    assert torch.equal(six.view(300, 3, 2)[:, :, 0], rot[:, :, 0])
    assert torch.equal(six.view(300, 3, 2)[:, :, 1], rot[:, :, 1])
    assert torch.allclose(rot6d_to_matrix(six), rot, atol=10 * TOL[dtype])


def test_rot6d_orthonormalises_arbitrary_input():
    g = torch.Generator().manual_seed(2)
    six = torch.randn(7, 5, 6, generator=g, dtype=torch.float64)
    rot = rot6d_to_matrix(six)
    assert rot.shape == (7, 5, 3, 3)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(7, 5, dtype=torch.float64))
    # First column is the normalised first input column.
    a1 = six.view(7, 5, 3, 2)[..., 0]
    assert torch.allclose(rot[..., 0], a1 / a1.norm(dim=-1, keepdim=True))


def test_perspective_projection_convention():
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -0.5, 2.0]]])
    t = torch.tensor([[0.1, 0.2, 8.0]])
    px = perspective_projection(points, t, focal_length=5000.0, crop_size=224)
    assert torch.allclose(px[0, 0], torch.tensor([5000 * 0.1 / 8 + 112, 5000 * 0.2 / 8 + 112]))
    assert torch.allclose(px[0, 1], torch.tensor([5000 * 1.1 / 10 + 112, 5000 * -0.3 / 10 + 112]))
    center = torch.tensor([[10.0, 20.0]])
    px2 = perspective_projection(points, t, 5000.0, camera_center=center)
    assert torch.allclose(px2 - px, (center - 112)[:, None, :])
    with pytest.raises(InputError, match="crop_size"):
        perspective_projection(points, t, 5000.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weak_perspective_to_translation(dtype):
    cam = torch.tensor([[0.9, 0.1, -0.2], [0.0, 0.0, 0.0], [-1.0, 0.3, 0.3]], dtype=dtype)
    t = weak_perspective_to_translation(cam, 5000.0, 224)
    assert torch.allclose(t[0], torch.tensor([0.1, -0.2, 2 * 5000 / (224 * 0.9)], dtype=dtype))
    assert torch.isfinite(t).all() and (t[:, 2] > 0).all()
    # The network's camera places a unit-scale crop person so that its projection is consistent:
    # a point at the origin lands at f * tx / tz + 112 = 112 * (1 + s * tx) pixels.
    px = perspective_projection(torch.zeros(1, 1, 3, dtype=dtype), t[:1], 5000.0, crop_size=224)
    assert torch.allclose(px[0, 0, 0], torch.tensor(112 * (1 + 0.9 * 0.1), dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_camera_translation_recovers_known_translation(dtype):
    g = torch.Generator().manual_seed(4)
    batch, count = 32, 49
    points = (torch.randn(batch, count, 3, generator=g, dtype=torch.float64) * 0.4).to(dtype)
    true_t = torch.stack(
        (torch.rand(batch, generator=g) * 0.4 - 0.2, torch.rand(batch, generator=g) * 0.4 - 0.2,
         torch.rand(batch, generator=g) * 40 + 20), dim=-1
    ).to(dtype)
    kp = perspective_projection(points.double(), true_t.double(), 5000.0, crop_size=224).to(dtype)
    conf = (torch.rand(batch, count, generator=g) > 0.3).to(dtype)
    est = camera_translation_from_keypoints(points, kp, conf, 5000.0, 224, initial_depth=10.0)
    assert est.dtype == dtype
    # The weak depth prior biases the answer by ~1e-6 relative; float32 inputs add their rounding.
    assert torch.allclose(est[:, :2], true_t[:, :2], atol=1e-6 if dtype == torch.float64 else 1e-5)
    assert torch.allclose(est[:, 2], true_t[:, 2], rtol=1e-5 if dtype == torch.float64 else 1e-4, atol=0)


def test_camera_translation_degenerate_samples_stay_finite():
    points = torch.randn(3, 10, 3, dtype=torch.float32)
    kp = torch.rand(3, 10, 2) * 224
    conf = torch.zeros(3, 10)
    conf[1, 0] = 1.0  # one visible point: depth undetermined
    est = camera_translation_from_keypoints(points, kp, conf, 5000.0, 224, initial_depth=torch.tensor([20.0, 30, 40]))
    assert torch.isfinite(est).all()
    assert torch.allclose(est[0], torch.tensor([0.0, 0.0, 20.0]))
    assert torch.allclose(est[2], torch.tensor([0.0, 0.0, 40.0]))
    with pytest.raises(InputError, match="agree"):
        camera_translation_from_keypoints(points, kp[:, :5], conf, 5000.0, 224, 10.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_similarity_procrustes_undoes_similarity(dtype):
    g = torch.Generator().manual_seed(5)
    target = torch.randn(16, 14, 3, generator=g, dtype=torch.float64)
    rot = axis_angle_to_matrix(random_axis_angle(16, torch.float64, seed=6))
    scale = torch.rand(16, 1, 1, generator=g, dtype=torch.float64) * 2 + 0.5
    shift = torch.randn(16, 1, 3, generator=g, dtype=torch.float64)
    source = scale * target @ rot.transpose(1, 2) + shift
    aligned = similarity_procrustes(source.to(dtype), target.to(dtype))
    assert torch.allclose(aligned.double(), target, atol=1e-5)


def test_similarity_procrustes_never_reflects():
    g = torch.Generator().manual_seed(7)
    target = torch.randn(8, 20, 3, generator=g, dtype=torch.float64)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    aligned = similarity_procrustes(mirrored, target)
    # A proper rotation cannot undo a mirror image: the residual stays large, and the aligned
    # points are a rotated (not reflected) copy of the source, i.e. same handedness.
    assert (aligned - target).norm(dim=-1).mean() > 0.1
    a0 = aligned - aligned.mean(1, keepdim=True)
    m0 = mirrored - mirrored.mean(1, keepdim=True)
    det_a = torch.linalg.det(a0[:, :3])
    det_m = torch.linalg.det(m0[:, :3])
    assert (torch.sign(det_a) == torch.sign(det_m)).all()


@pytest.mark.parametrize("angle", [0.0, 1e-8, 0.5, 2.0, math.pi - 1e-6, math.pi])
def test_matrix_to_axis_angle_gradient_finite(angle):
    aa = torch.tensor([[0.6, 0.0, 0.8]], dtype=torch.float64) * angle
    rot = axis_angle_to_matrix(aa).requires_grad_()
    matrix_to_axis_angle(rot).sum().backward()
    assert torch.isfinite(rot.grad).all()
