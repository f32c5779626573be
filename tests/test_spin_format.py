"""SPIN dataset .npz: exact key list, optional keys as explicit masks, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import DataError


def spin_arrays(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays with SPIN's exact keys and dtypes as its preprocessing scripts write them."""
    rng = np.random.default_rng(seed)
    return {
        "imgname": np.array([f"images/im{i:04d}.png" for i in range(n)]),
        "center": rng.uniform(40, 60, (n, 2)),
        "scale": rng.uniform(0.3, 0.5, n),
        "part": np.concatenate([rng.uniform(0, 100, (n, 24, 2)), np.ones((n, 24, 1))], -1),
        "openpose": np.concatenate([rng.uniform(0, 100, (n, 25, 2)), rng.uniform(0, 1, (n, 25, 1))], -1),
        "S": np.concatenate([rng.normal(size=(n, 24, 3)), np.ones((n, 24, 1))], -1),
        "pose": rng.normal(size=(n, 72)) * 0.2,
        "shape": rng.normal(size=(n, 10)),
        "has_smpl": np.array([1, 0, 1, 1, 0][:n] + [1] * max(0, n - 5)),
        "gender": np.array(["m", "f", "f", "m", "f"][:n] + ["m"] * max(0, n - 5)),
    }


def test_reads_the_exact_spin_key_list(tmp_path):
    arrays = spin_arrays()
    np.savez(tmp_path / "h36m_train.npz", **arrays)
    ds = load_spin_npz(tmp_path / "h36m_train.npz", image_root=tmp_path)
    assert ds.name == "h36m_train" and len(ds) == 5
    assert ds.image_path(3) == tmp_path / "images/im0003.png"
    np.testing.assert_allclose(ds.center, arrays["center"], rtol=1e-6)
    np.testing.assert_array_equal(ds.has_smpl, [True, False, True, True, False])
    assert ds.has_3d.all() and ds.has_openpose.all()
    np.testing.assert_array_equal(ds.gender, [0, 1, 1, 0, 1])
    kp = ds.keypoints49()
    assert kp.shape == (5, 49, 3) and kp.dtype == np.float32
    np.testing.assert_allclose(kp[:, :25], arrays["openpose"], rtol=1e-6)
    np.testing.assert_allclose(kp[:, 25:], arrays["part"], rtol=1e-6)


def test_missing_optional_keys_are_explicitly_unavailable(tmp_path):
    arrays = {k: spin_arrays()[k] for k in ("imgname", "center", "scale", "part")}
    np.savez(tmp_path / "coco.npz", **arrays)
    ds = load_spin_npz(tmp_path / "coco.npz", image_root=tmp_path, name="coco-2014")
    assert ds.name == "coco-2014"
    assert not ds.has_smpl.any() and not ds.has_3d.any() and not ds.has_openpose.any()
    assert (ds.gender == -1).all()
    # Missing openpose gives zero confidence, so it can never be used as a detection.
    assert (ds.keypoints49()[:, :25, 2] == 0).all()


def test_pose_without_has_smpl_means_all_have_smpl_and_bytes_strings_decode(tmp_path):
    arrays = spin_arrays()
    del arrays["has_smpl"]
    arrays["gender"] = np.array([b"m", b"f", b"male", b"female", b"n"])
    arrays["imgname"] = np.char.encode(arrays["imgname"])
    np.savez(tmp_path / "a.npz", **arrays)
    ds = load_spin_npz(tmp_path / "a.npz", tmp_path)
    assert ds.has_smpl.all()
    np.testing.assert_array_equal(ds.gender, [0, 1, 0, 1, -1])
    assert ds.imgname[0] == "images/im0000.png"


def test_empty_openpose_is_kept_as_zero_confidence(tmp_path):
    arrays = spin_arrays()
    arrays["openpose"][:] = 0.0
    np.savez(tmp_path / "a.npz", **arrays)
    ds = load_spin_npz(tmp_path / "a.npz", tmp_path)
    assert (ds.keypoints49()[:, :25] == 0).all()


@pytest.mark.parametrize(
    "edit, key, message",
    [
        (lambda a: a.pop("part"), None, "missing required key"),
        (lambda a: a.__setitem__("center", a["center"][:4]), "center", "4 rows but imgname has 5"),
        (lambda a: a.__setitem__("part", a["part"][:, :14]), "part", r"expected \(24, 3\)"),
        (lambda a: a.__setitem__("pose", a["pose"][:, :69]), "pose", r"expected \(72,\)"),
        (lambda a: a.pop("shape"), "shape", "present without"),
        (lambda a: a.__setitem__("gender", np.array(["m", "x", "f", "m", "f"])), "gender", "unknown value"),
    ],
)
def test_malformed_files_name_file_and_key(tmp_path, edit, key, message):
    arrays = spin_arrays()
    edit(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_spin_npz(tmp_path / "bad.npz", tmp_path)
    assert "bad.npz" in str(info.value)
    if key:
        assert f"key '{key}'" in str(info.value)


def test_corrupt_missing_and_pickled_files(tmp_path):
    np.savez(tmp_path / "good.npz", **spin_arrays())
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.npz: not a readable .npz"):
        load_spin_npz(tmp_path / "truncated.npz", tmp_path)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="corrupt"):
        load_spin_npz(tmp_path / "garbage.npz", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_spin_npz(tmp_path / "nope.npz", tmp_path)
    arrays = spin_arrays()
    arrays["imgname"] = np.array(list(arrays["imgname"]), dtype=object)
    np.savez(tmp_path / "objects.npz", **arrays)
    with pytest.raises(DataError, match="objects.npz"):
        load_spin_npz(tmp_path / "objects.npz", tmp_path)


def test_writer_round_trips_and_validates(tmp_path):
    arrays = spin_arrays()
    path = write_spin_npz(tmp_path / "out" / "synth.npz", **arrays)
    ds = load_spin_npz(path, tmp_path)
    np.testing.assert_allclose(ds.pose, arrays["pose"], rtol=1e-6)
    np.testing.assert_allclose(ds.betas, arrays["shape"], rtol=1e-6)
    np.testing.assert_allclose(ds.S, arrays["S"], rtol=1e-6)
    assert list(ds.imgname) == list(arrays["imgname"])
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(arrays)
    # Optional keys left out are absent from the file, not written as zeros.
    minimal = write_spin_npz(tmp_path / "min.npz", imgname=arrays["imgname"], center=arrays["center"],
                             scale=arrays["scale"], part=arrays["part"])
    with np.load(minimal) as npz:
        assert sorted(npz.files) == ["center", "imgname", "part", "scale"]
    with pytest.raises(DataError, match="bad.npz, key 'scale'"):
        write_spin_npz(tmp_path / "bad.npz", imgname=arrays["imgname"], center=arrays["center"],
                       scale=arrays["scale"][:2], part=arrays["part"])
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, interruption):
    arrays = spin_arrays()
    path = write_spin_npz(tmp_path / "data.npz", **arrays)
    before = path.read_bytes()
    real = np.savez_compressed

    def cut_short(file, **values):
        real(file, **values)  # every byte of the new file is written ...
        raise interruption("Ctrl-C or a full disk")  # ... and the rename never comes

    monkeypatch.setattr(np, "savez_compressed", cut_short)
    with pytest.raises(interruption):
        write_spin_npz(path, **spin_arrays(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]  # no data.npz.tmp.npz
    assert path.read_bytes() == before


def test_values_beyond_float32_read_as_inf_without_a_numpy_warning(tmp_path):
    import warnings

    arrays = spin_arrays()
    arrays["part"][1, 2, 0] = 1e300
    path = write_spin_npz(tmp_path / "data.npz", **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spin = load_spin_npz(path, tmp_path)
    assert spin.part[1, 2, 0] == np.inf  # the row checks name it (tests/test_bad_annotations.py)
