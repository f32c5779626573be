"""BatchNorm that normalises with its running statistics: a step independent of how its batch is split."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FrozenBatchNorm2d(torch.nn.Module):
    """BatchNorm2d in inference form whatever the train/eval mode; the affine weight and bias still train.

    Parameter and buffer names are BatchNorm2d's, so state dicts load either way.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: torch.nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy sharing bn's statistics and (if affine) its parameter tensors."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight, frozen.bias = bn.weight, bn.bias
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x (B, C, H, W) with the running statistics."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """module with every BatchNorm2d replaced by a FrozenBatchNorm2d (in place; returns module, or the copy if it is one)."""
    if isinstance(module, torch.nn.BatchNorm2d):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        replaced = freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
