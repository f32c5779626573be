"""Checks of the committed open body model (spin_ray/body/assets/open_body_model.npz) through smplx."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spin_ray.body.joints import (
    EXTRA_KEYPOINT_NAMES,
    H36M17_NAMES,
    SMPL_FLIP_PERM,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
)
from spin_ray.errors import BodyModelError
from tools_loader import load_tool

builder = load_tool("build_open_model")

torch.set_num_threads(1)

ASSET = builder.DEFAULT_OUT
EXPECTED_KEYS = {
    "v_template", "f", "shapedirs", "posedirs", "weights", "kintree_table", "J_regressor",
    "keypoint_regressor", "J_regressor_h36m", "model_name", "source",
}
HAS_ANNY = importlib.util.find_spec("anny") is not None


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(ASSET, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def body(arrays):
    return builder.smplx_model(arrays)


def shaped(body, betas: torch.Tensor):
    """smplx output at zero pose for a batch of betas (smplx's default pose tensors have batch 1)."""
    count = betas.shape[0]
    with torch.no_grad():
        return body(betas=betas, global_orient=torch.zeros(count, 3), body_pose=torch.zeros(count, 69))


def keypoints(arrays: dict[str, np.ndarray], vertices: np.ndarray) -> dict[str, np.ndarray]:
    points = np.einsum("kv,...vd->...kd", arrays["keypoint_regressor"], vertices)
    return {name: points[..., i, :] for i, name in enumerate(EXTRA_KEYPOINT_NAMES)}


def test_file_has_smpl_layout(arrays):
    assert set(arrays) == EXPECTED_KEYS
    assert ASSET.stat().st_size <= 5e6
    num_vertices = arrays["v_template"].shape[0]
    assert arrays["v_template"].shape == (num_vertices, 3)
    assert arrays["shapedirs"].shape == (num_vertices, 3, 10)
    assert arrays["posedirs"].shape == (num_vertices, 3, 207) and not arrays["posedirs"].any()
    assert arrays["weights"].shape == (num_vertices, 24)
    assert arrays["J_regressor"].shape == (24, num_vertices)
    assert arrays["keypoint_regressor"].shape == (len(EXTRA_KEYPOINT_NAMES), num_vertices)
    assert arrays["J_regressor_h36m"].shape == (len(H36M17_NAMES), num_vertices)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J_regressor", "keypoint_regressor", "J_regressor_h36m"):
        assert arrays[key].dtype == np.float32, key
    faces = arrays["f"]
    assert faces.dtype == np.int32 and faces.min() == 0 and faces.max() == num_vertices - 1
    assert arrays["kintree_table"].dtype == np.int64
    assert arrays["kintree_table"][0, 0] == builder.SMPL_ROOT_PARENT
    assert tuple(arrays["kintree_table"][0, 1:]) == SMPL_PARENTS[1:]
    np.testing.assert_allclose(arrays["weights"].sum(1), 1.0, atol=1e-5)
    assert str(arrays["model_name"]) == builder.MODEL_NAME and "Anny" in str(arrays["source"])


def test_zero_pose_and_betas_give_the_template(arrays, body):
    with torch.no_grad():
        out = body(betas=torch.zeros(1, 10))
    np.testing.assert_allclose(out.vertices[0].numpy(), arrays["v_template"], atol=1e-6)
    np.testing.assert_allclose(out.joints[0, :24].numpy(), arrays["J_regressor"] @ arrays["v_template"], atol=1e-5)


def test_heights_of_normal_betas_are_adult(body):
    betas = torch.randn(1000, 10, generator=torch.Generator().manual_seed(0))
    vertices = shaped(body, betas).vertices
    heights = (vertices[..., 1].amax(1) - vertices[..., 1].amin(1)).numpy()
    low, high = np.percentile(heights, [5, 95])
    assert 1.5 <= low and high <= 1.9, (low, high)
    assert high - low > 0.15, "shape directions barely change the height"


def test_random_poses_give_sound_meshes(arrays, body):
    generator = torch.Generator().manual_seed(1)
    pose = 0.3 * torch.randn(32, 72, generator=generator)
    betas = torch.randn(32, 10, generator=generator)
    with torch.no_grad():
        out = body(global_orient=pose[:, :3], body_pose=pose[:, 3:], betas=betas)
    vertices = out.vertices.numpy()
    assert np.isfinite(vertices).all() and np.isfinite(out.joints.numpy()).all()
    extent = vertices.max(1) - vertices.min(1)
    assert (extent.max(1) > 1.0).all() and (extent.max(1) < 2.5).all()
    faces = arrays["f"].astype(np.int64)

    def edge_lengths(v: np.ndarray) -> np.ndarray:
        return np.linalg.norm(v[:, faces[:, 0]] - v[:, faces[:, 1]], axis=-1)

    stretch = edge_lengths(vertices) / edge_lengths(shaped(body, betas).vertices.numpy())
    # Plain LBS pinches a few edges at toes and hips at 0.3 rad; skinning that tore the mesh
    # apart or collapsed it (wrong weights, wrong joints) would move the bulk of the edges.
    assert 0.95 < np.median(stretch) < 1.05
    assert np.percentile(stretch, 0.1) > 0.3 and np.percentile(stretch, 99.9) < 3.0
    assert edge_lengths(vertices).max() < 0.25


def test_regressor_rows_sum_to_one(arrays):
    for key in ("J_regressor", "keypoint_regressor", "J_regressor_h36m"):
        np.testing.assert_allclose(arrays[key].sum(1), 1.0, atol=1e-4, err_msg=key)
    # Dataset keypoints are averages of small vertex sets (the head's uses the dense ear rows).
    for name in EXTRA_KEYPOINT_NAMES[11:]:
        row = arrays["keypoint_regressor"][EXTRA_KEYPOINT_NAMES.index(name)]
        assert row.min() >= 0, name
        if name != "head_h36m":
            assert 0 < np.count_nonzero(row) <= 200, name


def test_h36m_rows_come_from_joint_and_keypoint_rows(arrays):
    h36m = arrays["J_regressor_h36m"]
    from_keypoints = {"pelvis", "spine", "thorax", "neck_nose", "head"}
    for i, name in enumerate(H36M17_NAMES):
        if name not in from_keypoints:
            np.testing.assert_array_equal(h36m[i], arrays["J_regressor"][SMPL_JOINT_NAMES.index(name)])
    kp = arrays["keypoint_regressor"]
    np.testing.assert_array_equal(h36m[H36M17_NAMES.index("pelvis")], kp[EXTRA_KEYPOINT_NAMES.index("pelvis_mpii")])
    np.testing.assert_array_equal(h36m[H36M17_NAMES.index("head")], kp[EXTRA_KEYPOINT_NAMES.index("head_h36m")])


def test_joints_are_mirror_symmetric(arrays):
    joints = arrays["J_regressor"] @ arrays["v_template"]
    mirrored = joints[list(SMPL_FLIP_PERM)] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(joints, mirrored, atol=2e-3)


@pytest.mark.parametrize("beta_scale", [0.0, 2.0])
def test_keypoints_are_anatomically_placed(arrays, body, beta_scale):
    betas = beta_scale * torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    out = shaped(body, betas)
    vertices = out.vertices.numpy()
    k = keypoints(arrays, vertices)
    j = {name: out.joints[:, i].numpy() for i, name in enumerate(SMPL_JOINT_NAMES)}
    y = lambda p: p[..., 1]  # noqa: E731 (readability of the chain below)
    assert (y(k["head_top"]) > y(k["right_eye"])).all() and (y(k["right_eye"]) > y(k["nose"])).all()
    assert (y(k["nose"]) > y(k["jaw_h36m"])).all() and (y(k["jaw_h36m"]) > y(k["neck_lsp"])).all()
    assert (y(k["head_top"]) > y(k["head_h36m"])).all() and (y(k["head_h36m"]) > y(k["jaw_h36m"])).all()
    assert (y(k["neck_lsp"]) > y(k["thorax_mpii"])).all() and (y(k["thorax_mpii"]) > y(k["spine_h36m"])).all()
    assert (y(k["spine_h36m"]) > y(k["pelvis_mpii"])).all()
    assert (np.abs(k["head_top"][..., 1] - vertices[..., 1].max(1)) < 0.02).all()
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for name in EXTRA_KEYPOINT_NAMES:
            if name.startswith(side):
                assert (sign * k[name][..., 0] > 0.02).all(), name
        for name in SMPL_JOINT_NAMES:
            if name.startswith(side):
                assert (sign * j[name][..., 0] > 0.0).all(), name
        # Toes ahead of heels, heels behind ankles; LSP hips below and outside SMPL's hips.
        assert (k[f"{side}_big_toe"][..., 2] > k[f"{side}_heel"][..., 2] + 0.15).all()
        assert (k[f"{side}_heel"][..., 2] < j[f"{side}_ankle"][..., 2]).all()
        assert (y(k[f"{side}_hip_lsp"]) < y(j[f"{side}_hip"])).all()
        assert (sign * k[f"{side}_hip_lsp"][..., 0] > sign * j[f"{side}_hip"][..., 0]).all()
    # Nose and chin in front of the neck; pelvis point between the hips.
    assert (k["nose"][..., 2] > j["neck"][..., 2] + 0.05).all() and (k["jaw_h36m"][..., 2] > j["neck"][..., 2]).all()
    between = 0.5 * (j["left_hip"] + j["right_hip"])
    assert (np.linalg.norm(k["pelvis_mpii"] - between, axis=-1) < 0.05).all()


def test_npz_bytes_are_deterministic(arrays, tmp_path):
    builder.write_npz(tmp_path / "a.npz", arrays)
    builder.write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["shapedirs"], arrays["shapedirs"])


def test_missing_anny_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "anny", None)
    with pytest.raises(BodyModelError, match=r"pip install -e '\.\[anny\]'"):
        builder.load_anny(None)


def _anny_cache() -> Path:
    return Path(os.environ.get("ANNY_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache" / "anny"))


@pytest.mark.skipif(not HAS_ANNY, reason="anny not installed (pip install -e '.[anny]')")
def test_model_matches_anny(arrays):
    options = builder.BuildOptions()
    model = builder.load_anny(_anny_cache())
    phenotypes = builder.sample_adult_phenotypes(model, options.num_shapes + options.num_held_out, options.seed)
    phenotype = builder.template_phenotype(phenotypes, options)
    vertices, _ = builder.t_posed_bodies(model, phenotype)
    # The template is Anny's T-posed body of the mean phenotype (built with the default options).
    distance = np.linalg.norm(vertices[0].numpy() - arrays["v_template"], axis=1)
    assert distance.max() <= 1e-4, distance.max()
    # Posed: the merged skinning reproduces Anny's except around merged groups' pivots (toes, fingers).
    posed = builder.pose_agreement_mm(model, arrays, phenotype, sigma=0.2, count=4, seed=3)
    assert posed.mean() < 3.0 and torch.quantile(posed, 0.9) < 6.0, (posed.mean(), posed.max())
