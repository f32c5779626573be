"""Evaluation metrics as in SPIN: MPJPE, PA-MPJPE (reconstruction error) and PVE, per sample, in mm.

Inputs are in metres; every metric returns a (B,) tensor in millimetres, so callers can average,
take percentiles or find the worst samples.
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


def pa_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE (B,) in mm after the per-sample similarity (rotation, scale, translation) aligning pred to target."""
    _check_pair(pred, target)
    # SVD in float64: the alignment of nearly degenerate joint sets is sensitive in float32.
    aligned = similarity_procrustes(pred.double(), target.double())
    return mpjpe(aligned, target.double()).to(pred.dtype)


def pve(pred_vertices: torch.Tensor, target_vertices: torch.Tensor) -> torch.Tensor:
    """Per-vertex error (B,) in mm: mean Euclidean distance between corresponding vertices."""
    _check_pair(pred_vertices, target_vertices)
    return (pred_vertices - target_vertices).norm(dim=-1).mean(dim=-1) * MM_PER_M
