"""Body model: file loading (npz, chumpy-style pkl), safety of the pkl loader, and joints-only == full forward."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import EXTRA_KEYPOINT_NAMES, SMPL_EXTRA_VERTEX_IDS
from spin_ray.body.model_file import embedded_model_path, load_body_model_arrays
from spin_ray_sim.random_model import random_model_arrays
from spin_ray.config import BodyConfig
from spin_ray.errors import BodyModelError, InputError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Writing files the way official SMPL files are written.


def _fake_chumpy_modules() -> dict[str, types.ModuleType]:
    """Modules `chumpy`, `chumpy.ch`, `chumpy.reordering` with classes that pickle like chumpy's."""

    class Ch:
        def __init__(self, x):
            self.x = x

        def __getstate__(self):
            # chumpy pickles its __dict__; the value lives under 'x'.
            return {"x": self.x, "_dirty_vars": set(), "dterms": ("x",)}

    class Select:
        def __init__(self, a, idxs):
            self.a, self.idxs = a, idxs

        def __getstate__(self):
            return {"a": self.a, "idxs": self.idxs}

    package, ch, reordering = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))
    for cls, module in ((Ch, ch), (Select, reordering)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    package.ch, package.reordering = ch, reordering
    return {"chumpy": package, "chumpy.ch": ch, "chumpy.reordering": reordering}


def write_chumpy_pkl(arrays: dict[str, np.ndarray], path: Path, expression_key: str | None = None) -> None:
    """Pickle like an official SMPL file: chumpy Ch arrays, csc J_regressor, numpy.core/scipy.sparse.csc paths."""
    modules = _fake_chumpy_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        Ch, Select = modules["chumpy.ch"].Ch, modules["chumpy.reordering"].Select
        data = {}
        for key, value in arrays.items():
            if key == "J_regressor":
                data[key] = scipy.sparse.csc_matrix(value.astype(np.float64))
            elif key in ("f", "kintree_table"):
                data[key] = value
            else:
                data[key] = Ch(value.astype(np.float64))
        data["J"] = Ch(np.zeros((24, 3)))
        data["unused_expression"] = Select(Ch(np.zeros(3)), np.arange(2))  # no 'x': skipped unless needed
        if expression_key is not None:
            data[expression_key] = Select(data[expression_key], np.arange(2))
        data["bs_style"] = "lbs"
        blob = pickle.dumps(data, protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    # The module paths of files written by old numpy/scipy.
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    blob = blob.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    assert b"chumpy.ch\nCh\n" in blob and b"scipy.sparse.csc\n" in blob and b"numpy.core.multiarray\n" in blob
    path.write_bytes(blob)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random model saved as .npz and chumpy-style .pkl, and a second, different model."""
    directory = tmp_path_factory.mktemp("body")
    arrays = random_model_arrays(num_vertices=300, seed=1)
    np.savez(directory / "model.npz", **arrays)
    write_chumpy_pkl(arrays, directory / "model.pkl")
    np.savez(directory / "other.npz", **random_model_arrays(num_vertices=300, seed=2))
    assert "chumpy" not in sys.modules
    return directory


@pytest.fixture(scope="module")
def model(model_dir) -> BodyModel:
    return BodyModel.from_file(model_dir / "model.npz")


def random_params(batch: int, num_betas: int, seed: int, dtype=torch.float32, scale: float = 0.5):
    """Random rotations (0.5 rad std axis-angle) and betas (std 1)."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(batch, 72, generator=g, dtype=torch.float64) * scale
    betas = torch.randn(batch, num_betas, generator=g, dtype=torch.float64)
    return axis_angle_pose_to_rotmats(pose).to(dtype), betas.to(dtype)


# ---------------------------------------------------------------------------------------------
# Joints-only forward vs full smplx forward.


@pytest.mark.parametrize("extras_method", ["vertices", "pairs"])
def test_joints_only_matches_full_forward(model_dir, extras_method):
    model = BodyModel.from_file(model_dir / "model.npz", extras_method=extras_method)
    assert model.extras_method == extras_method
    rotmats, betas = random_params(16, model.num_betas, seed=0)
    full = model(rotmats, betas)
    fast = model.keypoints(rotmats, betas)
    assert full.vertices.shape == (16, model.num_vertices, 3)
    assert full.joints.shape == (16, 24, 3) and fast.shape == (16, 49, 3)
    # The poses must actually move the keypoints, or the comparison proves nothing.
    rest = model.keypoints(torch.eye(3).expand(16, 24, 3, 3).contiguous(), betas)
    assert (fast - rest).norm(dim=-1).mean() > 0.05
    assert torch.allclose(fast, full.keypoints, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extras_method,buffer", [("vertices", "support_posedirs"), ("pairs", "pair_posedirs")])
def test_pose_correctives_are_used(model_dir, extras_method, buffer):
    """With posedirs zeroed the keypoints move: the joints-only path applies pose blendshapes."""
    model = BodyModel.from_file(model_dir / "model.npz", extras_method=extras_method)
    rotmats, betas = random_params(4, model.num_betas, seed=3)
    with_correctives = model.keypoints(rotmats, betas)
    getattr(model, buffer).zero_()
    assert (with_correctives - model.keypoints(rotmats, betas)).abs().max() > 1e-3


def test_zero_posedirs_are_skipped_and_still_match(tmp_path):
    arrays = random_model_arrays(num_vertices=200, seed=20)
    arrays["posedirs"][:] = 0.0  # like the open model
    np.savez(tmp_path / "noposedirs.npz", **arrays)
    for method, buffer in (("vertices", "support_posedirs"), ("pairs", "pair_posedirs")):
        model = BodyModel.from_file(tmp_path / "noposedirs.npz", extras_method=method)
        assert getattr(model, buffer) is None
        rotmats, betas = random_params(4, model.num_betas, seed=21)
        assert torch.allclose(model.keypoints(rotmats, betas), model(rotmats, betas).keypoints, atol=1e-5)


def test_auto_extras_method_picks_the_cheaper_form(tmp_path):
    few = random_model_arrays(num_vertices=2000, seed=22, keypoint_support=2)
    many = random_model_arrays(num_vertices=2000, seed=22, keypoint_support=300)
    np.savez(tmp_path / "few.npz", **few)
    np.savez(tmp_path / "many.npz", **many)
    sparse, dense = BodyModel.from_file(tmp_path / "few.npz"), BodyModel.from_file(tmp_path / "many.npz")
    assert sparse.extras_method == "vertices" and sparse.num_support_vertices <= 40
    assert dense.extras_method == "pairs" and dense.num_support_vertices > 1000
    rotmats, betas = random_params(4, 10, seed=23)
    assert torch.allclose(dense.keypoints(rotmats, betas), dense(rotmats, betas).keypoints, atol=1e-5)
    with pytest.raises(InputError, match="extras_method"):
        BodyModel.from_file(tmp_path / "few.npz", extras_method="mesh")


@pytest.mark.parametrize("extras_method", ["vertices", "pairs"])
def test_joints_only_matches_full_forward_float64_and_gradients(model_dir, extras_method):
    model = BodyModel.from_file(model_dir / "model.npz", dtype=torch.float64, extras_method=extras_method)
    rotmats, betas = random_params(4, model.num_betas, seed=1, dtype=torch.float64)
    weights = torch.randn(4, 49, 3, dtype=torch.float64)
    grads = []
    for path in (lambda r, b: model(r, b).keypoints, model.keypoints):
        r, b = rotmats.clone().requires_grad_(), betas.clone().requires_grad_()
        (path(r, b) * weights).sum().backward()
        grads.append((r.grad, b.grad))
    assert grads[0][0].abs().max() > 1e-3 and grads[0][1].abs().max() > 1e-3
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-9)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-9)


@pytest.mark.parametrize("extras_method", ["vertices", "pairs"])
def test_joints_only_gradcheck(model_dir, extras_method):
    model = BodyModel.from_file(model_dir / "model.npz", dtype=torch.float64, extras_method=extras_method)
    rotmats, betas = random_params(1, model.num_betas, seed=2, dtype=torch.float64)
    rotmats.requires_grad_()
    betas.requires_grad_()
    assert torch.autograd.gradcheck(lambda r, b: model.keypoints(r, b), (rotmats, betas), eps=1e-6, atol=1e-6)


def test_pkl_and_npz_load_the_same_model(model_dir):
    from_npz = load_body_model_arrays(model_dir / "model.npz")
    from_pkl = load_body_model_arrays(model_dir / "model.pkl")
    assert "chumpy" not in sys.modules
    for key in ("v_template", "faces", "shapedirs", "posedirs", "J_regressor", "weights", "parents",
                "keypoint_regressor", "J_regressor_h36m"):
        np.testing.assert_array_equal(getattr(from_npz, key), getattr(from_pkl, key), err_msg=key)
    assert from_npz.parents[0] == -1 and from_npz.parents[1] == 0
    assert from_npz.sha256 == from_pkl.sha256
    rotmats, betas = random_params(2, 10, seed=5)
    assert torch.allclose(BodyModel(from_pkl).keypoints(rotmats, betas), BodyModel(from_npz)(rotmats, betas).keypoints,
                          atol=1e-5)


def test_identity_hash_is_stable_and_distinguishes_models(model_dir):
    first = load_body_model_arrays(model_dir / "model.npz").sha256
    again = load_body_model_arrays(model_dir / "model.npz").sha256
    other = load_body_model_arrays(model_dir / "other.npz").sha256
    fewer_betas = load_body_model_arrays(model_dir / "model.npz", num_betas=5).sha256
    assert first == again and len(first) == 64
    assert len({first, other, fewer_betas}) == 3
    assert BodyModel.from_file(model_dir / "model.npz").identity == first


def test_arrays_are_read_only(model_dir):
    arrays = load_body_model_arrays(model_dir / "model.npz")
    with pytest.raises(ValueError):
        arrays.v_template[0, 0] = 1.0


def test_more_than_ten_betas(tmp_path):
    arrays = random_model_arrays(num_vertices=200, num_betas=16, seed=6)
    np.savez(tmp_path / "m16.npz", **arrays)
    model = BodyModel.from_file(tmp_path / "m16.npz", num_betas=16)
    assert model.num_betas == 16 and model.smpl.num_betas == 16
    rotmats, betas = random_params(3, 16, seed=7)
    assert torch.allclose(model.keypoints(rotmats, betas), model(rotmats, betas).keypoints, atol=1e-5)
    with pytest.raises(BodyModelError, match="16 shape components but body.num_betas is 20"):
        load_body_model_arrays(tmp_path / "m16.npz", num_betas=20)


def test_h36m_joints(model, model_dir):
    rotmats, betas = random_params(2, model.num_betas, seed=8)
    vertices = model(rotmats, betas).vertices
    h36m = model.h36m_joints(vertices)
    regressor = load_body_model_arrays(model_dir / "model.npz").J_regressor_h36m
    expected = torch.einsum("kv,bvc->bkc", torch.from_numpy(np.array(regressor)), vertices)
    assert h36m.shape == (2, 17, 3) and torch.allclose(h36m, expected, atol=1e-6)
    with pytest.raises(InputError, match=r"expected \(B, 300, 3\)"):
        model.h36m_joints(vertices[:, :10])


def test_h36m_joints_missing_regressor(tmp_path):
    arrays = random_model_arrays(num_vertices=100, seed=9)
    del arrays["J_regressor_h36m"]
    np.savez(tmp_path / "noh36m.npz", **arrays)
    model = BodyModel.from_file(tmp_path / "noh36m.npz")
    assert not model.has_h36m_regressor
    with pytest.raises(BodyModelError, match="body.joint_regressor_h36m"):
        model.h36m_joints(torch.zeros(1, 100, 3))


# ---------------------------------------------------------------------------------------------
# Official-SMPL-style pkl without a keypoint regressor: assembled from vertex ids + J_regressor_extra.


@pytest.fixture(scope="module")
def smpl_sized_pkl(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("smpl")
    arrays = random_model_arrays(num_vertices=6890, seed=10, with_keypoint_regressor=False)
    write_chumpy_pkl(arrays, directory / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl")
    rng = np.random.default_rng(0)
    extra = np.zeros((9, 6890))
    extra[np.arange(9)[:, None], rng.integers(0, 6890, size=(9, 5))] = 0.2
    np.save(directory / "J_regressor_extra.npy", extra)
    return directory / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"


def test_official_pkl_needs_joint_regressor_extra(smpl_sized_pkl):
    with pytest.raises(BodyModelError, match="J_regressor_extra.npy.*body.joint_regressor_extra") as info:
        load_body_model_arrays(smpl_sized_pkl)
    assert "\n" not in str(info.value)
    with pytest.raises(BodyModelError, match="does not exist"):
        load_body_model_arrays(smpl_sized_pkl, joint_regressor_extra=smpl_sized_pkl.parent / "missing.npy")


def test_official_pkl_assembles_keypoint_regressor(smpl_sized_pkl):
    extra_file = smpl_sized_pkl.parent / "J_regressor_extra.npy"
    arrays = load_body_model_arrays(smpl_sized_pkl, joint_regressor_extra=extra_file)
    regressor = arrays.keypoint_regressor
    assert regressor.shape == (20, 6890)
    for row, name in enumerate(EXTRA_KEYPOINT_NAMES[:11]):
        assert regressor[row, SMPL_EXTRA_VERTEX_IDS[name]] == 1.0 and regressor[row].sum() == 1.0
    np.testing.assert_allclose(regressor[11:], np.load(extra_file), rtol=1e-6)
    model = BodyModel(arrays)
    rotmats, betas = random_params(4, 10, seed=11)
    assert torch.allclose(model.keypoints(rotmats, betas), model(rotmats, betas).keypoints, atol=1e-5)


def test_from_config(smpl_sized_pkl):
    cfg = BodyConfig(model_path=smpl_sized_pkl, joint_regressor_extra=smpl_sized_pkl.parent / "J_regressor_extra.npy",
                     num_betas=8)
    model = BodyModel.from_config(cfg)
    assert model.num_betas == 8 and model.num_vertices == 6890 and model.num_support_vertices <= 11 + 45


# ---------------------------------------------------------------------------------------------
# Unsafe and broken files.


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'touch {marker}'\ntR.",
    b"\x80\x02cposix\nsystem\nq\x00X\x00\x00\x00\x00\x85R.",
    b"(dp0\nS'v_template'\ncsubprocess\ncall\n(S'touch {marker}'\ntR.",
])
def test_pkl_refuses_unexpected_classes(tmp_path, payload):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    payload = payload.replace(b"{marker}", str(marker).encode())
    if payload.startswith(b"\x80\x02"):
        command = f"touch {marker}".encode()
        payload = payload.replace(b"X\x00\x00\x00\x00", b"X" + len(command).to_bytes(4, "little") + command)
    path.write_bytes(payload)
    with pytest.raises(BodyModelError, match=r"refusing to unpickle class (os|posix|subprocess)\.(system|call)") as info:
        load_body_model_arrays(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def _one_line_error(path: Path, *names: str, **kwargs) -> str:
    with pytest.raises(BodyModelError) as info:
        load_body_model_arrays(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for name in names:
        assert name in message, message
    return message


@pytest.mark.parametrize("name", ["model.npz", "model.pkl"])
def test_truncated_file(model_dir, tmp_path, name):
    data = (model_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(path)


def test_pkl_with_chumpy_expression_for_a_needed_key(tmp_path):
    write_chumpy_pkl(random_model_arrays(num_vertices=50, seed=15), tmp_path / "expr.pkl", expression_key="weights")
    _one_line_error(tmp_path / "expr.pkl", "'weights'", "chumpy.reordering.Select")


def test_missing_key(tmp_path):
    arrays = random_model_arrays(num_vertices=50, seed=12)
    del arrays["weights"]
    np.savez(tmp_path / "noweights.npz", **arrays)
    _one_line_error(tmp_path / "noweights.npz", "missing key 'weights'")


def test_wrong_shape(tmp_path):
    arrays = random_model_arrays(num_vertices=50, seed=13)
    arrays["posedirs"] = arrays["posedirs"].reshape(-1, 207).T  # the (207, 3V) layout
    np.savez(tmp_path / "posedirs.npz", **arrays)
    _one_line_error(tmp_path / "posedirs.npz", "'posedirs'", "(207, 150)", "(50, 3, 207)")
    arrays = random_model_arrays(num_vertices=50, seed=13)
    arrays["keypoint_regressor"] = arrays["keypoint_regressor"][:19]
    np.savez(tmp_path / "kp.npz", **arrays)
    _one_line_error(tmp_path / "kp.npz", "'keypoint_regressor'", "(20, 50)")


def test_nan_in_model(tmp_path):
    arrays = random_model_arrays(num_vertices=50, seed=14)
    arrays["shapedirs"][3, 1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    _one_line_error(tmp_path / "nan.npz", "'shapedirs'", "NaN")


def test_missing_file_and_unknown_format(tmp_path):
    _one_line_error(tmp_path / "absent.npz", "does not exist")
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    _one_line_error(tmp_path / "model.obj", ".npz or .pkl")


# ---------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize("method", ["forward", "keypoints"])
def test_bad_inputs_raise_input_error(model, method):
    call = getattr(model, method)
    rotmats, betas = random_params(2, model.num_betas, seed=15)
    with pytest.raises(InputError, match=r"rotmats has shape \(2, 72\), expected rotmats \(B, 24, 3, 3\)"):
        call(torch.zeros(2, 72), betas)
    with pytest.raises(InputError, match=r"betas has shape \(2, 7\).*betas \(B, 10\)"):
        call(rotmats, betas[:, :7])
    with pytest.raises(InputError, match=r"betas has shape \(3, 10\)"):
        call(rotmats, torch.zeros(3, 10))
    with pytest.raises(InputError, match="float64"):
        call(rotmats.double(), betas.double())
    bad = betas.clone()
    bad[1, 4] = float("nan")
    with pytest.raises(InputError, match=r"NaN or infinite parameters in batch rows \[1\]"):
        call(rotmats, bad)
    with pytest.raises(InputError, match=r"expects tensors rotmats \(B, 24, 3, 3\).*got ndarray"):
        call(rotmats.numpy(), betas)


def test_axis_angle_helper_validates():
    with pytest.raises(InputError, match=r"\(B, 72\)"):
        axis_angle_pose_to_rotmats(torch.zeros(2, 69))
    rotmats = axis_angle_pose_to_rotmats(torch.zeros(2, 72))
    assert torch.equal(rotmats, torch.eye(3).expand(2, 24, 3, 3))


# ---------------------------------------------------------------------------------------------
# The embedded open model.


@pytest.mark.skipif(not embedded_model_path().is_file(),
                    reason=f"embedded open model not built yet ({embedded_model_path()})")
def test_embedded_model_joints_only_matches_full_forward():
    model = BodyModel.embedded()
    assert model.identity == BodyModel.from_config(BodyConfig()).identity
    rotmats, betas = random_params(8, model.num_betas, seed=16)
    full = model(rotmats, betas)
    fast = model.keypoints(rotmats, betas)
    assert torch.allclose(fast, full.keypoints, atol=1e-5, rtol=0)
    # A person's size: 1.2-2.2 m from the lowest to the highest rest vertex.
    height = float(model.smpl.v_template[:, 1].max() - model.smpl.v_template[:, 1].min())
    assert 1.2 < height < 2.2
