"""Shipped pretrained weights (spin_ray/model/pretrained.py): fp16 export/load round trip, identity checks,
start of a run through network.init_checkpoint, and a pretraining split disjoint from the benchmark's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import SYNTH_SPLITS, load_config
from spin_ray.data.synth import settings_hash
from spin_ray.data.synth_generator import chunk_seed_sequence
from spin_ray.errors import ModelError
from spin_ray.model.hmr import HMR
from spin_ray.model.pretrained import (
    half_state_dict,
    is_pretrained_file,
    load_pretrained,
    pretrained_identity,
    save_pretrained,
)
from spin_ray.train.checkpoint import initial_network

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def body():
    return BodyModel.from_config(load_config(ROOT / "configs/pretrain.yaml").body)


@pytest.fixture(scope="module")
def small_cfg():
    """configs/pretrain.yaml with the smallest backbone, so the round trip is fast."""
    cfg = load_config(ROOT / "configs/pretrain.yaml")
    return cfg.model_copy(update={"network": cfg.network.model_copy(update={"backbone": "mobilenet_v3_small"})})


def _trained_like(cfg) -> HMR:
    torch.manual_seed(0)
    model = HMR.from_config(cfg.network, cfg.body.num_betas)
    with torch.no_grad():  # move the head off its init, so a load that silently kept the init would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["w.pt", "w.pt.xz"])
def test_export_load_round_trip_in_fp16(tmp_path, small_cfg, body, name):
    model = _trained_like(small_cfg)
    identity = pretrained_identity(small_cfg, body.identity)
    path = save_pretrained(tmp_path / name, model.state_dict(), identity)
    assert is_pretrained_file(path)
    loaded = load_pretrained(path, identity)
    half = half_state_dict(model.state_dict())
    assert loaded.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert loaded[key].dtype == value.dtype  # float tensors come back in float32
        assert torch.equal(loaded[key], half[key].to(value.dtype))  # exactly the fp16 values


def test_run_starts_from_exported_weights_through_init_checkpoint(tmp_path, small_cfg, body):
    model = _trained_like(small_cfg).eval()
    path = save_pretrained(tmp_path / "w.pt", model.state_dict(), pretrained_identity(small_cfg, body.identity))
    cfg = small_cfg.model_copy(update={"network": small_cfg.network.model_copy(update={"init_checkpoint": path})})
    started = initial_network(cfg, body).eval()
    images = torch.randn(2, 3, cfg.data.img_res, cfg.data.img_res)
    with torch.no_grad():
        a, b = model(images), started(images)
    assert torch.allclose(a.rotmat, b.rotmat, atol=5e-2)
    assert torch.allclose(a.betas, b.betas, atol=5e-2)  # fp16 weights: close, not equal
    assert torch.allclose(a.camera, b.camera, atol=5e-2)


def test_mismatched_run_is_refused_with_each_difference(tmp_path, small_cfg, body):
    path = save_pretrained(tmp_path / "w.pt", _trained_like(small_cfg).state_dict(),
                           pretrained_identity(small_cfg, body.identity))
    other = small_cfg.model_copy(update={"data": small_cfg.data.model_copy(update={"img_res": 128}),
                                         "network": small_cfg.network.model_copy(update={"backbone": "resnet18",
                                                                                          "init_checkpoint": path})})
    with pytest.raises(ModelError, match=r"backbone: weights have 'mobilenet_v3_small', run has 'resnet18'; img_res: weights have 96, run has 128"):
        initial_network(other, body)
    with pytest.raises(ModelError, match="body_model"):
        load_pretrained(path, pretrained_identity(small_cfg, "another-body-model"))


def test_not_pretrained_weights_are_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": 1, "model": {}}, path)
    assert not is_pretrained_file(path)
    with pytest.raises(ModelError, match="format"):
        load_pretrained(path)
    with pytest.raises(ModelError, match="make pretrained"):
        load_pretrained(tmp_path / "missing.pt")


def test_pretraining_split_is_disjoint_from_the_benchmark(body):
    pretrain = load_config(ROOT / "configs/pretrain.yaml")
    local = load_config(ROOT / "configs/local.yaml")
    # Only a 3D split of its own: no 2D-only split (whose truth is withheld), no test split.
    assert pretrain.synth.sizes["synth-3d"] > 0
    assert pretrain.synth.sizes.get("synth-itw", 0) == 0 and pretrain.synth.sizes.get("synth-test", 0) == 0
    assert not pretrain.data.datasets and pretrain.train.heldout is None
    assert pretrain.synth.seed != local.synth.seed
    assert settings_hash(pretrain, body.identity) != settings_hash(local, body.identity)
    # Every chunk of the pretraining split has a seed that no chunk of the benchmark's splits has.
    def states(seed, split, chunks):
        return {tuple(chunk_seed_sequence(seed, split, i).generate_state(4)) for i in range(chunks)}
    chunk = pretrain.synth.chunk_size
    mine = states(pretrain.synth.seed, "synth-3d", -(-pretrain.synth.sizes["synth-3d"] // chunk))
    theirs = set().union(*(states(local.synth.seed, s, -(-max(local.synth.sizes.get(s, 0), 1) // chunk))
                           for s in SYNTH_SPLITS))
    assert mine and not mine & theirs
    assert pretrain.network.backbone == local.network.backbone and pretrain.data.img_res == local.data.img_res


def test_shipped_weights_fit_the_main_job_when_present(body):
    from spin_ray.model.pretrained import EMBEDDED_PRETRAINED, pretrained_facts
    if not EMBEDDED_PRETRAINED.is_file():
        pytest.skip("no shipped weights yet (make pretrained)")
    assert EMBEDDED_PRETRAINED.stat().st_size <= 25_000_000
    facts = pretrained_facts(EMBEDDED_PRETRAINED)
    local = load_config(ROOT / "configs/local.yaml")
    expected = pretrained_identity(local, body.identity)
    assert {k: facts[k] for k in expected} == expected
