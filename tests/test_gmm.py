import numpy as np
import pytest
import torch

from spin_ray.config import FittingConfig
from spin_ray.errors import InputError
from spin_ray.fitting.gmm import fit_gmm, mean_log_likelihood
from spin_ray.body.pose_sampler import sample_body_poses
from spin_ray.fitting.priors import MaxMixturePrior, load_gmm, load_pose_prior, open_prior_path
from tools_loader import load_tool

build_open_gmm = load_tool("build_open_gmm")
OPEN_PRIOR_SEED, main = build_open_gmm.OPEN_PRIOR_SEED, build_open_gmm.main

torch.set_num_threads(1)


def test_em_recovers_a_known_two_component_mixture():
    rng = np.random.default_rng(0)
    true_means = np.array([[-2.0, 0.0], [3.0, 1.0]])
    true_covars = np.array([[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]]])
    counts = (3000, 7000)
    x = np.concatenate([rng.multivariate_normal(m, c, size=n) for m, c, n in zip(true_means, true_covars, counts)])
    means, covars, weights = fit_gmm(x, k=2, seed=1, covariance_floor=1e-6)
    order = np.argsort(means[:, 0])
    means, covars, weights = means[order], covars[order], weights[order]
    assert np.allclose(means, true_means, atol=0.06)
    assert np.allclose(weights, [0.3, 0.7], atol=0.01)
    assert np.allclose(covars, true_covars, atol=0.08)
    # EM's answer scores the data at least as well as the truth (it maximises the likelihood).
    truth = mean_log_likelihood(x, true_means, true_covars, np.array([0.3, 0.7]))
    assert mean_log_likelihood(x, means, covars, weights) >= truth - 1e-9


def test_fit_gmm_is_seeded_and_checks_input():
    x = np.random.default_rng(2).normal(size=(400, 3))
    a = fit_gmm(x, k=3, seed=5, iterations=10)
    b = fit_gmm(x, k=3, seed=5, iterations=10)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    with pytest.raises(InputError, match="N >= 2k"):
        fit_gmm(x[:4], k=3)
    with pytest.raises(InputError, match="finite"):
        fit_gmm(np.full((100, 2), np.nan), k=2)


def test_cli_writes_a_loadable_prior(tmp_path, capsys):
    out = tmp_path / "prior.npz"
    assert main(["--out", str(out), "--samples", "600", "--components", "2", "--iterations", "3", "--seed", "7"]) == 0
    means, covars, weights = load_gmm(out)
    assert means.shape == (2, 69) and covars.shape == (2, 69, 69) and np.isclose(weights.sum(), 1.0, atol=1e-5)
    assert "mean_log_likelihood=" in capsys.readouterr().out


def test_open_prior_asset_prefers_sampler_poses_to_random_ones():
    prior = load_pose_prior(FittingConfig())
    assert isinstance(prior, MaxMixturePrior) and prior.num_components == 8
    assert open_prior_path().is_file()
    with np.load(open_prior_path()) as npz:
        assert int(npz["seed"]) == OPEN_PRIOR_SEED
    # Poses from a seed the prior never saw, against uniformly random joint rotations.
    natural = sample_body_poses(2000, torch.Generator().manual_seed(12345))[:, 3:]
    g = torch.Generator().manual_seed(6)
    uniform = (torch.rand(2000, 69, generator=g) * 2 - 1) * 1.0
    nll_natural, nll_uniform = prior(natural), prior(uniform)
    assert torch.isfinite(nll_natural).all()
    assert nll_natural.median() < nll_uniform.min()
    assert (nll_natural < nll_uniform.quantile(0.01)).float().mean() > 0.99
    # The rest pose is plausible too (standing is a common family).
    assert prior(torch.zeros(1, 69)) < nll_uniform.quantile(0.01)


def test_open_prior_dislikes_knees_and_elbows_bent_backwards():
    prior = load_pose_prior(FittingConfig())
    natural = sample_body_poses(2000, torch.Generator().manual_seed(54321))[:, 3:]
    # 69-d indices: left/right knee x = 9, 12; left/right elbow y = 52, 55.
    bent = (natural[:, 9] > 0.5) & (natural[:, 55] > 0.5)
    assert bent.sum() > 100
    broken = natural[bent].clone()
    broken[:, [9, 12, 52, 55]] = -broken[:, [9, 12, 52, 55]]
    assert (prior(broken) > prior(natural[bent]) + 10).float().mean() > 0.99
