"""SPIN's checkpoints load into spin-ray's HMR, spin-ray's go back in SPIN's layout, and bad files are refused.

The SPIN checkpoints here are built in the test: a random spin-ray resnet50 HMR renamed to SPIN's key
names by a table of this file (not by spin_ray.model.spin_layout), and its output is compared with a
forward written below from SPIN's formula (ResNet-50 → concat with pose/shape/cam → fc1 → drop →
fc2 → drop → residual decoders, 3 iterations → 6D by Gram-Schmidt on a 3×2 view).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spin_ray.body.body_model import BodyModel
from spin_ray.cli import main
from spin_ray.config import RunConfig
from spin_ray.errors import ModelError
from spin_ray.model.hmr import HMR
from spin_ray.model.mean_params import MeanParams
from spin_ray.train.checkpoint import (
    checkpoint_network,
    initial_network,
    load_checkpoint,
    load_regressor,
    save_checkpoint,
)

# spin-ray name prefix -> SPIN's, written out here independently of the product's table.
RENAME = [("dec_pose.", "decpose."), ("dec_betas.", "decshape."), ("dec_camera.", "deccam."),
          ("fc1.", "fc1."), ("fc2.", "fc2.")]
BUFFERS = {"init_pose": "init_pose", "init_betas": "init_shape", "init_camera": "init_cam"}
BLOCKS = (3, 4, 6, 3)  # ResNet-50's bottlenecks per stage


def _to_spin_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in BUFFERS:
            out[BUFFERS[key]] = value.clone().unsqueeze(0)
        elif key.startswith("backbone."):
            out[key[len("backbone."):]] = value.clone()
        else:
            prefix = next(p for p in RENAME if key.startswith(p[0]))
            out[prefix[1] + key[len(prefix[0]):]] = value.clone()
    return out


@pytest.fixture(scope="module")
def spin_state() -> dict[str, torch.Tensor]:
    """A random resnet50 HMR in SPIN's names, with BatchNorm statistics and decoders that matter."""
    torch.manual_seed(0)
    mean = MeanParams(torch.randn(144) * 0.5, torch.randn(10) * 0.3, torch.tensor([0.9, 0.05, -0.02]))
    model = HMR(mean, backbone="resnet50")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.0)
                module.bias.normal_(0, 0.1)
        for layer in (model.dec_pose, model.dec_betas, model.dec_camera):
            layer.weight.mul_(20.0)
            layer.bias.normal_(0, 0.1)
    state = _to_spin_names(model.state_dict())
    assert "fc.weight" not in state and state["init_pose"].shape == (1, 144)
    assert state["init_shape"].shape == (1, 10) and state["init_cam"].shape == (1, 3)
    return state


def _spin_file(path, state) -> None:
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0]}]},
                "epoch": 3, "batch_idx": 10, "batch_size": 64, "total_step_count": 1234}, path)


def _bn(x, s, p):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        training=False, eps=1e-5)


def _spin_forward(s: dict[str, torch.Tensor], x: torch.Tensor, n_iter: int = 3):
    """SPIN's HMR forward from its formula, on a state dict in SPIN's names."""
    x = F.relu(_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, blocks in enumerate(BLOCKS, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if (b == 0 and stage > 1) else 1
            out = F.relu(_bn(F.conv2d(x, s[p + ".conv1.weight"]), s, p + ".bn1"))
            out = F.relu(_bn(F.conv2d(out, s[p + ".conv2.weight"], stride=stride, padding=1), s, p + ".bn2"))
            out = _bn(F.conv2d(out, s[p + ".conv3.weight"]), s, p + ".bn3")
            skip = x
            if p + ".downsample.0.weight" in s:
                skip = _bn(F.conv2d(x, s[p + ".downsample.0.weight"], stride=stride), s, p + ".downsample.1")
            x = F.relu(out + skip)
    features = F.avg_pool2d(x, 7, stride=1).flatten(1)  # SPIN's AvgPool2d(7): one cell at 224 px
    n = features.shape[0]
    pose, shape, cam = (s[k].expand(n, -1) for k in ("init_pose", "init_shape", "init_cam"))
    for _ in range(n_iter):
        h = torch.cat([features, pose, shape, cam], 1)
        h = F.linear(F.linear(h, s["fc1.weight"], s["fc1.bias"]), s["fc2.weight"], s["fc2.bias"])  # dropout: eval
        pose = F.linear(h, s["decpose.weight"], s["decpose.bias"]) + pose
        shape = F.linear(h, s["decshape.weight"], s["decshape.bias"]) + shape
        cam = F.linear(h, s["deccam.weight"], s["deccam.bias"]) + cam
    m = pose.reshape(-1, 3, 2)
    a1, a2 = m[:, :, 0], m[:, :, 1]
    b1 = a1 / a1.norm(dim=1, keepdim=True)
    u = a2 - (b1 * a2).sum(1, keepdim=True) * b1
    b2 = u / u.norm(dim=1, keepdim=True)
    b3 = torch.stack([b1[:, 1] * b2[:, 2] - b1[:, 2] * b2[:, 1], b1[:, 2] * b2[:, 0] - b1[:, 0] * b2[:, 2],
                      b1[:, 0] * b2[:, 1] - b1[:, 1] * b2[:, 0]], 1)
    rotmat = torch.stack([b1, b2, b3], dim=-1).reshape(n, 24, 3, 3)
    return rotmat, shape, cam


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel.from_config(RunConfig().body)


def _images(n=2):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_spin_checkpoint_as_init_checkpoint_gives_spins_outputs(tmp_path, spin_state, body):
    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    cfg = RunConfig.model_validate({"data": {"img_res": 224},
                                    "network": {"backbone": "resnet50", "init_checkpoint": str(path)}})
    model = initial_network(cfg, body).eval()
    images = _images()
    with torch.no_grad():
        out = model(images)
        rotmat, shape, cam = _spin_forward(spin_state, images)
    assert torch.allclose(out.rotmat, rotmat, atol=1e-5)
    assert torch.allclose(out.betas, shape, atol=1e-5)
    assert torch.allclose(out.camera, cam, atol=1e-5)
    # the decoders moved the outputs away from the mean: a lost residual term would show
    assert (cam - spin_state["init_cam"]).abs().max() > 1e-2


def test_spin_checkpoint_loads_for_eval_and_demo(tmp_path, spin_state):
    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    model, cfg, _ = load_regressor(path)  # demo --checkpoint and dataset fits load through this
    assert (cfg.network.backbone, cfg.data.img_res) == ("resnet50", 224)
    assert torch.equal(model.init_betas, spin_state["init_shape"][0])
    assert load_checkpoint(path)["step"] == 1234
    from spin_ray.demo.run import load_model

    model, cfg, _, trained = load_model(path)
    assert trained and cfg.network.backbone == "resnet50" and not model.training


def test_eval_of_a_spin_checkpoint_under_a_resnet18_config_is_one_line(tmp_path, spin_state, capsys):
    from pathlib import Path

    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    local = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"
    out = tmp_path / "eval.json"
    code = main(["eval", str(path), "--config", str(local), "--dataset", str(tmp_path / "none.npz"),
                 "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "SPIN's checkpoint" in err and "backbone: checkpoint has 'resnet50', config has 'resnet18'" in err
    assert not out.exists()


def test_export_to_spin_layout_round_trips(tmp_path, spin_state, body):
    src = tmp_path / "model_checkpoint.pt"
    _spin_file(src, spin_state)
    cfg = RunConfig.model_validate({"data": {"img_res": 224}, "network": {"backbone": "resnet50"}})
    model = checkpoint_network(load_checkpoint(src), cfg, body, "x", "y", "z").eval()
    ours = tmp_path / "run" / "last.pt"
    save_checkpoint(ours, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "step": 77,
                           "identity": {"backbone": "resnet50", "img_res": 224, "num_betas": 10,
                                        "ief_iterations": 3, "body_model": body.identity}})
    out = tmp_path / "back" / "model_checkpoint.pt"
    assert main(["export-checkpoint", str(ours), "--format", "spin", "--out", str(out)]) == 0
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert set(exported) >= {"model", "epoch", "batch_idx", "batch_size", "total_step_count"}
    assert exported["total_step_count"] == 77
    assert {k: tuple(v.shape) for k, v in exported["model"].items()} == \
        {k: tuple(v.shape) for k, v in spin_state.items()}
    for key, value in spin_state.items():
        assert torch.equal(exported["model"][key], value), key
    again = initial_network(cfg.model_copy(update={"network": cfg.network.model_copy(
        update={"init_checkpoint": out})}), body).eval()
    images = _images(1)
    with torch.no_grad():
        a, b = model(images), again(images)
    assert torch.equal(a.rotmat, b.rotmat) and torch.equal(a.betas, b.betas) and torch.equal(a.camera, b.camera)


def test_export_refuses_other_backbones(tmp_path, capsys):
    cfg = RunConfig()  # resnet18
    model = HMR.from_config(cfg.network)
    src = tmp_path / "last.pt"
    save_checkpoint(src, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "step": 1})
    out = tmp_path / "model_checkpoint.pt"
    assert main(["export-checkpoint", str(src), "--format", "spin", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "network.backbone 'resnet18'" in err and "resnet50" in err
    assert not out.exists()


def test_spin_checkpoint_with_other_shapes_names_first_mismatching_key(tmp_path, spin_state, body):
    state = dict(spin_state)
    state["decpose.weight"] = torch.zeros(72, 1024)  # an axis-angle head
    state["decpose.bias"] = torch.zeros(72)
    path = tmp_path / "aa.pt"
    _spin_file(path, state)
    cfg = RunConfig.model_validate({"data": {"img_res": 224}, "network": {"backbone": "resnet50"}})
    with pytest.raises(ModelError, match=r"decpose\.weight: checkpoint \(72, 1024\), network \(144, 1024\)"):
        checkpoint_network(load_checkpoint(path), cfg, body, str(path), "this run", "fix")


def test_spin_checkpoint_refused_for_resnet18_run(tmp_path, spin_state, body):
    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    cfg = RunConfig.model_validate({"data": {"img_res": 224},
                                    "network": {"backbone": "resnet18", "init_checkpoint": str(path)}})
    with pytest.raises(ModelError, match=r"SPIN's checkpoint.*backbone: checkpoint has 'resnet50', config has "
                                         r"'resnet18'") as err:
        initial_network(cfg, body)
    assert "\n" not in str(err.value)


def test_spin_checkpoint_cannot_be_resumed(tmp_path, spin_state, body):
    from spin_ray.train.trainer import Trainer

    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    cfg = RunConfig.model_validate({"data": {"img_res": 224}, "network": {"backbone": "resnet50"}})
    with pytest.raises(ModelError, match="is a SPIN checkpoint.*no spin-ray training state.*init_checkpoint"):
        Trainer.resume(path, cfg, body=body)


def test_spin_checkpoint_mean_params_disagreeing_with_config_are_refused(tmp_path, spin_state, body):
    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    same, other = tmp_path / "same.npz", tmp_path / "other.npz"
    pose, shape, cam = (spin_state[k][0].double().numpy() for k in ("init_pose", "init_shape", "init_cam"))
    np.savez(same, pose=pose, shape=shape, cam=cam)
    np.savez(other, pose=pose, shape=shape + 0.1, cam=cam)
    base = {"data": {"img_res": 224}, "network": {"backbone": "resnet50", "init_checkpoint": str(path)}}
    base["network"]["mean_params_path"] = str(same)
    initial_network(RunConfig.model_validate(base), body)  # SPIN's own file agrees: loads
    base["network"]["mean_params_path"] = str(other)
    with pytest.raises(ModelError, match=r"'shape' differs by up to 0\.1\); the checkpoint's would win") as err:
        initial_network(RunConfig.model_validate(base), body)
    assert "\n" not in str(err.value)


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("kind", ["truncated", "not_a_checkpoint", "runs_code"])
def test_bad_checkpoint_files_are_refused_in_one_line(tmp_path, spin_state, kind, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model_checkpoint.pt"
    if kind == "truncated":
        _spin_file(path, spin_state)
        path.write_bytes(path.read_bytes()[: 4096])
    elif kind == "not_a_checkpoint":
        path.write_text("epoch,loss\n1,0.5\n")
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": {"decpose.weight": _RunsCode()}}, f)
    out = tmp_path / "exported.pt"
    assert main(["export-checkpoint", str(path), "--format", "spin", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable spin-ray checkpoint" in err
    assert not out.exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("runner", ["run_training", "launch"])
def test_resuming_a_spin_checkpoint_is_refused_before_any_work(tmp_path, spin_state, runner):
    # The refusal once came after the data were built and Redis and Ray had started (about a minute).
    from spin_ray.cli.launch import launch
    from spin_ray.train.run import run_training

    path = tmp_path / "model_checkpoint.pt"
    _spin_file(path, spin_state)
    cfg = RunConfig.model_validate({"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
                                    "data": {"img_res": 224}, "network": {"backbone": "resnet50"},
                                    "train": {"mode": "async" if runner == "launch" else "2d"}})
    run = launch if runner == "launch" else lambda c, r: run_training(c, resume=r, progress=False)
    with pytest.raises(ModelError, match="is a SPIN checkpoint.*no spin-ray training state"):
        run(cfg, path)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
