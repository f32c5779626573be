"""Full-covariance Gaussian mixtures by EM: fit (means, covars, weights) in the layout of SMPLify's gmm_08.pkl.

The open pose prior asset is built with it by `python tools/build_open_gmm.py` and read by
`priors.load_gmm`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from spin_ray.errors import InputError

# SMPLify's gmm_08 has 8 components.
DEFAULT_COMPONENTS = 8
# Added to every covariance's diagonal (rad^2): some sampled angles are nearly constant (a hinge's
# off-axis rotations), and a floor of ~0.01 rad keeps their precision finite and the prior smooth.
COVARIANCE_FLOOR = 1e-4
_CHUNK = 20_000  # points per E-step block: bounds the (K, D, chunk) whitened residuals in memory


def _log_component_densities(x: torch.Tensor, means: torch.Tensor, covars: torch.Tensor) -> torch.Tensor:
    """log N(x_n | mean_k, covar_k) as (N, K), computed in blocks of points."""
    chol = torch.linalg.cholesky(covars)
    half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
    constant = 0.5 * x.shape[1] * math.log(2 * math.pi)
    blocks = []
    for start in range(0, x.shape[0], _CHUNK):
        diff = (x[None, start:start + _CHUNK] - means[:, None]).transpose(1, 2)  # (K, D, n)
        whitened = torch.linalg.solve_triangular(chol, diff, upper=False)
        blocks.append((-0.5 * (whitened * whitened).sum(1) - half_log_det[:, None] - constant).T)
    return torch.cat(blocks)


def _kmeans_init(x: torch.Tensor, k: int, generator: torch.Generator, rounds: int = 10) -> torch.Tensor:
    """k-means++ seeding and a few Lloyd rounds: start means that cover the data."""
    n = x.shape[0]
    centers = [x[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    dist = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        pick = torch.multinomial(dist / dist.sum(), 1, generator=generator)
        centers.append(x[pick].squeeze(0))
        dist = torch.minimum(dist, ((x - centers[-1]) ** 2).sum(1))
    centers = torch.stack(centers)
    for _ in range(rounds):
        label = torch.cdist(x, centers).argmin(1)
        counts = torch.bincount(label, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, label, x)
        # An emptied cluster keeps its old center instead of becoming NaN.
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
    return centers


def fit_gmm(
    samples: np.ndarray | torch.Tensor,
    k: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    iterations: int = 200,
    tolerance: float = 1e-6,
    covariance_floor: float = COVARIANCE_FLOOR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a k-component full-covariance GMM to samples (N, D) by EM; returns (means, covars, weights)."""
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 2 * k or not torch.isfinite(x).all():
        raise InputError(f"fit_gmm needs finite samples (N, D) with N >= 2k = {2 * k}, got {tuple(x.shape)}")
    n, d = x.shape
    generator = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, dtype=torch.float64)
    means = _kmeans_init(x, k, generator)
    covars = (torch.cov(x.T).reshape(d, d) + covariance_floor * eye).expand(k, d, d).clone()
    log_weights = torch.full((k,), -math.log(k), dtype=torch.float64)
    previous = -math.inf
    for _ in range(iterations):
        joint = _log_component_densities(x, means, covars) + log_weights  # (N, K)
        log_norm = torch.logsumexp(joint, dim=1, keepdim=True)
        mean_log_likelihood = log_norm.mean().item()
        resp = (joint - log_norm).exp()
        counts = resp.sum(0).clamp(min=1e-10)  # (K,)
        means = (resp.T @ x) / counts[:, None]
        # One (N, D) matmul per component: an (N, K, D) temporary would be ~0.5 GB at N = 100k.
        scatter = []
        for j in range(k):
            centred = x - means[j]
            scatter.append((centred * resp[:, j:j + 1]).T @ centred)
        covars = torch.stack(scatter) / counts[:, None, None] + covariance_floor * eye
        log_weights = (counts / n).log()
        if mean_log_likelihood - previous < tolerance * max(1.0, abs(mean_log_likelihood)):
            break
        previous = mean_log_likelihood
    return means.numpy(), covars.numpy(), log_weights.exp().numpy()


def mean_log_likelihood(samples: np.ndarray, means: np.ndarray, covars: np.ndarray, weights: np.ndarray) -> float:
    """Average log density of samples under the full mixture (not the max-mixture)."""
    x = torch.as_tensor(samples, dtype=torch.float64)
    joint = _log_component_densities(x, torch.as_tensor(means), torch.as_tensor(covars))
    return torch.logsumexp(joint + torch.as_tensor(weights).log(), dim=1).mean().item()
