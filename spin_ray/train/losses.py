"""SPIN's training losses as pure batched functions, and their weighted sum from a LossConfig.

Conventions: 2D keypoints are normalised to [-1, 1] over the crop (pixel / (crop / 2) - 1); targets
carry a confidence in their last column; masks are (B,) bools. A loss whose mask selects no sample
is an exact zero that still depends on the predictions, so it backpropagates zeros instead of
breaking the graph. Targets that are masked out are replaced by zeros before any arithmetic, so a
NaN in an unused target (a failed fit, a missing 3D label) can reach neither the loss nor its
gradient (masking the product afterwards would still give 0 * NaN = NaN in the backward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from spin_ray.body.joints import DATASET24_NAMES, NUM_KEYPOINTS, NUM_OPENPOSE
from spin_ray.config import FittingConfig, LossConfig
from spin_ray.errors import InputError
from spin_ray.eval.metrics import pelvis_centred

# SPIN centres 3D keypoints on the midpoint of the LSP hips (dataset joints 2 and 3).
DATASET_HIP_INDICES: tuple[int, int] = (DATASET24_NAMES.index("Right Hip"), DATASET24_NAMES.index("Left Hip"))
CAMERA_PRIOR_RATE = 10.0  # SPIN's exp(-10 s): strong push away from s <= 0, negligible at s ~ 0.9


def _check(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise InputError unless tensor has the given shape (None matches any size)."""
    ok = tensor.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        wanted = ", ".join("B" if s is None else str(s) for s in shape)
        raise InputError(f"{name} has shape {tuple(tensor.shape)}, expected ({wanted})")


def _kept(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values where mask (broadcast) is true, else exact zeros."""
    return torch.where(mask, values, torch.zeros_like(values))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, ...) over the samples in mask (B,) and all other dims; 0 if none selected."""
    per_sample = values.flatten(1).mean(dim=1)
    weight = mask.to(values.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def keypoint_2d_loss(
    pred_keypoints: torch.Tensor,
    target_keypoints: torch.Tensor,
    openpose_weight: float,
    dataset_weight: float,
) -> torch.Tensor:
    """Confidence-weighted MSE between normalised 2D keypoints (B,49,2) and targets (B,49,3), mean over all."""
    _check("pred_keypoints", pred_keypoints, (None, NUM_KEYPOINTS, 2))
    _check("target_keypoints", target_keypoints, (pred_keypoints.shape[0], NUM_KEYPOINTS, 3))
    factor = torch.ones(NUM_KEYPOINTS, dtype=pred_keypoints.dtype, device=pred_keypoints.device)
    factor[:NUM_OPENPOSE] = openpose_weight
    factor[NUM_OPENPOSE:] = dataset_weight
    conf = target_keypoints[..., 2:]
    seen = torch.isfinite(conf) & (conf > 0)
    # Unseen keypoints may hold garbage (even NaN) coordinates.
    coords = _kept(seen & torch.isfinite(target_keypoints[..., :2]), target_keypoints[..., :2])
    weight = _kept(seen, conf) * factor[:, None]
    return (weight * (pred_keypoints - coords) ** 2).mean()


def keypoint_3d_loss(
    pred_joints: torch.Tensor, target_joints: torch.Tensor, has_3d: torch.Tensor
) -> torch.Tensor:
    """Confidence-weighted MSE of pelvis-centred 3D dataset joints (B,24,3) vs (B,24,4), over samples with 3D."""
    _check("pred_joints", pred_joints, (None, len(DATASET24_NAMES), 3))
    _check("target_joints", target_joints, (pred_joints.shape[0], len(DATASET24_NAMES), 4))
    _check("has_3d", has_3d, (pred_joints.shape[0],))
    sample = has_3d[:, None, None]
    conf = target_joints[..., 3:]
    # Samples without 3D typically hold zeros or NaN there.
    weight = _kept(sample & torch.isfinite(conf) & (conf > 0), conf)
    xyz = _kept(sample & torch.isfinite(target_joints[..., :3]), target_joints[..., :3])
    squared = (pelvis_centred(pred_joints, DATASET_HIP_INDICES) - pelvis_centred(xyz, DATASET_HIP_INDICES)) ** 2
    return _masked_mean(weight * squared, has_3d)


def smpl_losses(
    pred_rotmat: torch.Tensor,
    pred_betas: torch.Tensor,
    target_rotmat: torch.Tensor,
    target_betas: torch.Tensor,
    valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE of rotation matrices (B,24,3,3) and of betas (B,K) against targets, over valid samples only."""
    _check("pred_rotmat", pred_rotmat, (None, 24, 3, 3))
    batch = pred_rotmat.shape[0]
    _check("target_rotmat", target_rotmat, (batch, 24, 3, 3))
    _check("pred_betas", pred_betas, (batch, None))
    _check("target_betas", target_betas, tuple(pred_betas.shape))
    _check("valid", valid, (batch,))
    keep = valid[:, None, None, None]
    pose = keep * (pred_rotmat - _kept(keep, target_rotmat)) ** 2
    betas = valid[:, None] * (pred_betas - _kept(valid[:, None], target_betas)) ** 2
    return _masked_mean(pose, valid), _masked_mean(betas, valid)


def vertex_loss(pred_vertices: torch.Tensor, target_vertices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 between vertices (B,V,3) and target vertices, over valid samples only."""
    _check("pred_vertices", pred_vertices, (None, None, 3))
    _check("target_vertices", target_vertices, tuple(pred_vertices.shape))
    _check("valid", valid, (pred_vertices.shape[0],))
    keep = valid[:, None, None]
    return _masked_mean(keep * (pred_vertices - _kept(keep, target_vertices)).abs(), valid)


def camera_loss(pred_camera: torch.Tensor) -> torch.Tensor:
    """SPIN's camera prior: mean of (exp(-10 s))^2 over the batch, for cameras [s, tx, ty] (B,3)."""
    _check("pred_camera", pred_camera, (None, 3))
    return (torch.exp(-CAMERA_PRIOR_RATE * pred_camera[:, 0]) ** 2).mean()


def valid_fit_mask(fit_error: torch.Tensor, has_smpl: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which samples' fits supervise: ranking error below threshold (NaN never), or ground-truth SMPL."""
    return (fit_error < threshold) | has_smpl


def supervision_betas(fit_betas: torch.Tensor, has_smpl: torch.Tensor, max_abs_beta: float) -> torch.Tensor:
    """Betas targets: a fit with any |beta| > max_abs_beta pulls only towards the mean (zeros); ground truth is kept."""
    extreme = (fit_betas.abs() > max_abs_beta).any(dim=1) & ~has_smpl
    return torch.where(extreme[:, None], torch.zeros_like(fit_betas), fit_betas)


@dataclass(frozen=True)
class LossInputs:
    """What the loss needs from the network and the body model for one batch."""

    rotmat: torch.Tensor  # (B, 24, 3, 3)
    betas: torch.Tensor  # (B, K)
    camera: torch.Tensor  # (B, 3)
    keypoints_2d: torch.Tensor  # (B, 49, 2) projected, normalised to [-1, 1]
    keypoints_3d: torch.Tensor  # (B, 49, 3) the body model's keypoints (dataset joints are 25:)
    vertices: torch.Tensor | None = None  # (B, V, 3); needed only with shape_loss_weight > 0


@dataclass(frozen=True)
class LossTargets:
    """Labels of the batch and, unless fit supervision is off, the fits to supervise with."""

    keypoints_2d: torch.Tensor  # (B, 49, 3) normalised [u, v, conf]
    keypoints_3d: torch.Tensor  # (B, 24, 4) dataset joints [x, y, z, conf]
    has_3d: torch.Tensor  # (B,) bool
    fit_rotmat: torch.Tensor | None = None  # (B, 24, 3, 3) fit (or ground truth) pose in the batch's frame
    fit_betas: torch.Tensor | None = None  # (B, K)
    fit_error: torch.Tensor | None = None  # (B,) ranking error; anything for ground-truth samples
    has_smpl: torch.Tensor | None = None  # (B,) bool: the fit is ground truth
    fit_vertices: torch.Tensor | None = None  # (B, V, 3); needed only with shape_loss_weight > 0


class LossTerms(NamedTuple):
    """The total loss to backpropagate and each unweighted term, for logging."""

    total: torch.Tensor
    keypoints_2d: torch.Tensor
    keypoints_3d: torch.Tensor
    pose: torch.Tensor
    betas: torch.Tensor
    vertices: torch.Tensor
    camera: torch.Tensor
    valid_fits: torch.Tensor  # (B,) bool, the samples the fit terms used


def spin_loss(pred: LossInputs, target: LossTargets, weights: LossConfig, fitting: FittingConfig) -> LossTerms:
    """SPIN's weighted training loss; fit terms are zero when target carries no fits (`2d` mode)."""
    zero = pred.camera.sum() * 0.0
    batch = pred.camera.shape[0]
    kp2d = keypoint_2d_loss(pred.keypoints_2d, target.keypoints_2d,
                            weights.openpose_train_weight, weights.gt_train_weight)
    kp3d = keypoint_3d_loss(pred.keypoints_3d[:, NUM_OPENPOSE:], target.keypoints_3d, target.has_3d)
    cam = camera_loss(pred.camera)

    fits = (target.fit_rotmat, target.fit_betas, target.fit_error, target.has_smpl)
    if all(t is None for t in fits):
        valid = torch.zeros(batch, dtype=torch.bool, device=pred.camera.device)
        pose = betas = verts = zero
    elif any(t is None for t in fits):
        raise InputError("LossTargets: give all of fit_rotmat, fit_betas, fit_error and has_smpl, or none of them")
    else:
        valid = valid_fit_mask(target.fit_error, target.has_smpl, fitting.valid_error_threshold)
        betas_target = supervision_betas(target.fit_betas, target.has_smpl, fitting.max_abs_beta)
        pose, betas = smpl_losses(pred.rotmat, pred.betas, target.fit_rotmat, betas_target, valid)
        if weights.shape_loss_weight > 0:
            if pred.vertices is None or target.fit_vertices is None:
                raise InputError("shape_loss_weight > 0 needs predicted and fit vertices; pass them or set "
                                 "train.loss.shape_loss_weight to 0")
            verts = vertex_loss(pred.vertices, target.fit_vertices, valid)
        else:
            verts = zero

    total = weights.loss_scale * (
        weights.keypoint_loss_weight * kp2d
        + weights.keypoint_3d_loss_weight * kp3d
        + weights.pose_loss_weight * pose
        + weights.beta_loss_weight * betas
        + weights.shape_loss_weight * verts
        + weights.cam_loss_weight * cam
    )
    return LossTerms(total, kp2d, kp3d, pose, betas, verts, cam, valid)
