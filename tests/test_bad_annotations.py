"""Bad annotation rows are refused (data.bad_samples: raise) or left out (skip) the same way by fit, train and eval."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import yaml

from spin_ray.body.body_model import BodyModel
from spin_ray.cli import main
from spin_ray.config import DataConfig, DatasetEntry
from spin_ray.data.dataset import build_dataset
from spin_ray.data.row_checks import check_rows, image_sizes
from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import DataError
from spin_ray.eval.evaluate import evaluate, evaluation_dataset
from spin_ray.geometry import matrix_to_rot6d
from spin_ray.model.hmr import HMROutput

torch.set_num_threads(1)
H, W, N, BAD = 90, 120, 5, 2  # images, rows, the row made bad

# kind -> (change to row BAD of the arrays, reason key of row_checks, words of the message)
KINDS = {
    "nan-center": (lambda a: a["center"].__setitem__(BAD, np.nan), "center", "center is [nan"),
    "zero-scale": (lambda a: a["scale"].__setitem__(BAD, 0.0), "scale", "scale is 0.0"),
    "negative-scale": (lambda a: a["scale"].__setitem__(BAD, -0.3), "scale", "scale is -0.3"),
    "nan-keypoint": (lambda a: a["part"].__setitem__((BAD, 3, 0), np.nan), "keypoint", "keypoint 28"),
    "inf-openpose-keypoint": (lambda a: a["openpose"].__setitem__((BAD, 1), (np.inf, 5.0, 0.7)), "keypoint",
                              "keypoint 1 (OP Neck)"),
    "huge-keypoint": (lambda a: a["part"].__setitem__((BAD, 3, 0), 1e300), "keypoint",
                      "keypoint 28 (Left Hip) is at [inf, "),  # beyond float32: inf once read
    "absurd-keypoint": (lambda a: a["openpose"].__setitem__((BAD, 4, 1), -3e30), "keypoint",
                        "keypoint 4 (OP RWrist) is at ["),  # fits float32, but squared in a loss it does not
    "confidence-above-1": (lambda a: a["part"].__setitem__((BAD, 0, 2), 2.0), "confidence", "confidence 2.0"),
    "nan-confidence": (lambda a: a["openpose"].__setitem__((BAD, 0, 2), np.nan), "confidence", "confidence nan"),
    "box-outside-image": (lambda a: a["center"].__setitem__(BAD, (2000.0, 45.0)), "box",
                          "lies wholly outside the 120x90 image"),
    "nan-S": (lambda a: a["S"].__setitem__((BAD, 5, 1), np.nan), "S", "S (3D joints)"),
    "nan-pose": (lambda a: a["pose"].__setitem__((BAD, 7), np.nan), "smpl", "pose or shape"),
}
# Found from the annotations alone; a box outside the image needs the image's size.
ANNOTATION_KINDS = [k for k in KINDS if k != "box-outside-image"]


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """N good rows: keypoints of a person inside a 120x90 image, SMPL and S ground truth."""
    rng = np.random.default_rng(seed)
    part = np.concatenate([rng.uniform(30, 80, (N, 24, 2)), np.ones((N, 24, 1))], -1)
    openpose = np.concatenate([rng.uniform(30, 80, (N, 25, 2)), np.full((N, 25, 1), 0.8)], -1)
    return {"imgname": np.array([f"images/toy_{i}.png" for i in range(N)]),
            "center": np.tile([[60.0, 45.0]], (N, 1)), "scale": np.full(N, 0.4), "part": part,
            "openpose": openpose, "pose": rng.normal(size=(N, 72)) * 0.2, "shape": rng.normal(size=(N, 10)) * 0.5,
            "S": np.concatenate([rng.normal(size=(N, 24, 3)) * 0.3, np.ones((N, 24, 1))], -1)}


def write(folder, kind: str | None = None, extra_bad: dict | None = None):
    """The toy dataset (and its images) in `folder` with row BAD broken as `kind` says."""
    a = arrays()
    if kind is not None:
        KINDS[kind][0](a)
    for row, change in (extra_bad or {}).items():
        change(a, row)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in a["imgname"]:
        cv2.imwrite(str(folder / name), np.full((H, W, 3), 90, np.uint8))
    return write_spin_npz(folder / "toy.npz", **a)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- the validator ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_check_rows_names_the_bad_row_and_why(tmp_path, kind):
    spin = load_spin_npz(write(tmp_path, kind), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        check = check_rows(spin, image_sizes(spin))
    assert np.flatnonzero(check.bad).tolist() == [BAD] and check.reason[BAD] == KINDS[kind][1]
    assert KINDS[kind][2] in check.detail(BAD)
    message = str(check.error())
    assert f"row {BAD} (images/toy_{BAD}.png)" in message and "set data.bad_samples: skip" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind, why", [
    ("huge-keypoint", "beyond float32's range"),
    ("absurd-keypoint", "an absurd magnitude, beyond +-1e+06 px"),
])
def test_a_keypoint_of_absurd_size_is_named_for_its_size_without_a_numpy_warning(tmp_path, kind, why):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the float32 cast of 1e300 used to print an overflow warning
        spin = load_spin_npz(write(tmp_path, kind), tmp_path)
        check = check_rows(spin, image_sizes(spin))
    assert check.reason.tolist() == ["", "", "keypoint", "", ""]
    assert why in check.detail(BAD) and why in str(check.error())


def test_every_bad_row_is_found_at_once_and_counted(tmp_path):
    # Rows 0, 2 and 4 bad in three ways: the first is named, the others counted.
    spin = load_spin_npz(write(tmp_path, "zero-scale", {
        0: lambda a, r: a["center"].__setitem__(r, np.inf),
        4: lambda a, r: a["part"].__setitem__((r, 0, 2), -0.5)}), tmp_path)
    check = check_rows(spin)
    assert check.reason.tolist() == ["center", "", "scale", "", "confidence"]
    assert "row 0" in str(check.error()) and "2 other row(s) of 5 are bad" in str(check.error())
    assert "skipping 3 of 5 rows" in check.summary() and "1 scale" in check.summary()


def test_a_nan_keypoint_without_confidence_is_not_annotated_and_reads_as_zero(tmp_path):
    a = arrays()
    a["part"][BAD, 3] = (np.nan, np.inf, 0.0)
    path = write_spin_npz(tmp_path / "toy.npz", **a)
    spin = load_spin_npz(path, tmp_path)
    assert check_rows(spin).usable.all()
    assert spin.part[BAD, 3].tolist() == [0.0, 0.0, 0.0] and np.isfinite(spin.keypoints49()).all()


def test_the_box_needs_the_image_size_only_to_check_its_far_side(tmp_path):
    spin = load_spin_npz(write(tmp_path, "box-outside-image"), tmp_path)
    assert check_rows(spin).usable.all()  # right of x = 0: fine without the image's width
    spin.center[BAD] = (-100.0, 45.0)  # the 80 px box ends at x = -60: left of every image
    assert check_rows(spin).reason[BAD] == "box"
    spin.center[BAD] = (-30.0, 45.0)  # reaches into the image: a cut-off person is fine
    assert check_rows(spin, image_sizes(spin)).usable.all()


# -- spin-ray fit ---------------------------------------------------------------------------------------

@pytest.fixture
def quick_fit_config(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump({"fitting": {"iterations_camera": 3, "iterations_body": 3}}))
    return path


@pytest.mark.parametrize("kind", list(KINDS))
def test_fit_refuses_a_bad_row_under_raise(tmp_path, capsys, kind):
    path = write(tmp_path, kind)
    out = tmp_path / "fits.npy"
    assert main(["fit", str(path), "--out", str(out), "--bad-samples", "raise"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("spin-ray fit: DataError: dataset 'toy' row 2 (images/toy_2.png)")
    assert KINDS[kind][2] in line and "set data.bad_samples: skip" in line
    assert not out.exists()


def test_fit_skips_bad_rows_and_marks_them_unfitted(tmp_path, capsys, quick_fit_config):
    # Row 2: a box outside its image; row 0: a NaN keypoint; row 4: scale 0 (a numpy warning before).
    path = write(tmp_path, "box-outside-image", {0: lambda a, r: a["part"].__setitem__((r, 5, 1), np.nan),
                                                 4: lambda a, r: a["scale"].__setitem__(r, 0.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["fit", str(path), "--out", str(tmp_path / "fits"), "--config", str(quick_fit_config)]) == 0
    captured = capsys.readouterr()
    assert "warning: dataset 'toy': skipping 3 of 5 rows" in captured.err and "row 0 (images/toy_0.png)" in captured.err
    assert "fitted 2 of 5 samples" in captured.out and "3 skipped (bad annotations)" in captured.out
    assert f"wrote {tmp_path / 'fits.npy'}" in captured.out  # '.npy' added, and the real path reported
    table, errors = np.load(tmp_path / "fits.npy"), np.load(tmp_path / "fits.errors.npy")
    skipped = [0, 2, 4]
    assert np.isnan(table[skipped]).all() and np.isnan(errors[skipped]).all()  # no fit, not a zero pose
    assert np.isfinite(table[[1, 3]]).all() and np.isfinite(errors[[1, 3]]).all()


def test_fit_with_a_limit_that_keeps_only_bad_rows_says_so(tmp_path, capsys):
    path = write(tmp_path, extra_bad={0: lambda a, r: a["scale"].__setitem__(r, 0.0)})
    assert main(["fit", str(path), "--out", str(tmp_path / "fits.npy"), "--limit", "1"]) == 1
    line = one_line(capsys.readouterr().err.replace("warning: ", "\n").split("\n", 2)[-1])
    assert "InputError" in line and "nothing to fit, all 1 selected rows have bad annotations" in line


# -- spin-ray train's dataset ---------------------------------------------------------------------------

def _train_data(folder, kind, policy):
    path = write(folder, kind)
    entry = DatasetEntry(name="toy", npz=path, image_root=folder)
    return build_dataset(DataConfig(img_res=32, datasets=[entry], bad_samples=policy), train=True)


@pytest.mark.parametrize("kind", ANNOTATION_KINDS)
def test_train_dataset_refuses_bad_annotations_when_built(tmp_path, kind):
    with pytest.raises(DataError, match=rf"dataset 'toy' row 2 \(images/toy_2.png\).*bad_samples: skip") as err:
        _train_data(tmp_path, kind, "raise")
    assert KINDS[kind][2] in str(err.value)


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_dataset_never_yields_a_bad_row_under_skip(tmp_path, kind):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixed = _train_data(tmp_path, kind, "skip")
        rows = [int(mixed.datasets[0][i]["index"]) for i in range(N)]
    assert BAD not in rows and rows.count(BAD + 1) == 2  # row 2's turn went to row 3
    assert any(f"row {BAD} (images/toy_{BAD}.png)" in str(w.message) for w in caught)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_train_dataset_refuses_a_box_outside_its_image_when_loaded(tmp_path):
    mixed = _train_data(tmp_path, "box-outside-image", "raise")  # needs the image: found on loading
    with pytest.raises(DataError, match="row 2 .*lies wholly outside the 120x90 image.*bad_samples: skip"):
        mixed.datasets[0][BAD]


# -- spin-ray eval ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


def rest_pose(images: torch.Tensor) -> HMROutput:
    n = images.shape[0]
    rotmat = torch.eye(3).expand(n, 24, 3, 3)
    return HMROutput(rotmat, matrix_to_rot6d(rotmat).flatten(1), torch.zeros(n, 10), torch.tensor([[0.9, 0, 0]]).expand(n, 3))


@pytest.mark.parametrize("kind", ANNOTATION_KINDS)
def test_eval_refuses_bad_annotations_under_raise(tmp_path, kind):
    with pytest.raises(DataError, match=r"dataset 'toy' row 2 .*bad_samples: skip"):
        evaluation_dataset(write(tmp_path, kind), None, img_res=32, bad_samples="raise")


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_leaves_bad_rows_out_and_counts_them_under_skip(tmp_path, body, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the skip warnings; their text is tested above
        dataset = evaluation_dataset(write(tmp_path, kind), None, img_res=32, bad_samples="skip")
        result = evaluate(rest_pose, body, dataset, batch_size=4)
    assert result.index.tolist() == [0, 1, 3, 4] and result.skipped == 1 and result.summary()["skipped"] == 1
    assert np.isfinite(result.mpjpe).all()


def test_eval_cli_follows_bad_samples_and_reports_skipped_rows(tmp_path, body, capsys):
    from spin_ray.config import config_from_dict
    from spin_ray.model.hmr import HMR
    from spin_ray.train.trainer import Trainer

    path = write(tmp_path, "nan-keypoint")
    cfg = config_from_dict({"output_dir": str(tmp_path / "out"), "network": {"backbone": "mobilenet_v3_small"},
                            "data": {"img_res": 32}})
    checkpoint = Trainer(cfg, HMR.from_config(cfg.network), body).save(tmp_path / "ckpt.pt")
    base = ["eval", str(checkpoint), "--dataset", str(path), "--no-baseline"]
    assert main(base + ["--bad-samples", "raise"]) == 1
    assert "DataError: dataset 'toy' row 2" in one_line(capsys.readouterr().err)
    with pytest.warns(UserWarning, match="skipping 1 of 5 rows"):
        assert main(base) == 0  # the checkpoint's config says data.bad_samples: skip (the default)
    assert "1 row(s) of toy skipped as bad samples" in capsys.readouterr().out
