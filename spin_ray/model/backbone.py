"""Image backbones from torchvision, built with random weights and optionally loaded from a local file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from spin_ray.errors import ModelError

# name -> (constructor, width of the pooled feature vector, attribute holding the classifier head)
_BACKBONES: dict[str, tuple[Callable[..., torch.nn.Module], int, str]] = {
    "resnet18": (torchvision.models.resnet18, 512, "fc"),
    "resnet34": (torchvision.models.resnet34, 512, "fc"),
    "resnet50": (torchvision.models.resnet50, 2048, "fc"),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, 576, "classifier"),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_BACKBONES)


def _load_state_dict(model: torch.nn.Module, path: Path, name: str, head: str) -> None:
    """Load an ImageNet state dict into the full torchvision model; the classifier head may be absent."""
    if not path.is_file():
        raise ModelError(f"pretrained backbone weights {path} do not exist; fix network.pretrained_path "
                         "or set it to null for a random init")
    try:
        # weights_only: a weights file must never run code when it is read.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ModelError(f"{path}: not a readable torch state dict ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors (torch.save(model.state_dict())), "
                         f"got {type(state).__name__}")
    expected = model.state_dict()
    wrong_shape = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items() if k in expected and v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state and not k.startswith(head + ".")]
    unexpected = [k for k in state if k not in expected]
    if wrong_shape or missing or unexpected:
        details = "; ".join(filter(None, (
            f"shape mismatch: {', '.join(wrong_shape[:3])}" if wrong_shape else "",
            f"missing: {', '.join(missing[:3])}" if missing else "",
            f"unexpected: {', '.join(unexpected[:3])}" if unexpected else "",
        )))
        raise ModelError(f"{path} does not match torchvision's {name} ({details}); "
                         f"give weights saved from torchvision.models.{name}")
    model.load_state_dict(state, strict=False)


def build_backbone(name: str, pretrained_path: Path | None = None) -> tuple[torch.nn.Module, int]:
    """A backbone mapping images (B,3,H,W) to globally average-pooled features (B,C), and C."""
    if name not in _BACKBONES:
        raise ModelError(f"unknown backbone '{name}'; choose one of {list(BACKBONE_NAMES)}")
    constructor, width, head = _BACKBONES[name]
    # weights=None always: torchvision would otherwise download, and machines may be offline.
    model = constructor(weights=None)
    if pretrained_path is not None:
        _load_state_dict(model, Path(pretrained_path), name, head)
    # The models already end in adaptive average pooling + flatten, so any square input size works.
    setattr(model, head, torch.nn.Identity())
    return model, width
