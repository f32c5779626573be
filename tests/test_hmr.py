"""HMR regressor and backbones: shapes, mean-parameter start, gradients and local pretrained weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from spin_ray.config import NetworkConfig
from spin_ray.errors import InputError, ModelError
from spin_ray.geometry import rot6d_to_matrix
from spin_ray.model.backbone import build_backbone
from spin_ray.model.hmr import HMR
from spin_ray.model.mean_params import open_mean_params

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mean_params():
    return open_mean_params()


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_output_shapes_at_64_px(mean_params, backbone):
    net = HMR(mean_params, backbone=backbone).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    assert out.rotmat.shape == (3, 24, 3, 3)
    assert out.pose_6d.shape == (3, 144)
    assert out.betas.shape == (3, 10)
    assert out.camera.shape == (3, 3)
    # The matrices are proper rotations built from the 6D output.
    eye = torch.eye(3).expand(3, 24, 3, 3)
    assert torch.allclose(out.rotmat @ out.rotmat.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(out.rotmat, rot6d_to_matrix(out.pose_6d.view(3, 24, 6)))


def test_other_input_sizes_work(mean_params):
    net = HMR(mean_params, backbone="resnet18", ief_iterations=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 96, 96)).camera.shape == (1, 3)


def test_first_output_is_near_the_mean(mean_params):
    torch.manual_seed(0)
    net = HMR(mean_params, backbone="resnet18").eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = net(images)
        deviation = (out.pose_6d - mean_params.pose_6d).abs().mean()
        assert deviation < 0.05
        assert (out.camera - mean_params.camera).abs().max() < 0.3
        assert out.betas.abs().max() < 0.2  # betas are in standard deviations of shape
        # With PyTorch's default init on the output layers the start is far from the mean: the
        # small-gain init is what keeps it close.
        for layer in (net.dec_pose, net.dec_betas, net.dec_camera):
            layer.reset_parameters()
        assert (net(images).pose_6d - mean_params.pose_6d).abs().mean() > 5 * deviation


def test_gradients_reach_the_backbone(mean_params):
    net = HMR(mean_params, backbone="resnet18").train()
    out = net(torch.randn(2, 3, 64, 64))
    loss = (out.rotmat ** 2).sum() + out.betas.pow(2).sum() + out.camera.pow(2).sum()
    loss.backward()
    grad = net.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_dropout_only_in_training(mean_params):
    net = HMR(mean_params, backbone="mobilenet_v3_small", dropout=0.5)
    images = torch.randn(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(images).pose_6d, net(images).pose_6d)


def test_bad_images_are_refused(mean_params):
    net = HMR(mean_params, backbone="mobilenet_v3_small")
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(2, 64, 64))


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone, width = build_backbone("resnet18", path)
    assert width == 512
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    # A backbone-only file (no classifier head) loads too.
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, path)
    backbone, _ = build_backbone("resnet18", path)
    assert torch.equal(backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_wrong_pretrained_file_gives_a_clear_error(tmp_path):
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(ModelError, match=r"does not match torchvision's resnet18.*unexpected: layer1\.2"):
        build_backbone("resnet18", other)
    wide = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wide)
    with pytest.raises(ModelError, match=r"shape mismatch: layer1\.0\.conv1\.weight"):
        build_backbone("resnet18", wide)
    with pytest.raises(ModelError, match="do not exist.*network.pretrained_path"):
        build_backbone("resnet18", tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a readable torch state dict"):
        build_backbone("resnet18", junk)
    with pytest.raises(ModelError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")


def test_from_config_uses_the_configured_parts(tmp_path):
    cfg = NetworkConfig(backbone="mobilenet_v3_small", ief_iterations=2, dropout=0.1)
    net = HMR.from_config(cfg)
    assert net.ief_iterations == 2 and net.drop1.p == 0.1
    assert isinstance(net.backbone, torchvision.models.MobileNetV3)
    with pytest.raises(ModelError, match="mean parameter file .* does not exist"):
        HMR.from_config(NetworkConfig(mean_params_path=tmp_path / "nope.npz"))



def test_init_checkpoint_starts_a_new_run_from_saved_weights_and_refuses_a_misfit(tmp_path):
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import RunConfig
    from spin_ray.train.checkpoint import initial_network, save_checkpoint

    body = BodyModel.embedded()
    cfg = RunConfig.model_validate({"network": {"backbone": "mobilenet_v3_small"}})
    trained = HMR.from_config(cfg.network)
    with torch.no_grad():
        trained.dec_pose.bias.add_(0.5)  # weights no fresh network has
    path = save_checkpoint(tmp_path / "pre.pt", {"model": trained.state_dict(),
                                                 "identity": {"body_model": body.identity}})
    started = initial_network(cfg.model_copy(update={"network": cfg.network.model_copy(
        update={"init_checkpoint": path})}), body)
    for name, value in trained.state_dict().items():
        assert torch.equal(value, started.state_dict()[name]), name
    assert not torch.equal(initial_network(cfg, body).dec_pose.bias, trained.dec_pose.bias)
    # HMR.from_config alone never reads it (a resumed or evaluated checkpoint brings its own weights).
    with_missing = cfg.network.model_copy(update={"init_checkpoint": tmp_path / "missing.pt"})
    HMR.from_config(with_missing)

    def start(network: dict, identity: str = body.identity, file: str = "pre.pt"):
        save_checkpoint(tmp_path / "other.pt", {"model": trained.state_dict(), "identity": {"body_model": identity}})
        run = RunConfig.model_validate({"network": {**network, "init_checkpoint": str(tmp_path / file)}})
        return initial_network(run, body)

    with pytest.raises(ModelError, match="does not fit this run's network"):
        start({"backbone": "resnet18"})
    with pytest.raises(ModelError, match="does not exist"):
        start({"backbone": "mobilenet_v3_small"}, file="missing.pt")
    with pytest.raises(ModelError, match="trained with body model 0123"):
        start({"backbone": "mobilenet_v3_small"}, identity="0123", file="other.pt")


def test_a_checkpoint_for_another_network_is_one_line_wherever_it_is_loaded(tmp_path):
    """Issue 26 item 9: one check (train/checkpoint.checkpoint_network) for init_checkpoint, load_regressor
    (demo --checkpoint, dataset fits) and eval; never torch's list of every state-dict key."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import RunConfig
    from spin_ray.train.checkpoint import initial_network, load_regressor, run_identity, save_checkpoint

    body = BodyModel.embedded()
    cfg = RunConfig.model_validate({"network": {"backbone": "mobilenet_v3_small"}, "data": {"img_res": 64}})
    weights = HMR.from_config(cfg.network).state_dict()
    resnet = RunConfig.model_validate({"network": {"backbone": "resnet18"}, "data": {"img_res": 64}})
    # With its identity (as every run writes it): the differing facts are named.
    full = save_checkpoint(tmp_path / "full.pt", {"model": weights, "identity": run_identity(cfg, body.identity),
                                                  "config": cfg.model_dump(mode="json")})
    for run, named in ((resnet, "backbone: checkpoint has 'mobilenet_v3_small', config has 'resnet18'"),
                       (cfg.model_copy(update={"data": cfg.data.model_copy(update={"img_res": 96})}),
                        "img_res: checkpoint has 64, config has 96")):
        start = run.model_copy(update={"network": run.network.model_copy(update={"init_checkpoint": full})})
        with pytest.raises(ModelError) as caught:
            initial_network(start, body)
        assert str(caught.value).startswith(f"network.init_checkpoint {full} was trained with another network than "
                                            f"this run gives ({named}): ")
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    # Without it (an old or hand-made file): a count of what does not fit, with one example of each.
    bare = save_checkpoint(tmp_path / "bare.pt", {"model": weights, "identity": {"body_model": body.identity},
                                                  "config": resnet.model_dump(mode="json")})
    start = resnet.model_copy(update={"network": resnet.network.model_copy(update={"init_checkpoint": bare})})
    with pytest.raises(ModelError) as caught:
        initial_network(start, body)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500, message
    assert message.startswith(f"network.init_checkpoint {bare} does not fit this run's network (")
    assert "tensors missing (e.g. backbone.conv1.weight)" in message
    assert "not the network's (e.g. backbone.features." in message and "of another shape (e.g. fc1.weight" in message
    # load_regressor (demo --checkpoint) reads the same check against the checkpoint's own saved config.
    with pytest.raises(ModelError, match=rf"^{bare} does not fit its saved config's network \(") as caught:
        load_regressor(bare)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500
    model, saved, _ = load_regressor(full)
    assert saved.network.backbone == "mobilenet_v3_small" and not model.training
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in weights.items())
