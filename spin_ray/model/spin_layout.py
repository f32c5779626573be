"""SPIN's checkpoint layout for HMR: its key names and buffer shapes, mapped to and from spin-ray's.

SPIN (`models/hmr.py`) writes `{'model': state_dict, 'optimizer', 'epoch', 'batch_idx', 'batch_size',
'total_step_count'}`; its state dict is torchvision's ResNet-50 at the top level (`conv1`, `bn1`,
`layer1..4`, no `fc`), the head `fc1, fc2, decpose, decshape, deccam`, and the mean parameters as
buffers `init_pose (1, 144)`, `init_shape (1, 10)`, `init_cam (1, 3)`. spin-ray's HMR keeps the same
tensors under `backbone.*`, `dec_pose/dec_betas/dec_camera` and `init_pose/init_betas/init_camera`
without the leading 1. Only names and that leading dimension differ, so the mapping is pure.
"""

from __future__ import annotations

from typing import Any

import torch

# The one backbone, input size, head and IEF count SPIN's network has.
SPIN_BACKBONE = "resnet50"
SPIN_IMG_RES = 224
SPIN_NUM_BETAS = 10
SPIN_IEF_ITERATIONS = 3
# Top-level keys of SPIN's checkpoint besides 'model'.
SPIN_CHECKPOINT_KEYS = ("optimizer", "epoch", "batch_idx", "batch_size", "total_step_count")

# spin-ray name prefix -> SPIN name prefix, for the head (the backbone only loses "backbone.").
_HEAD = {"dec_pose.": "decpose.", "dec_betas.": "decshape.", "dec_camera.": "deccam.", "fc1.": "fc1.", "fc2.": "fc2."}
# spin-ray buffer -> SPIN buffer (SPIN's carry a leading batch dimension of 1).
_BUFFERS = {"init_pose": "init_pose", "init_betas": "init_shape", "init_camera": "init_cam"}
# Keys only SPIN's network has: with these in 'model', a checkpoint is SPIN's.
_SPIN_ONLY = ("decpose.weight", "decshape.weight", "deccam.weight", "init_shape", "init_cam")
_BACKBONE_PREFIX = "backbone."


def spin_key(key: str) -> str:
    """SPIN's name of a spin-ray HMR state-dict key."""
    if key in _BUFFERS:
        return _BUFFERS[key]
    if key.startswith(_BACKBONE_PREFIX):
        return key[len(_BACKBONE_PREFIX):]
    for ours, theirs in _HEAD.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def spin_ray_key(key: str) -> str:
    """spin-ray's name of a SPIN HMR state-dict key (the inverse of spin_key on the network's keys)."""
    for ours, theirs in _BUFFERS.items():
        if key == theirs:
            return ours
    for ours, theirs in _HEAD.items():
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return _BACKBONE_PREFIX + key


def is_spin_checkpoint(payload: Any) -> bool:
    """Whether a loaded file is SPIN's checkpoint: a dict with a 'model' state dict in SPIN's names."""
    if not isinstance(payload, dict) or "format" in payload or not isinstance(payload.get("model"), dict):
        return False
    return any(key in payload["model"] for key in _SPIN_ONLY)


def from_spin_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """SPIN's HMR state dict under spin-ray's names; the init buffers lose their leading 1 (others keep their shape)."""
    out = {}
    for key, value in state.items():
        ours = spin_ray_key(key)
        if ours in _BUFFERS and isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        out[ours] = value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
    return out


def to_spin_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A spin-ray HMR state dict under SPIN's names, init buffers as (1, N), every tensor a detached CPU copy."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu().clone()
        out[spin_key(key)] = value.unsqueeze(0) if key in _BUFFERS else value
    return out
