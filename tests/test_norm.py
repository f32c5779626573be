"""Frozen BatchNorm: running statistics in train mode, the affine parameters still train."""

import torch

from spin_ray.config import NetworkConfig
from spin_ray.model.hmr import HMR
from spin_ray.model.norm import FrozenBatchNorm2d, freeze_batchnorm


def test_frozen_batchnorm_is_eval_batchnorm_in_train_mode():
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    x = torch.randn(3, 4, 5, 5)
    frozen = freeze_batchnorm(torch.nn.Sequential(bn))[0]
    assert isinstance(frozen, FrozenBatchNorm2d)
    frozen.train()
    expected = bn.eval()(x)
    out = frozen(x)
    assert torch.allclose(out, expected)
    # One sample's output does not depend on the rest of its batch.
    assert torch.allclose(frozen(x[:1]), out[:1])
    out.sum().backward()
    assert frozen.weight.grad is not None and bn.weight.grad is not None  # shared parameter


def test_hmr_from_config_freezes_and_keeps_state_dict_names():
    plain = HMR.from_config(NetworkConfig())
    frozen = HMR.from_config(NetworkConfig(freeze_batchnorm=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert set(plain.state_dict()) == set(frozen.state_dict())
    frozen.load_state_dict(plain.state_dict())
