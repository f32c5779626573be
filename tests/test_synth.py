"""The synthetic benchmark at tiny sizes: SPIN format, determinism, caching, truth on the rendered body."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.cli import main as cli_main
from spin_ray.config import DataConfig, RunConfig, config_from_dict
from spin_ray.data import synth, synth_generator, synth_scene
from spin_ray.data.augment import crop_image, crop_matrix
from spin_ray.data.dataset import SpinImageDataset
from spin_ray.data.spin_format import load_spin_npz
from spin_ray.errors import ConfigError
from spin_ray.geometry import normalised_to_pixels
from spin_ray.render.renderer import MeshRenderer

SIZES = {"synth-3d": 5, "synth-itw": 4, "synth-test": 3}
IMAGE = 128


def tiny_config(cache, seed=3, **synth_settings) -> RunConfig:
    settings = dict(sizes=SIZES, image_size=IMAGE, chunk_size=3, seed=seed, workers=1, cache_dir=str(cache))
    settings.update(synth_settings)
    return RunConfig.model_validate({"synth": settings})


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("synth"))
    return cfg, synth.ensure_synthetic_data(cfg, progress=False)


def _npz(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _images(paths):
    root = paths["synth-3d"].parent
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.glob("images/*/*"))}


def test_files_load_in_spin_format_with_the_right_keys(generated):
    _, paths = generated
    assert set(paths) == set(SIZES)
    root = paths["synth-3d"].parent
    for split, n in SIZES.items():
        data = load_spin_npz(paths[split], root)
        assert len(data) == n and data.part.shape == (n, 24, 3) and data.openpose.shape == (n, 25, 3)
        assert all(data.image_path(i).is_file() for i in range(n))
        keys = set(_npz(paths[split]))
        if split == "synth-itw":
            assert not keys & {"pose", "shape", "S", "has_smpl", "gender", "cam_t"}
            assert not data.has_smpl.any() and not data.has_3d.any()
        else:
            assert {"pose", "shape", "S", "gender", "cam_t", "focal_length"} <= keys
            assert data.has_smpl.all() and data.has_3d.all()
            assert data.S.shape == (n, 24, 4) and np.all(data.S[..., 3] == 1.0)
            assert data.pose.shape == (n, 72) and data.betas.shape == (n, 10)
        assert np.isin(data.part[..., 2], (0.0, 1.0)).all()
        kept = data.openpose[..., 2] > 0
        assert kept.any() and np.all((data.openpose[..., 2][kept] > 0.3) & (data.openpose[..., 2][kept] < 1.0))
        assert np.all(data.openpose[~kept] == 0.0)
        assert np.all((data.center >= 0) & (data.center < IMAGE)) and np.all(data.scale > 0)


def test_same_seed_same_data_whatever_the_worker_count_and_cache_hits_skip_work(generated, tmp_path, monkeypatch):
    cfg, first = generated
    again = synth.ensure_synthetic_data(tiny_config(tmp_path, workers=2), progress=False)
    assert again["synth-3d"].parent.name == first["synth-3d"].parent.name  # same settings hash
    for split in SIZES:
        a, b = _npz(first[split]), _npz(again[split])
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split}:{key}")
    assert _images(first) == _images(again)

    def no_work(*args, **kwargs):
        raise AssertionError("a complete cache folder must not be generated again")

    monkeypatch.setattr(synth, "generate", no_work)
    assert synth.ensure_synthetic_data(cfg, progress=False) == first


def test_different_seeds_and_splits_differ(tmp_path, body):
    gen = synth_generator.SyntheticGenerator(tiny_config(tmp_path), body)
    other = synth_generator.SyntheticGenerator(tiny_config(tmp_path, seed=4), body)
    try:
        spec = synth_generator.ChunkSpec("synth-3d", 0, 2, 0)
        a, b = gen.render_chunk(spec), other.render_chunk(spec)
        test = gen.render_chunk(synth_generator.ChunkSpec("synth-test", 0, 2, 0))
    finally:
        gen.close()
        other.close()
    assert not np.allclose(a.pose, b.pose) and not np.array_equal(a.images, b.images)
    assert not np.allclose(a.pose, test.pose)
    # No two images alike, backgrounds included.
    assert not np.array_equal(a.images[0][~a.masks[0] & ~a.masks[1]], a.images[1][~a.masks[0] & ~a.masks[1]])
    assert tiny_config(tmp_path).synth != tiny_config(tmp_path, seed=4).synth
    assert synth.settings_hash(tiny_config(tmp_path), "x") != synth.settings_hash(tiny_config(tmp_path, seed=4), "x")
    assert synth.settings_hash(tiny_config(tmp_path), "x") == synth.settings_hash(tiny_config(tmp_path, workers=2), "x")


def _silhouettes(body, data, cam_t, focal):
    """Re-render each sample's silhouette from its stored truth (pose, shape, camera)."""
    with torch.no_grad():
        verts = body(axis_angle_pose_to_rotmats(torch.from_numpy(data.pose)), torch.from_numpy(data.betas)).vertices
    with MeshRenderer(IMAGE, IMAGE, body.faces) as renderer:
        return np.stack([renderer.silhouette(verts[i].numpy(), cam_t[i], float(focal[i])) for i in range(len(data))])


def _near_mask(mask, xy, radius=1):
    """Whether the mask is set within `radius` pixels of each point (K,2)."""
    cols, rows = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    hit = np.zeros(len(xy), bool)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = np.clip(rows + dr, 0, mask.shape[0] - 1), np.clip(cols + dc, 0, mask.shape[1] - 1)
            hit |= mask[r, c]
    return hit


def test_ground_truth_projects_onto_the_rendered_body(generated, body):
    _, paths = generated
    extra = _npz(paths["synth-3d"])
    data = load_spin_npz(paths["synth-3d"], paths["synth-3d"].parent)
    masks = _silhouettes(body, data, extra["cam_t"], extra["focal_length"])
    # S is the camera-frame truth: projecting it gives the dataset keypoints exactly.
    uv = extra["focal_length"][:, None, None] * data.S[..., :2] / data.S[..., 2:3] + IMAGE / 2
    np.testing.assert_allclose(uv, data.part[..., :2], atol=1e-3)
    visible = data.part[..., 2] > 0
    assert visible.mean() > 0.6
    for i in range(len(data)):
        xy = data.part[i, visible[i], :2]
        assert np.all((xy >= -0.5) & (xy < IMAGE - 0.5))
        assert _near_mask(masks[i], xy).all(), f"sample {i}: a visible keypoint is off the body"
    # Every synthetic image shows the body where the silhouette is (not the background's colours).
    assert all(masks[i].sum() > 200 for i in range(len(data)))


def test_the_2d_only_split_keeps_its_truth_in_a_side_file_training_never_reads(generated, body, tmp_path):
    _, paths = generated
    itw = paths["synth-itw"]
    truth = synth.load_hidden_truth(itw)
    n = SIZES["synth-itw"]
    assert truth["pose"].shape == (n, 72) and truth["shape"].shape == (n, 10) and truth["S"].shape == (n, 24, 4)
    # The withheld S projects onto the split's 2D keypoints, row for row.
    data = load_spin_npz(itw, itw.parent)
    uv = truth["focal_length"][:, None, None] * truth["S"][..., :2] / truth["S"][..., 2:3] + IMAGE / 2
    np.testing.assert_allclose(uv, data.part[..., :2], atol=1e-3)
    # The training dataset does not see it.
    assert not data.has_smpl.any() and not data.has_3d.any()
    assert not synth.hidden_truth_path(paths["synth-3d"]).exists()
    with pytest.raises(synth.DataError, match="hidden truth"):
        synth.load_hidden_truth(tmp_path / "other.npz")


def test_crop_through_the_dataset_puts_keypoints_on_the_person(generated, body):
    _, paths = generated
    extra = _npz(paths["synth-test"])
    data = load_spin_npz(paths["synth-test"], paths["synth-test"].parent)
    masks = _silhouettes(body, data, extra["cam_t"], extra["focal_length"])
    res = 64
    dataset = SpinImageDataset(data, DataConfig(img_res=res), train=False)
    for i in range(len(data)):
        item = dataset[i]
        matrix = crop_matrix(data.center[i], float(data.scale[i]), res)
        crop_mask = crop_image(masks[i].astype(np.uint8) * 255, matrix, res) > 127
        keypoints = item["keypoints"].numpy()
        visible = keypoints[25:, 2] > 0
        xy = normalised_to_pixels(keypoints[25:, :2], res)[visible]
        assert visible.any() and _near_mask(crop_mask, xy).all(), f"sample {i}"
        # The person fills a good part of the crop.
        assert 0.05 < crop_mask.mean() < 0.9


def test_occlusion_marks_hidden_keypoints_invisible():
    parts = np.full((1, 8, 8), -1, np.int16)
    parts[0, 2:5, 2:5] = 0  # a patch of part 0 at depth 3
    depth_maps = np.full((1, 8, 8), 3.0, np.float32)
    uv = np.array([[[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [6.0, 6.0], [20.0, 3.0]]])
    depth = np.array([[3.1, 3.5, 3.1, 9.0, 9.0]])
    own = np.array([[True, False], [True, False], [False, True], [True, False], [True, False]])
    occluded = synth_scene.occluded_keypoints(uv, depth, depth_maps, parts, own, threshold=0.05, self_threshold=0.3)
    # own surface a little closer: visible; own surface far closer: hidden; another part: hidden;
    # nothing at the pixel: visible; outside the image: not "occluded" (that is truncation).
    assert occluded.tolist() == [[False, True, True, False, False]]
    assert synth_scene.inside_image(uv, 8).tolist() == [[True, True, True, True, False]]


def test_keypoint_parts_cover_a_joint_and_its_neighbours(body):
    from spin_ray.body.joints import SMPL_JOINT_NAMES, SMPL_PARENTS, SPIN49_NAMES

    labels = body.smpl.lbs_weights.argmax(dim=1).numpy()
    own = synth_scene.keypoint_parts(list(SMPL_PARENTS), labels, body.keypoint_regressor.numpy())
    assert own.shape == (49, 24)
    names = lambda k: {SMPL_JOINT_NAMES[j] for j in np.flatnonzero(own[SPIN49_NAMES.index(k)])}  # noqa: E731
    assert names("Right Knee") == {"right_hip", "right_knee", "right_ankle"}
    assert "head" in names("Nose") and "left_knee" not in names("Nose")


def test_detector_keypoints_are_noisy_confident_and_miss_outside_the_image():
    rng = np.random.default_rng(0)
    n = 400
    uv = rng.uniform(0, 200, (n, 25, 2))
    in_image = np.ones((n, 25), bool)
    in_image[:, 0] = False
    cfg = RunConfig().synth.model_copy(update={"detector_swap_prob": 0.0})
    det = synth_scene.detector_keypoints(uv, in_image, np.zeros((n, 25), bool), np.full(n, 200.0), rng, cfg)
    assert np.all(det[:, 0] == 0)
    kept = det[..., 2] > 0
    assert 0.9 < kept[:, 1:].mean() < 0.99  # ~5 % dropouts
    err = np.linalg.norm(det[..., :2] - uv, axis=-1)[kept]
    assert 1.0 < np.median(err) < 8.0  # a few pixels at a 200 px box
    conf = det[..., 2][kept]
    assert np.corrcoef(conf, err)[0, 1] < -0.2  # noisier points are less confident


def test_bad_sizes_and_unknown_splits_give_clear_errors(tmp_path, capsys):
    assert synth.parse_sizes("synth-3d=10, synth-test=2") == {"synth-3d": 10, "synth-test": 2}
    with pytest.raises(ConfigError, match="expected SPLIT=N"):
        synth.parse_sizes("synth-3d=ten")
    with pytest.raises(ConfigError, match="unknown synthetic split 'h36m'"):
        synth.parse_sizes("h36m=5")
    with pytest.raises(ConfigError, match="unknown synthetic split"):
        config_from_dict({"synth": {"sizes": {"coco": 3}}})
    assert cli_main(["synth", "--out", str(tmp_path), "--sizes", "synth-3d=-1"]) == 1
    assert "SPLIT=N" in capsys.readouterr().err


def test_cli_generates_into_out_and_draws_a_preview(tmp_path, capsys):
    import cv2

    args = ["synth", "--out", str(tmp_path / "cache"), "--sizes", "synth-3d=2,synth-itw=0,synth-test=0", "--quiet"]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("synth-3d: ") and lines[1].startswith("image root: ") and len(lines) == 2
    npz = Path(lines[0].split(": ", 1)[1])
    assert npz.is_file() and npz.parent == Path(lines[1].split(": ", 1)[1]) and (tmp_path / "cache") in npz.parents
    assert len(load_spin_npz(npz, npz.parent)) == 2
    preview = tmp_path / "preview.png"
    assert cli_main(["synth", "--preview", str(preview)]) == 0
    image = cv2.imread(str(preview))
    assert image is not None and image.shape == (3 * 160, 4 * 160, 3) and image.std() > 10


def test_a_config_on_the_embedded_default_finds_its_generated_data_and_says_when_there_is_none(generated, tmp_path):
    from spin_ray.curate.sample_paths import locations_from_config
    from spin_ray.errors import DataError

    cfg, paths = generated
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"synth": cfg.synth.model_dump(mode="json")}))
    found = {loc.name: loc for loc in locations_from_config(config_file)}
    assert set(found) == set(SIZES)
    assert all(found[s].npz == paths[s] and found[s].image_root == paths[s].parent for s in SIZES)
    assert synth.cached_synthetic_data(cfg) == paths
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"synth": cfg.synth.model_dump(mode="json") | {"seed": 99}}))
    with pytest.raises(DataError, match="not generated yet.*spin-ray synth"):
        locations_from_config(other)


def test_the_test_split_carries_lsp_style_masks_that_the_truth_mesh_redraws(generated, body):
    from spin_ray.data.synth_masks import PART_NAMES, read_label_png, vertex_part_labels

    _, paths = generated
    root = paths["synth-test"].parent
    extra = _npz(paths["synth-test"])
    assert "maskname" not in _npz(paths["synth-3d"])  # only the test split is scored on masks
    data = load_spin_npz(paths["synth-test"], root)
    rotmat = axis_angle_pose_to_rotmats(torch.from_numpy(data.pose))
    with torch.no_grad():
        vertices = body(rotmat, torch.from_numpy(data.betas)).vertices.numpy()
    labels = vertex_part_labels(body.smpl.lbs_weights.numpy())
    assert set(np.unique(labels)) == set(range(1, len(PART_NAMES)))
    with MeshRenderer(IMAGE, IMAGE, body.faces) as renderer:
        for i in range(len(data)):
            mask = read_label_png(root / str(extra["maskname"][i]))
            parts = read_label_png(root / str(extra["partname"][i]))
            assert str(extra["partname"][i]).endswith(f"{i:06d}_part_segmentation.png")
            assert np.array_equal(mask > 0, parts > 0) and set(np.unique(mask)) <= {0, 255}
            assert parts.max() < len(PART_NAMES) and (parts > 0).sum() > 200
            # The same flat-coloured labels drawn from the truth mesh and camera give the same map.
            drawn = renderer.part_colors(vertices[i], extra["cam_t"][i], float(extra["focal_length"][i]),
                                         vertex_colors=np.repeat(labels[:, None], 3, axis=1))[..., 0]
            assert (drawn == parts).mean() > 0.999
