"""SMPLify's robust loss and priors: Geman-McClure, the max-mixture GMM pose prior, the elbow/knee
bending prior and the quadratic shape prior. Losses are pure functions; the GMM only holds buffers."""

from __future__ import annotations

import io
import math
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spin_ray.body.joints import SMPL_JOINT_NAMES
from spin_ray.config import FittingConfig
from spin_ray.errors import BodyModelError, InputError

POSE_PRIOR_DIM = 69
OPEN_PRIOR_ASSET = "open_gmm_08.npz"


def gmof(residual: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty sigma^2 r^2 / (sigma^2 + r^2), elementwise."""
    squared = residual * residual
    sigma2 = sigma * sigma
    return sigma2 * squared / (sigma2 + squared)


# SMPLify's bending prior, written against the 72-d pose as in the published code and shifted by
# one joint (3 entries) for the 69-d body pose that starts at joint 1. In the T-pose frame (x: the
# person's left, y: up, z: forward):
#   72-d 55 = joint 18 left_elbow, axis y: flexion swings the forearm (along +x) forward, a
#            negative y rotation, so positive values (bending backwards) are penalised: sign +1.
#   72-d 58 = joint 19 right_elbow, axis y: mirror image, flexion is positive y: sign -1.
#   72-d 12 = joint 4 left_knee,  axis x: flexion moves the shin (along -y) backwards, a positive
#            x rotation, so negative values (hyper-extension) are penalised: sign -1.
#   72-d 15 = joint 5 right_knee, axis x: same as the left knee: sign -1.
# Using 55, 58, 12, 15 directly on the 69-d vector would hit the right elbow, left wrist, right knee
# and spine2 instead.
_BEND_JOINTS: tuple[tuple[str, int, float], ...] = (
    ("left_elbow", 1, 1.0), ("right_elbow", 1, -1.0), ("left_knee", 0, -1.0), ("right_knee", 0, -1.0),
)
ANGLE_PRIOR_INDICES: tuple[int, ...] = tuple(
    3 * (SMPL_JOINT_NAMES.index(name) - 1) + axis for name, axis, _ in _BEND_JOINTS
)
ANGLE_PRIOR_SIGNS: tuple[float, ...] = tuple(sign for _, _, sign in _BEND_JOINTS)


def angle_prior(body_pose: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over elbows and knees of exp(sign * angle)^2: large when a joint bends backwards."""
    if body_pose.shape[-1] != POSE_PRIOR_DIM:
        raise InputError(f"angle_prior takes the 69-d body pose (no global orient), got {tuple(body_pose.shape)}")
    signs = torch.tensor(ANGLE_PRIOR_SIGNS, dtype=body_pose.dtype, device=body_pose.device)
    return torch.exp(body_pose[..., list(ANGLE_PRIOR_INDICES)] * signs).pow(2).sum(-1)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squared shape coefficients."""
    return (betas * betas).sum(-1)


class MaxMixturePrior(nn.Module):
    """GMM pose prior scored by its best component (SMPLify's "max mixture").

    forward(body_pose (B, 69)) returns, per sample,
        min_k [ 0.5 d_k^T P_k d_k - log w_k + 0.5 log det C_k ] + const,   d_k = pose - mean_k,
    i.e. the negative log of the largest weighted component density. const = (69 / 2) log(2 pi)
    - 0.5 min_k log det C_k, the same constant SMPLify's code uses (it divides the densities by the
    smallest sqrt det), so values are comparable with its prior weights; it does not affect gradients.
    """

    def __init__(self, means: np.ndarray | torch.Tensor, covars: np.ndarray | torch.Tensor,
                 weights: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        means = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        covars = torch.as_tensor(np.asarray(covars), dtype=torch.float64)
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        validate_gmm(means, covars, weights)
        chol = torch.linalg.cholesky(covars)
        eye = torch.eye(means.shape[1], dtype=torch.float64).expand_as(covars)
        # P = C^{-1} = L^{-T} L^{-1}, so d^T P d = |L^{-1} d|^2: keep L^{-1} as the "precision root".
        inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)
        log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        constant = 0.5 * means.shape[1] * math.log(2 * math.pi) - 0.5 * log_det.min()
        self.register_buffer("means", means.float())
        self.register_buffer("precision_root", inv_chol.float())
        self.register_buffer("log_normaliser", (-weights.log() + 0.5 * log_det + constant).float())

    @property
    def num_components(self) -> int:
        """Number of mixture components."""
        return self.means.shape[0]

    def component_nll(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Negative log weighted density (B, K) of each component, constant included."""
        diff = body_pose[:, None, :].to(self.means.dtype) - self.means  # (B, K, D)
        whitened = torch.einsum("kij,bkj->bki", self.precision_root, diff)
        return 0.5 * (whitened * whitened).sum(-1) + self.log_normaliser

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log likelihood (B,) under the best component."""
        if body_pose.dim() != 2 or body_pose.shape[1] != self.means.shape[1]:
            raise InputError(
                f"the pose prior takes body poses (B, {self.means.shape[1]}), got {tuple(body_pose.shape)}"
            )
        return self.component_nll(body_pose).min(dim=1).values.to(body_pose.dtype)


def validate_gmm(means: torch.Tensor, covars: torch.Tensor, weights: torch.Tensor, source: str = "GMM") -> None:
    """Raise BodyModelError unless means (K, D), covars (K, D, D) and weights (K,) fit together."""
    k, d = means.shape if means.dim() == 2 else (None, None)
    if k is None or covars.shape != (k, d, d) or weights.shape != (k,):
        raise BodyModelError(
            f"{source}: expected means (K, D), covars (K, D, D), weights (K,); got {tuple(means.shape)}, "
            f"{tuple(covars.shape)}, {tuple(weights.shape)}"
        )
    if not (torch.isfinite(means).all() and torch.isfinite(covars).all() and torch.isfinite(weights).all()):
        raise BodyModelError(f"{source}: contains NaN or inf")
    if (weights <= 0).any():
        raise BodyModelError(f"{source}: mixture weights must be positive, got {weights.tolist()}")
    if torch.linalg.cholesky_ex(covars).info.any():
        raise BodyModelError(f"{source}: some covariances are not positive definite")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol-2 pickles written by Python 3 carry the array bytes as latin-1 text turned back
        # into bytes by this codec call; it builds a bytes object and nothing else.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise BodyModelError(
                f"pose prior pickle wants to load {module}.{name}; only numpy arrays are allowed "
                "(expected SMPLify's gmm_08.pkl: a dict of 'means', 'covars', 'weights' arrays)"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # the old path; numpy 2 moved it
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    """Read SMPLify's gmm_08.pkl layout with the array-only unpickler."""
    try:
        data = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except BodyModelError:
        raise
    except Exception as err:  # a truncated or foreign file: say which
        raise BodyModelError(f"{path}: not a readable pose prior pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise BodyModelError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    return data


def load_gmm(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read (means, covars, weights) from SMPLify's gmm_08.pkl layout or our .npz."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelError(f"pose prior {path} does not exist (set fitting.pose_prior_path, or None for the open prior)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    elif path.suffix == ".pkl":
        data = _read_pickle(path)
    else:
        raise BodyModelError(f"pose prior {path}: unknown file type (use SMPLify's .pkl or a spin-ray .npz)")
    missing = [key for key in ("means", "covars", "weights") if key not in data]
    if missing:
        raise BodyModelError(f"pose prior {path}: missing {missing}; found keys {sorted(data)}")
    arrays = tuple(np.asarray(data[key], dtype=np.float64) for key in ("means", "covars", "weights"))
    validate_gmm(*(torch.from_numpy(a) for a in arrays), source=f"pose prior {path}")
    return arrays


def open_prior_path() -> Path:
    """Path of the embedded open pose prior asset."""
    return Path(str(resources.files("spin_ray.fitting") / "assets" / OPEN_PRIOR_ASSET))


def load_pose_prior(config: FittingConfig) -> MaxMixturePrior:
    """The pose prior the config names, or the embedded open prior when pose_prior_path is None."""
    path = config.pose_prior_path if config.pose_prior_path is not None else open_prior_path()
    prior = MaxMixturePrior(*load_gmm(path))
    if prior.means.shape[1] != POSE_PRIOR_DIM:
        raise BodyModelError(f"pose prior {path} is {prior.means.shape[1]}-d; SMPL body poses are {POSE_PRIOR_DIM}-d")
    return prior
