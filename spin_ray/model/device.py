"""The torch device a config names, checked where it is used: in the process that puts tensors on it.

A cluster job's config is read on a driver or head that may have no GPU while its workers do, so
the config only checks the spelling (config.DEVICE_PATTERN); whether the device exists is asked
here, by the trainer, the fitters and `fit --local`, in their own process.
"""

from __future__ import annotations

import os

import torch

from spin_ray.errors import ConfigError


def resolve_device(device: str, key: str = "device") -> torch.device:
    """torch.device(device), or ConfigError naming the config key when this process cannot use it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}: {device!r} is not a device spin-ray runs on: use cpu, cuda or cuda:N") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ConfigError(f"{key}: {device!r} is not a device spin-ray runs on: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: {device}, but no CUDA device is visible to this process ({_why_no_cuda()}): "
                          f"set {key}: cpu, or run where a GPU is")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(f"{key}: {device}, but this process sees {count} CUDA device{'s' if count != 1 else ''} "
                          f"(cuda:0 to cuda:{count - 1})")
    return resolved


def _why_no_cuda() -> str:
    """The likeliest reason torch sees no GPU, for the message."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r}"
    return "no NVIDIA GPU or driver found"
