"""Evaluation on tiny rendered data: the truth scores 0 (and full PCK, near-full segmentation), the mean pose
does not, gender models build 3DPW's truth row by row, the CLI prints the paper's table and writes JSON."""

import json

import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.cli import main
from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import InputError
from spin_ray.eval.evaluate import evaluate, evaluation_dataset, mean_params_predictor
from spin_ray.eval.table import format_table
from spin_ray.geometry import matrix_to_rot6d
from spin_ray.model.hmr import HMR, HMROutput
from spin_ray.model.mean_params import open_mean_params

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


def truth_predictor(npz):
    """Predicts each sample's ground truth, in dataset order (evaluate does not shuffle)."""
    data = load_spin_npz(npz, npz.parent)
    rows = iter(range(len(data)))

    def predict(images):
        index = [next(rows) for _ in range(images.shape[0])]
        rotmat = axis_angle_pose_to_rotmats(torch.from_numpy(data.pose[index]))
        return HMROutput(rotmat, matrix_to_rot6d(rotmat).flatten(1), torch.from_numpy(data.betas[index]),
                         torch.tensor([[0.9, 0.0, 0.0]]).expand(len(index), 3))
    return predict


def test_truth_scores_zero_and_the_mean_pose_does_not(tiny_spin_data, body):
    npz = tiny_spin_data["tiny-test"]
    dataset = evaluation_dataset(npz, None, img_res=64)
    truth = evaluate(truth_predictor(npz), body, dataset, batch_size=10, name="truth")
    assert len(truth.index) == 32 and np.array_equal(truth.index, np.arange(32))
    assert truth.mpjpe.max() < 1e-3 and truth.pa_mpjpe.max() < 1e-3 and truth.pve.max() < 1e-3
    # Every joint is right at every threshold but 0 mm (3DHP's AUC counts errors strictly below it).
    assert truth.pck.min() == 1.0 and truth.pa_pck.min() == 1.0
    assert np.allclose(truth.auc, 30 / 31) and np.allclose(truth.pa_auc, 30 / 31)
    model = HMR(open_mean_params(), backbone="mobilenet_v3_small")
    mean = evaluate(mean_params_predictor(model), body, dataset, batch_size=16, name="mean-pose")
    summary = mean.summary()
    # Alignment can only help, and a mean pose is far from sampled poses.
    assert (mean.pa_mpjpe <= mean.mpjpe + 1e-3).all()
    assert 20 < summary["pa_mpjpe_mm"] < summary["mpjpe_mm"] < 400
    assert summary["pve_samples"] == 32 and summary["pve_mm"] > summary["pa_mpjpe_mm"]
    assert summary["pa_pck_pct"] > summary["pck_pct"] and summary["pa_auc_pct"] > summary["auc_pct"]
    assert summary["auc_pct"] < 100 * 30 / 31 - 5
    table = format_table([truth, mean])
    assert "mean-pose" in table and "PA-MPJPE" in table and "PA-AUC" in table
    assert "FB acc" not in table  # no masks, no segmentation columns


def test_ground_truth_from_3d_joints_when_there_is_no_smpl(tiny_spin_data, body, tmp_path):
    src = load_spin_npz(tiny_spin_data["tiny-test"], tiny_spin_data["tiny-test"].parent)
    n = 4
    npz = write_spin_npz(tmp_path / "s_only.npz", imgname=[str(tiny_spin_data["tiny-test"].parent / p)
                                                            for p in src.imgname[:n]],
                         center=src.center[:n], scale=src.scale[:n], part=src.part[:n], openpose=src.openpose[:n],
                         S=src.S[:n])
    dataset = evaluation_dataset(npz, "/", img_res=64)
    result = evaluate(truth_predictor(tiny_spin_data["tiny-test"]), body, dataset, batch_size=n)
    assert result.index.tolist() == [0, 1, 2, 3]
    assert np.isnan(result.pve).all()  # no ground-truth mesh
    # S holds the open model's own LSP keypoints, the joints evaluation uses for it.
    assert result.mpjpe.max() < 0.01 and result.pa_mpjpe.max() < 0.01  # float32 S: micrometres
    no_3d = write_spin_npz(tmp_path / "no_3d.npz", imgname=[str(tiny_spin_data["tiny-test"].parent / p)
                                                             for p in src.imgname[:2]],
                           center=src.center[:2], scale=src.scale[:2], part=src.part[:2])
    with pytest.raises(InputError, match="no sample with 3D ground truth"):
        evaluate(truth_predictor(tiny_spin_data["tiny-test"]), body, evaluation_dataset(no_3d, "/", img_res=64))


def test_eval_cli_prints_a_table_and_writes_json(tiny_spin_data, synth_test_split, tmp_path, body, capsys):
    from test_trainer import tiny_config

    from spin_ray.train.trainer import Trainer

    cfg = tiny_config(tiny_spin_data, tmp_path)
    torch.manual_seed(0)
    path = Trainer(cfg, HMR.from_config(cfg.network), body).save(tmp_path / "ckpt.pt")
    out = tmp_path / "eval.json"
    assert main(["eval", str(path), "--dataset", "tiny-test", "--json", str(out), "--limit", "8"]) == 0
    printed = capsys.readouterr().out
    assert "mean-pose" in printed and "tiny-test" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["model", "mean-pose"] and results[0]["samples"] == 8
    assert main(["eval", str(path), "--dataset", str(tiny_spin_data["tiny-test"]), "--no-baseline"]) == 0
    # Two datasets: a block each, segmentation columns only where the dataset has masks.
    assert main(["eval", str(path), "--dataset", "tiny-test", "--dataset", str(synth_test_split), "--json", str(out),
                 "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    tiny_block, synth_block = printed.split("synth-test:")
    assert "PA-AUC" in tiny_block and "FB acc" not in tiny_block
    assert all(column in synth_block for column in ("MPJPE", "PVE", "PCK", "AUC", "FB F1", "Parts acc", "Parts F1"))
    results = json.loads(out.read_text())["results"]
    assert [(r["dataset"], r["name"]) for r in results] == [("tiny-test", "model"), ("tiny-test", "mean-pose"),
                                                           ("synth-test", "model"), ("synth-test", "mean-pose")]
    assert results[0]["fb_f1"] is None and 0 <= results[2]["parts_f1"] <= 1 and results[2]["auc_pct"] >= 0
    assert main(["eval", str(path), "--dataset", "nope"]) == 1
    assert "neither a .npz path nor a dataset" in capsys.readouterr().err


@pytest.mark.parametrize("change, named", [
    ({"network": {"backbone": "resnet18"}}, "backbone: checkpoint has 'mobilenet_v3_small', config has 'resnet18'"),
    ({"data": {"img_res": 96}}, "img_res: checkpoint has 64, config has 96"),
], ids=["backbone", "input-size"])
def test_eval_with_a_config_of_another_network_is_one_line_naming_the_difference(tiny_spin_data, tmp_path, body,
                                                                                 capsys, change, named):
    """Issue 26 item 9: a --config whose network differs from the checkpoint's printed every state-dict key (14 KB)."""
    import yaml
    from test_trainer import tiny_config

    from spin_ray.train.trainer import Trainer

    cfg = tiny_config(tiny_spin_data, tmp_path)
    path = Trainer(cfg, HMR.from_config(cfg.network), body).save(tmp_path / "ckpt.pt")
    settings = json.loads(cfg.model_dump_json())
    for section, values in change.items():
        settings[section].update(values)
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert main(["eval", str(path), "--config", str(config), "--dataset", "tiny-test", "--limit", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err[:600]
    assert err.startswith(f"spin-ray eval: ModelError: {path} was trained with another network than --config "
                          f"{config} gives ({named})"), err


def _gender_model_file(path, scale):
    """The embedded model with its template scaled: a stand-in male or female model that differs visibly."""
    from spin_ray.body.model_file import embedded_model_path

    with np.load(embedded_model_path(), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["v_template"] = arrays["v_template"] * scale
    np.savez(path, **arrays)
    return path


def test_gender_models_build_the_truth_of_their_rows_and_the_neutral_model_stands_in(body, tmp_path):
    from spin_ray.config import BodyConfig
    from spin_ray.eval.ground_truth import EvalBodies, ground_truth

    cfg = BodyConfig(model_path_male=_gender_model_file(tmp_path / "male.npz", 1.10),
                     model_path_female=_gender_model_file(tmp_path / "female.npz", 0.92))
    bodies = EvalBodies.from_config(cfg, body)
    pose = torch.zeros(4, 72)
    pose[:, 3 * 4] = torch.tensor([0.3, 0.8, 1.2, 0.0])  # bend the left knee differently in each row
    betas = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * 0.5
    batch = {"pose": pose, "betas": betas, "has_smpl": torch.tensor([1, 1, 1, 0]), "has_3d": torch.ones(4),
             "S": torch.zeros(4, 24, 4), "gender": torch.tensor([0, 1, -1, 0])}
    truth = ground_truth(bodies, batch)
    rotmat = axis_angle_pose_to_rotmats(pose)
    for row, model in ((0, bodies.male), (1, bodies.female), (2, body)):
        expected = model(rotmat[row:row + 1], betas[row:row + 1]).vertices[0]
        assert torch.allclose(truth.vertices[row], expected, atol=1e-6), f"row {row}"
    assert not torch.allclose(truth.vertices[0], body(rotmat[:1], betas[:1]).vertices[0], atol=1e-3)
    assert truth.usable.tolist() == [True] * 4 and truth.neutral_stand_in.tolist() == [False] * 4
    # Without the gender files the neutral model builds every row, and the m/f rows are counted.
    alone = ground_truth(EvalBodies(body), batch)
    assert torch.allclose(alone.vertices[0], body(rotmat[:1], betas[:1]).vertices[0], atol=1e-6)
    assert alone.neutral_stand_in.tolist() == [True, True, False, False]


@pytest.fixture(scope="module")
def synth_test_split(tmp_path_factory):
    """A 6-image synthetic test split with its LSP-style masks."""
    from spin_ray.config import RunConfig
    from spin_ray.data.synth import ensure_synthetic_data

    cfg = RunConfig.model_validate({"synth": dict(
        sizes={"synth-3d": 0, "synth-itw": 0, "synth-test": 6}, image_size=128, chunk_size=6, seed=5, workers=1,
        cache_dir=str(tmp_path_factory.mktemp("synth_eval")))})
    return ensure_synthetic_data(cfg, progress=False)["synth-test"]


def keypoint_camera_predictor(npz):
    """Each row's true pose and shape, with the weak-perspective crop camera that best fits its 2D keypoints."""
    from spin_ray.config import CameraConfig
    from spin_ray.data.augment import crop_matrix, transform_points
    from spin_ray.geometry import camera_translation_from_keypoints

    data, camera, body = load_spin_npz(npz, npz.parent), CameraConfig(), BodyModel.embedded()
    rows = iter(range(len(data)))

    def predict(images):
        index = [next(rows) for _ in range(images.shape[0])]
        rotmat = axis_angle_pose_to_rotmats(torch.from_numpy(data.pose[index]))
        betas = torch.from_numpy(data.betas[index])
        keypoints = body.keypoints(rotmat, betas)[:, 25:]
        crop = np.stack([transform_points(data.part[i, :, :2], crop_matrix(data.center[i], data.scale[i],
                                                                           camera.crop_size)) for i in index])
        t = camera_translation_from_keypoints(keypoints, torch.from_numpy(crop).float(),
                                              torch.from_numpy(data.part[index, :, 2]), camera.focal_length,
                                              camera.crop_size, initial_depth=20.0)
        cam = torch.stack([2 * camera.focal_length / (camera.crop_size * t[:, 2]), t[:, 0], t[:, 1]], dim=1)
        return HMROutput(rotmat, matrix_to_rot6d(rotmat).flatten(1), betas, cam)
    return predict


def test_segmentation_of_the_truth_is_near_perfect_and_of_the_mean_pose_is_not(synth_test_split, body):
    dataset = evaluation_dataset(synth_test_split, None, img_res=64)
    truth = evaluate(keypoint_camera_predictor(synth_test_split), body, dataset, batch_size=4, name="truth",
                     segmentation=True).summary()
    model = HMR(open_mean_params(), backbone="mobilenet_v3_small")
    mean = evaluate(mean_params_predictor(model), body, dataset, batch_size=4, name="mean-pose",
                    segmentation=True).summary()
    assert truth["segmentation_samples"] == 6 and truth["mpjpe_mm"] < 1e-3
    # The truth differs only by the weak-perspective camera standing in for the true perspective one.
    assert truth["fb_accuracy_pct"] > 99 and truth["fb_f1"] > 0.97  # measured 99.8 %, 0.993
    assert truth["parts_accuracy_pct"] > 99 and truth["parts_f1"] > 0.9  # 99.7 %, 0.973
    assert mean["fb_f1"] < truth["fb_f1"] - 0.1 and mean["parts_f1"] < truth["parts_f1"] - 0.1
    assert len(truth["parts_f1_per_class"]) == 7 and np.array(truth["parts_confusion"]).shape == (8, 7)
    plain = evaluate(mean_params_predictor(model), body, dataset, batch_size=4, name="mean-pose").summary()
    assert plain["segmentation_samples"] == 0 and np.isnan(plain["fb_f1"])  # segmentation is asked for
