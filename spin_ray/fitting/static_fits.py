"""Offline static fits: SMPLify on a whole dataset's keypoints from one initialisation, in batches.

This is how a fit store gets its first contents (the paper's initial fit dictionary): every sample
is fitted in its canonical crop from the mean pose (or from given parameters), and scored with the
same ranking error that the training loop uses, so later loop fits replace only worse ones. The
start (`static_start`) and the fit (`canonical_fits.fit_predictions`) are the fitter pool's own, so
`spin-ray fit --local` and the pool's dataset fit give the same fits from the same start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from spin_ray.body.body_model import BodyModel
from spin_ray.body.frames import NO_AUG, SCALE_UNIT_PX
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.errors import InputError
from spin_ray.fitting.canonical_fits import StartBatch, fit_predictions
from spin_ray.fitting.compiled_stage import compiles
from spin_ray.fitting.starts import typical_depth
from spin_ray.fitting.smplify import SmplifyParams, camera_from_keypoints, ignored_joints, rejected_samples
from spin_ray.geometry import pixels_to_normalised



@dataclass(frozen=True)
class StaticFits:
    """Fits of a dataset in SPIN's static-fits layout plus their ranking errors."""

    pose: np.ndarray  # (N, 72) float32 axis-angle, canonical frame; NaN where not fitted
    betas: np.ndarray  # (N, num_betas) float32; NaN where not fitted
    error: np.ndarray  # (N,) float64; inf where the sample could not be fitted or was not fitted
    failed: np.ndarray  # (N,) bool: fitted, but the fit failed
    fitted: np.ndarray  # (N,) bool: fitted at all (False for rows left out, e.g. bad annotations)

    def table(self) -> np.ndarray:
        """SPIN's (N, 82) static-fits array: pose 72 then betas 10 per row."""
        return np.concatenate([self.pose, self.betas[:, :10]], axis=1).astype(np.float32)


def canonical_crop_keypoints(
    keypoints: np.ndarray, center: np.ndarray, scale: np.ndarray, crop_size: int
) -> np.ndarray:
    """Image-pixel keypoints (N, J, 3) to pixels of each sample's canonical crop (no augmentation)."""
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3 or center.shape != (len(keypoints), 2) or \
            scale.shape != (len(keypoints),):
        raise InputError(
            f"keypoints (N, J, 3), center (N, 2), scale (N,) expected; got {keypoints.shape}, "
            f"{center.shape}, {scale.shape}"
        )
    # A row with a non-positive or NaN scale comes out non-finite (and is rejected by the fit) without a
    # numpy warning; data/row_checks.py names such rows to the user before they get here.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        zoom = crop_size / (SCALE_UNIT_PX * scale.astype(np.float64))
        xy = (keypoints[..., :2] - center[:, None, :]) * zoom[:, None, None] + crop_size / 2.0
    return np.concatenate([xy, keypoints[..., 2:]], axis=-1).astype(np.float32)


def static_start(
    body: BodyModel, keypoints_px: torch.Tensor, pose: torch.Tensor, betas: torch.Tensor, camera: CameraConfig,
    fitting: FittingConfig,
) -> StartBatch:
    """An SMPLify start in canonical crops from given parameters, with normalised keypoints and no augmentation.

    The camera translation is found in closed form from the keypoints (rejected samples get a
    harmless one; SMPLify flags them); what comes out is what `fit_predictions` takes, so offline
    fits and the fitter pool's fits of the same start go through one path.
    """
    kp = keypoints_px
    safe_kp = torch.where(rejected_samples(kp)[:, None, None], torch.zeros_like(kp), kp)
    camera_t = camera_from_keypoints(body, pose, betas, safe_kp, camera, typical_depth(camera), ignored_joints(fitting))
    normalised = torch.cat([pixels_to_normalised(kp[..., :2], camera.crop_size), kp[..., 2:]], dim=-1)
    aug = torch.tensor(NO_AUG, dtype=kp.dtype).expand(kp.shape[0], -1)
    return StartBatch(pose, betas, camera_t, normalised, aug)


def fit_static(
    body: BodyModel,
    pose_prior: torch.nn.Module,
    keypoints_px: torch.Tensor,
    init_pose: torch.Tensor,
    init_betas: torch.Tensor,
    fitting: FittingConfig,
    camera: CameraConfig,
    progress: bool = True,
    fit_rows: np.ndarray | None = None,
) -> StaticFits:
    """Fit the samples of keypoints_px (N, 49, 3) in crop pixels from (N or 1, 72) poses and betas.

    `fit_rows` (N,) bool leaves the False rows unfitted (pose and betas NaN, error inf); default all.
    """
    n = keypoints_px.shape[0]
    init_pose = init_pose.expand(n, -1) if init_pose.shape[0] == 1 else init_pose
    init_betas = init_betas.expand(n, -1) if init_betas.shape[0] == 1 else init_betas
    if init_pose.shape != (n, 72) or init_betas.shape != (n, body.num_betas):
        raise InputError(f"init pose {tuple(init_pose.shape)} and betas {tuple(init_betas.shape)} must be "
                         f"(N or 1, 72) and (N or 1, {body.num_betas}) for N = {n}")
    fitted = np.ones(n, bool) if fit_rows is None else np.asarray(fit_rows, bool).copy()
    if fitted.shape != (n,):
        raise InputError(f"fit_rows has shape {fitted.shape}, expected ({n},) for {n} samples")
    todo = np.flatnonzero(fitted)
    fitting = fitting.model_copy(update={"compiled": compiles(fitting, len(todo))})  # auto: by the rows to fit
    pose = np.full((n, 72), np.nan, np.float32)
    betas = np.full((n, body.num_betas), np.nan, np.float32)
    error = np.full(n, np.inf)
    failed = np.zeros(n, bool)
    bar = tqdm(total=len(todo), desc="fitting", unit="fit", disable=not progress)
    for start in range(0, len(todo), fitting.batch_size):
        rows = todo[start:start + fitting.batch_size]
        index = torch.from_numpy(rows)
        fit_start = static_start(body, keypoints_px[index], init_pose[index].clone(), init_betas[index].clone(),
                                 camera, fitting)
        fits = fit_predictions(body, pose_prior, fit_start, fitting, camera)
        pose[rows] = fits.pose.numpy()
        betas[rows] = fits.betas.numpy()
        error[rows] = fits.error.double().numpy()
        failed[rows] = ~torch.isfinite(fits.error).numpy()
        bar.update(len(rows))
        done = np.isfinite(error)
        bar.set_postfix(median_error=f"{np.median(error[done]) if done.any() else float('nan'):.1f}")
    bar.close()
    return StaticFits(pose, betas, error, failed, fitted)
