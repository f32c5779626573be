"""Shipped regressor weights: a half-precision state dict with the facts that say which network it fits.

The file is what SPIN ships as its pretrained model, for the embedded world: `make pretrained` trains
HMR on a synthetic split of its own (configs/pretrain.yaml) and exports the weights here. A run starts
from it with `network.init_checkpoint: <the file>` (train/checkpoint.initial_network reads both these
files and full training checkpoints). The weights are only meaningful for the backbone, input size,
head and body model they were trained with, so each is stored beside them and checked on load.
A name ending in `.xz` is LZMA-compressed (fp16 weights shrink by a few percent, which keeps
resnet18 under the 25 MB the package may carry).
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path
from typing import Any

import torch

from spin_ray.config import RunConfig
from spin_ray.errors import ModelError

PRETRAINED_FORMAT = "spin-ray-pretrained/1"
ASSETS = Path(__file__).resolve().parent / "assets"
# The weights `make pretrained` ships (configs/pretrain.yaml): resnet18 @ 96 px on the embedded open body model.
EMBEDDED_PRETRAINED = ASSETS / "pretrained_resnet18_96.pt.xz"
# What must equal the run's for the weights to mean anything there.
IDENTITY_KEYS = ("backbone", "img_res", "num_betas", "ief_iterations", "body_model")


def pretrained_identity(cfg: RunConfig, body_identity: str) -> dict[str, Any]:
    """The facts a run config gives that the weights must have been trained under."""
    return {"backbone": cfg.network.backbone, "img_res": cfg.data.img_res, "num_betas": cfg.body.num_betas,
            "ief_iterations": cfg.network.ief_iterations, "body_model": body_identity}


def half_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in float16 (integer buffers such as BatchNorm's step counts unchanged)."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in state.items()}


def save_pretrained(path: str | Path, state: dict[str, torch.Tensor], identity: dict[str, Any]) -> Path:
    """Write the model's weights in float16 with their identity; compressed when the name ends in .xz."""
    missing = [k for k in IDENTITY_KEYS if k not in identity]
    if missing:
        raise ModelError(f"pretrained weights need their identity {list(IDENTITY_KEYS)}; missing {missing}")
    buffer = io.BytesIO()
    torch.save({"format": PRETRAINED_FORMAT, **{k: identity[k] for k in IDENTITY_KEYS},
                "state_dict": half_state_dict(state)}, buffer)
    data = buffer.getvalue()
    path = Path(path)
    if path.suffix == ".xz":
        data = lzma.compress(data)  # preset 6: as small as 9e on fp16 weights (~90 %), at half the time
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _read_payload(path: Path) -> Any:
    data = path.read_bytes()
    if data[:6] == b"\xfd7zXZ\x00":
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as err:
            raise ModelError(f"{path}: a truncated or corrupt .xz file ({err}); fetch or export it again") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ModelError(f"{path}: not readable as weights ({type(err).__name__}: {err})") from None


def is_pretrained_file(path: str | Path) -> bool:
    """Whether path holds exported pretrained weights (rather than a full training checkpoint)."""
    path = Path(path)
    if path.suffix == ".xz":
        return True
    if not path.is_file():
        return False
    payload = _read_payload(path)
    return isinstance(payload, dict) and payload.get("format") == PRETRAINED_FORMAT


def load_pretrained(path: str | Path, expected: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The float32 state dict of exported weights; ModelError naming each mismatch when `expected`
    (pretrained_identity of the run) differs from what they were trained with."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights {path} do not exist (make them with `make pretrained`)")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != PRETRAINED_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelError(f"{path}: format {found!r}, expected {PRETRAINED_FORMAT!r} (weights written by "
                         "tools/export_pretrained.py)")
    if expected is not None:
        diffs = [f"{k}: weights have {payload.get(k)!r}, run has {expected[k]!r}"
                 for k in IDENTITY_KEYS if k in expected and payload.get(k) != expected[k]]
        if diffs:
            raise ModelError(f"pretrained weights {path} do not fit this run (" + "; ".join(diffs) + "); use a "
                             "config with the same network.backbone, data.img_res, body model and head as "
                             "configs/pretrain.yaml, or set network.init_checkpoint to null")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}


def pretrained_facts(path: str | Path) -> dict[str, Any]:
    """The identity stored with exported weights (backbone, img_res, ...), without the weights."""
    payload = _read_payload(Path(path))
    return {k: payload.get(k) for k in ("format", *IDENTITY_KEYS)}
