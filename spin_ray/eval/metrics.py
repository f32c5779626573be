"""Evaluation metrics as in SPIN: MPJPE, PA-MPJPE (reconstruction error), PVE, and 3DHP's PCK and AUC.

Inputs are in metres; every metric returns a (B,) tensor per sample (millimetres, or a share of
joints for PCK/AUC), so callers can average, take percentiles or find the worst samples.
PCK and AUC follow MPI-INF-3DHP's evaluation code (mpii_compute_3d_pck.m): a joint is correct when
its error is strictly below the threshold, and AUC is the mean PCK over thresholds 0, 5, ..., 150 mm
(so a perfect prediction scores 30/31, the threshold 0 counting nobody).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spin_ray.errors import InputError
from spin_ray.geometry import similarity_procrustes

MM_PER_M = 1000.0
# Pelvis of each evaluation joint set: H36M-17 has a pelvis joint; LSP-14 has only hips.
H36M17_PELVIS: tuple[int, ...] = (0,)
LSP14_PELVIS: tuple[int, ...] = (2, 3)  # right hip, left hip
PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM: tuple[float, ...] = tuple(float(t) for t in range(0, 151, 5))  # 31 thresholds


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise InputError unless both are (B, N, 3) of the same shape."""
    if pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape != target.shape:
        raise InputError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                         "(B, N, 3) with the same B and N")


def pelvis_centred(points: torch.Tensor, pelvis: Sequence[int]) -> torch.Tensor:
    """Points (B,N,3) minus the mean of the joints listed in pelvis (e.g. (0,) or the two hips)."""
    if not pelvis or max(pelvis) >= points.shape[1] or min(pelvis) < -points.shape[1]:
        raise InputError(f"pelvis joints {tuple(pelvis)} do not index {points.shape[1]} joints")
    return points - points[:, list(pelvis)].mean(dim=1, keepdim=True)


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error (B,) in mm; centre both sets first (no alignment is done here)."""
    _check_pair(pred, target)
    return (pred - target).norm(dim=-1).mean(dim=-1) * MM_PER_M


def procrustes_aligned(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B,N,3) moved by the per-sample similarity (rotation, scale, translation) that best fits target."""
    _check_pair(pred, target)
    # SVD in float64: the alignment of nearly degenerate joint sets is sensitive in float32.
    return similarity_procrustes(pred.double(), target.double()).to(pred.dtype)


def pa_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE (B,) in mm after the per-sample similarity (rotation, scale, translation) aligning pred to target."""
    _check_pair(pred, target)
    aligned = similarity_procrustes(pred.double(), target.double())
    return mpjpe(aligned, target.double()).to(pred.dtype)


def joint_errors_mm(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-joint Euclidean errors (B,N) in mm."""
    _check_pair(pred, target)
    return (pred - target).norm(dim=-1) * MM_PER_M


def pck(pred: torch.Tensor, target: torch.Tensor, threshold_mm: float = PCK_THRESHOLD_MM) -> torch.Tensor:
    """Share of joints (B,) whose error is below threshold_mm; centre or align both sets first."""
    return (joint_errors_mm(pred, target) < threshold_mm).to(pred.dtype).mean(dim=-1)


def auc(pred: torch.Tensor, target: torch.Tensor,
        thresholds_mm: Sequence[float] = AUC_THRESHOLDS_MM) -> torch.Tensor:
    """Area under the PCK curve (B,): the mean PCK over thresholds_mm (3DHP's 0, 5, ..., 150 mm)."""
    if len(thresholds_mm) == 0:
        raise InputError("auc needs at least one threshold")
    errors = joint_errors_mm(pred, target)
    limits = torch.as_tensor(thresholds_mm, dtype=errors.dtype, device=errors.device)
    return (errors[..., None] < limits).to(pred.dtype).mean(dim=(-2, -1))


def pve(pred_vertices: torch.Tensor, target_vertices: torch.Tensor) -> torch.Tensor:
    """Per-vertex error (B,) in mm: mean Euclidean distance between corresponding vertices."""
    _check_pair(pred_vertices, target_vertices)
    return (pred_vertices - target_vertices).norm(dim=-1).mean(dim=-1) * MM_PER_M
