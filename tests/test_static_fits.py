"""`spin-ray fit`: offline fits of a SPIN-format dataset, written as SPIN's static fits."""

import math

import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.cli import main
from spin_ray.config import RunConfig
from spin_ray.data.spin_format import write_spin_npz
from spin_ray_sim.fitting_problems import synthetic_problems
from spin_ray.fitting.static_fits import SCALE_UNIT_PX, canonical_crop_keypoints
from spin_ray.store.fit_store import FitStore

torch.set_num_threads(1)
CFG = RunConfig()


def _dataset(tmp_path, n=10):
    """A SPIN-format file whose keypoints are synthetic people placed in 640x480 images."""
    body = BodyModel.embedded()
    problem = synthetic_problems(body, n, torch.Generator().manual_seed(5), CFG.camera, max_yaw=math.radians(20))
    rng = np.random.default_rng(0)
    center = rng.uniform([200, 150], [440, 330], size=(n, 2)).astype(np.float32)
    scale = rng.uniform(1.0, 2.0, size=n).astype(np.float32)
    crop = problem.keypoints_2d.numpy()
    zoom = CFG.camera.crop_size / (SCALE_UNIT_PX * scale)
    image_xy = (crop[..., :2] - CFG.camera.crop_size / 2) / zoom[:, None, None] + center[:, None, :]
    keypoints = np.concatenate([image_xy, crop[..., 2:]], axis=-1)
    keypoints[min(3, n - 1), :, 2] = 0.0  # a sample nobody annotated
    path = tmp_path / "people.npz"
    write_spin_npz(path, imgname=np.array([f"{i}.jpg" for i in range(n)]), center=center, scale=scale,
                   part=keypoints[:, 25:], openpose=keypoints[:, :25])
    return path, crop


def test_canonical_crop_inverts_the_box():
    kp = np.array([[[10.0, 20.0, 1.0], [110.0, 220.0, 0.5]]], np.float32)
    out = canonical_crop_keypoints(kp, np.array([[60.0, 120.0]]), np.array([1.0]), 200)
    assert np.allclose(out[0, :, :2], [[50.0, 0.0], [150.0, 200.0]]) and np.allclose(out[0, :, 2], [1.0, 0.5])


def test_fit_cli_writes_static_fits_that_import_into_the_store(tmp_path, redis_server, capsys):
    path, _ = _dataset(tmp_path)
    out = tmp_path / "fits" / "people_fits.npy"
    assert main(["fit", str(path), "--out", str(out)]) == 0
    table = np.load(out)
    errors = np.load(out.with_name("people_fits.errors.npy"))
    assert table.shape == (10, 82) and table.dtype == np.float32
    assert np.isnan(errors[3]) and np.isfinite(np.delete(errors, 3)).all()
    assert np.median(np.delete(errors, 3)) < CFG.fitting.valid_error_threshold
    assert "1 failed" in capsys.readouterr().out
    store = FitStore.open(redis_server.url, "static-fit-cli", body_model_hash=BodyModel.embedded().identity)
    written = store.import_npy("people", out)
    assert written.sum() == 9
    assert store.read("people", np.arange(10)).found.sum() == 9
    store.drop()


def test_fit_cli_refuses_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["fit", str(bad), "--out", str(tmp_path / "x.npy")]) == 1
    assert "bad.npz" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "missing.npz: dataset file does not exist (check the DATASET argument)" in err and "config" not in err


def test_fit_cli_refuses_empty_work(tmp_path, capsys):
    path, _ = _dataset(tmp_path, n=2)
    with pytest.raises(SystemExit) as exit_:  # refused when parsed (tests/test_cli_numbers.py has the others)
        main(["fit", str(path), "--out", str(tmp_path / "x.npy"), "--limit", "0"])
    assert exit_.value.code == 2 and "--limit: must be a whole number >= 1" in capsys.readouterr().err


def test_the_closed_form_camera_follows_the_configured_ignored_joints():
    # The starting camera once used SPIN's ignored joints whatever fitting.ignored_joints said.
    import inspect

    from spin_ray.body.joints import SPIN49_NAMES
    from spin_ray.fitting.smplify import camera_from_keypoints
    from spin_ray.fitting.starts import mean_body_pose, mean_pose_init
    from spin_ray.fitting.static_fits import static_start

    assert inspect.signature(camera_from_keypoints).parameters["ignored"].default is inspect.Parameter.empty
    body = BodyModel.embedded()
    problem = synthetic_problems(body, 4, torch.Generator().manual_seed(8), CFG.camera)
    kp = problem.keypoints_2d.clone()
    neck = SPIN49_NAMES.index("OP Neck")
    kp[:, neck, :2] += 60.0  # SPIN ignores OP Neck; a skeleton that trusts it sees it 60 px off
    pose, betas = problem.pose, problem.betas
    trusting = CFG.fitting.model_copy(update={"ignored_joints": ()})
    spin_start = static_start(body, kp, pose, betas, CFG.camera, CFG.fitting)
    other_start = static_start(body, kp, pose, betas, CFG.camera, trusting)
    exact_start = static_start(body, problem.keypoints_2d, pose, betas, CFG.camera, CFG.fitting)
    torch.testing.assert_close(spin_start.camera_t, exact_start.camera_t)  # ignored: the moved neck changes nothing
    assert (other_start.camera_t - spin_start.camera_t).abs().max() > 1e-3
    mean = mean_body_pose(torch.Generator().manual_seed(1))
    assert not torch.allclose(mean_pose_init(body, mean, kp, CFG.camera, CFG.fitting).camera_t,
                              mean_pose_init(body, mean, kp, CFG.camera, trusting).camera_t)
