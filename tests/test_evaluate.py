"""Evaluation on tiny rendered data: the truth scores 0, the mean pose does not, the CLI writes JSON."""

import json

import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.cli import main
from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import InputError
from spin_ray.eval.evaluate import evaluate, evaluation_dataset, format_table, mean_params_predictor
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
    model = HMR(open_mean_params(), backbone="mobilenet_v3_small")
    mean = evaluate(mean_params_predictor(model), body, dataset, batch_size=16, name="mean-pose")
    summary = mean.summary()
    # Alignment can only help, and a mean pose is far from sampled poses.
    assert (mean.pa_mpjpe <= mean.mpjpe + 1e-3).all()
    assert 20 < summary["pa_mpjpe_mm"] < summary["mpjpe_mm"] < 400
    assert summary["pve_samples"] == 32 and summary["pve_mm"] > summary["pa_mpjpe_mm"]
    table = format_table([truth, mean])
    assert "mean-pose" in table and "PA-MPJPE" in table


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


def test_eval_cli_prints_a_table_and_writes_json(tiny_spin_data, tmp_path, body, capsys):
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
    assert main(["eval", str(path), "--dataset", "nope"]) == 1
    assert "neither a .npz path nor a dataset" in capsys.readouterr().err
