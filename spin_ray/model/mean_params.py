"""Mean SMPL parameters that the regressor starts from: SPIN's file for SMPL, or computed for the open model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spin_ray.body.joints import NUM_SMPL_JOINTS
from spin_ray.config import RunConfig
from spin_ray.errors import ModelError
from spin_ray.body.pose_sampler import sample_body_poses
from spin_ray.geometry import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

# SPIN's mean camera: a person filling ~90 % of the crop, centred.
OPEN_MEAN_CAMERA: tuple[float, float, float] = (0.9, 0.0, 0.0)
OPEN_MEAN_SAMPLES = 4096  # poses averaged; the mean moves by < 1e-2 rad between seeds at this count
OPEN_MEAN_SEED = 0


@dataclass(frozen=True)
class MeanParams:
    """Mean regressor outputs: 6D pose (144,), betas (num_betas,), camera [s, tx, ty] (3,); float32."""

    pose_6d: torch.Tensor
    betas: torch.Tensor
    camera: torch.Tensor

    def vector(self) -> torch.Tensor:
        """The concatenated parameter vector (144 + num_betas + 3,) in the regressor's layout."""
        return torch.cat([self.pose_6d, self.betas, self.camera])


def load_mean_params(path: str | Path, num_betas: int = 10) -> MeanParams:
    """Read SPIN's smpl_mean_params.npz: 'pose' as (144,) 6D or (72,) axis-angle, 'shape', 'cam' (3,)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"mean parameter file {path} does not exist; fix network.mean_params_path "
                         "or set it to null to use the open model's mean")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
    except Exception as err:  # zip, pickle-refusal and format errors all mean "not our file"
        raise ModelError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    missing = [key for key in ("pose", "shape", "cam") if key not in arrays]
    if missing:
        raise ModelError(f"{path}: missing keys {missing} (has {sorted(arrays)}); expected SPIN's "
                         "smpl_mean_params.npz with 'pose', 'shape' and 'cam'")
    pose = arrays["pose"].reshape(-1)
    if pose.size == 6 * NUM_SMPL_JOINTS:
        pose_6d = torch.from_numpy(pose)
    elif pose.size == 3 * NUM_SMPL_JOINTS:
        rotmats = axis_angle_to_matrix(torch.from_numpy(pose).reshape(NUM_SMPL_JOINTS, 3))
        pose_6d = matrix_to_rot6d(rotmats).reshape(-1)
    else:
        raise ModelError(f"{path}: 'pose' has {pose.size} values, expected {6 * NUM_SMPL_JOINTS} (6D) "
                         f"or {3 * NUM_SMPL_JOINTS} (axis-angle) for {NUM_SMPL_JOINTS} joints")
    shape = arrays["shape"].reshape(-1)
    if shape.size < num_betas:
        raise ModelError(f"{path}: 'shape' has {shape.size} betas, the model needs {num_betas}; "
                         "set body.num_betas to at most that")
    cam = arrays["cam"].reshape(-1)
    if cam.size != 3:
        raise ModelError(f"{path}: 'cam' has {cam.size} values, expected 3 ([s, tx, ty])")
    params = MeanParams(pose_6d, torch.from_numpy(shape[:num_betas].copy()), torch.from_numpy(cam.copy()))
    if not bool(torch.isfinite(params.vector()).all()):
        raise ModelError(f"{path}: contains NaN or infinite values")
    return params


def project_to_rotation(matrices: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (..., 3, 3) to each matrix in the Frobenius sense (SVD with a determinant fix)."""
    u, _, vh = torch.linalg.svd(matrices)
    d = torch.ones(matrices.shape[:-1], dtype=matrices.dtype, device=matrices.device)
    d[..., 2] = torch.linalg.det(u @ vh).sign()
    return u @ torch.diag_embed(d) @ vh


def open_mean_params(num_betas: int = 10, samples: int = OPEN_MEAN_SAMPLES, seed: int = OPEN_MEAN_SEED) -> MeanParams:
    """Mean parameters for the open model: the projected mean rotation of sampled poses, upright, facing the camera."""
    generator = torch.Generator().manual_seed(seed)
    pose = sample_body_poses(samples, generator, dtype=torch.float64)
    rotmats = axis_angle_to_matrix(pose.reshape(samples, NUM_SMPL_JOINTS, 3))
    # The chordal mean: the rotation nearest to the arithmetic mean matrix, one per joint.
    mean = project_to_rotation(rotmats.mean(dim=0))
    # Global orient pi about x: upright in the image and facing the camera (see sample_global_orient).
    mean[0] = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64))
    return MeanParams(
        pose_6d=matrix_to_rot6d(mean).reshape(-1).float(),
        betas=torch.zeros(num_betas),
        camera=torch.tensor(OPEN_MEAN_CAMERA),
    )


def mean_params_from_path(path: Path | None, num_betas: int = 10) -> MeanParams:
    """SPIN's file when a path is given, the open model's computed mean otherwise."""
    return open_mean_params(num_betas) if path is None else load_mean_params(path, num_betas)


def mean_pose_axis_angle(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The regressor's mean pose (1, 72) axis-angle and betas (1, B): SPIN's file or the open model's."""
    mean = mean_params_from_path(cfg.network.mean_params_path, cfg.body.num_betas)
    pose = matrix_to_axis_angle(rot6d_to_matrix(mean.pose_6d.view(24, 6))).reshape(1, 72)
    return pose.float(), mean.betas.view(1, -1).float()
