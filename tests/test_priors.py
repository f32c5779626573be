import os
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from spin_ray.body.joints import SMPL_JOINT_NAMES
from spin_ray.errors import BodyModelError, InputError
from spin_ray.fitting.priors import (
    ANGLE_PRIOR_INDICES,
    MaxMixturePrior,
    angle_prior,
    gmof,
    load_gmm,
    shape_prior,
)

torch.set_num_threads(1)


def random_gmm(k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 0.5
    a = rng.normal(size=(k, d, d)) * 0.3
    covars = a @ a.transpose(0, 2, 1) + 0.05 * np.eye(d)
    weights = rng.uniform(0.2, 1.0, size=k)
    return means, covars, weights / weights.sum()


def test_gmof_values():
    r = torch.tensor([[0.0, 100.0, -100.0, 1e6]])
    out = gmof(r, 100.0)
    assert out.shape == r.shape
    assert torch.allclose(out, torch.tensor([[0.0, 5000.0, 5000.0, 1e4 * 1e12 / (1e4 + 1e12)]]))
    # Quadratic near zero, saturating at sigma^2 far away.
    assert torch.allclose(gmof(torch.tensor(1.0), 100.0), torch.tensor(1.0), rtol=1e-3)
    assert gmof(torch.tensor(1e8, dtype=torch.float64), 100.0) < 1e4


def test_angle_prior_indices_are_elbow_y_and_knee_x():
    names = [(SMPL_JOINT_NAMES[i // 3 + 1], "xyz"[i % 3]) for i in ANGLE_PRIOR_INDICES]
    assert names == [("left_elbow", "y"), ("right_elbow", "y"), ("left_knee", "x"), ("right_knee", "x")]
    assert ANGLE_PRIOR_INDICES == (52, 55, 9, 12)  # SMPLify's 72-d [55, 58, 12, 15] minus 3


def test_angle_prior_penalises_backward_bending_only():
    zero = torch.zeros(1, 69)
    assert torch.allclose(angle_prior(zero), torch.tensor([4.0]))
    natural = zero.clone()
    natural[0, [52, 55, 9, 12]] = torch.tensor([-1.0, 1.0, 1.0, 1.0])  # elbows and knees flexed
    backward = -natural
    assert angle_prior(natural) < 0.6
    assert angle_prior(backward) > 25.0
    with pytest.raises(InputError, match="69-d"):
        angle_prior(torch.zeros(2, 72))


def test_shape_prior():
    betas = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(shape_prior(betas), torch.tensor([5.0, 0.0]))


def test_max_mixture_matches_explicit_densities():
    means, covars, weights = random_gmm(4, 6, seed=0)
    prior = MaxMixturePrior(means, covars, weights)
    x = np.random.default_rng(1).normal(size=(50, 6))
    got = prior(torch.tensor(x, dtype=torch.float32)).double().numpy()
    per_component = np.stack(
        [-np.log(w) - multivariate_normal(m, c).logpdf(x) for m, c, w in zip(means, covars, weights)], axis=1
    )
    min_half_logdet = min(0.5 * np.linalg.slogdet(c)[1] for c in covars)
    # The documented constant: SMPLify divides densities by the smallest sqrt det.
    assert np.allclose(got, per_component.min(1) - min_half_logdet, rtol=1e-4, atol=1e-3)
    assert prior.num_components == 4


def test_max_mixture_gradient_and_shape_errors():
    prior = MaxMixturePrior(*random_gmm(3, 5, seed=2))
    pose = torch.zeros(4, 5, requires_grad=True)
    prior(pose).sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    with pytest.raises(InputError, match="body poses"):
        prior(torch.zeros(4, 6))


def test_max_mixture_refuses_bad_parameters():
    means, covars, weights = random_gmm(2, 3, seed=3)
    with pytest.raises(BodyModelError, match="positive definite"):
        MaxMixturePrior(means, -covars, weights)
    with pytest.raises(BodyModelError, match="expected means"):
        MaxMixturePrior(means, covars[:, :2], weights)
    with pytest.raises(BodyModelError, match="positive"):
        MaxMixturePrior(means, covars, np.array([1.0, 0.0]))


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_gmm_reads_smplify_pickle_layout(tmp_path, protocol):
    means, covars, weights = random_gmm(8, 69, seed=4)
    path = tmp_path / "gmm_08.pkl"
    # SMPLify's file is a protocol-2 pickle of a plain dict of arrays.
    path.write_bytes(pickle.dumps({"means": means, "covars": covars, "weights": weights}, protocol=protocol))
    got = load_gmm(path)
    for a, b in zip(got, (means, covars, weights)):
        assert np.array_equal(a, b)
    npz = tmp_path / "prior.npz"
    np.savez(npz, means=means, covars=covars, weights=weights)
    assert all(np.array_equal(a, b) for a, b in zip(load_gmm(npz), got))


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_load_gmm_refuses_foreign_classes(tmp_path):
    path = tmp_path / "gmm_08.pkl"
    path.write_bytes(pickle.dumps({"means": np.zeros((1, 2)), "evil": _Sneaky()}, protocol=2))
    with pytest.raises(BodyModelError, match=r"posix\.getcwd|os\.getcwd"):
        load_gmm(path)


def test_load_gmm_reports_missing_keys_and_files(tmp_path):
    path = tmp_path / "gmm.pkl"
    path.write_bytes(pickle.dumps({"means": np.zeros((1, 2))}, protocol=2))
    with pytest.raises(BodyModelError, match="missing"):
        load_gmm(path)
    with pytest.raises(BodyModelError, match="does not exist"):
        load_gmm(tmp_path / "nope.pkl")
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps({"means": np.zeros((3, 3))}, protocol=2)[:20])
    with pytest.raises(BodyModelError, match="not a readable"):
        load_gmm(truncated)
