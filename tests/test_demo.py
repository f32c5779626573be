"""spin-ray demo on a rendered synthetic person with its projected BODY_25 keypoints as OpenPose JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.cli import main
from spin_ray.config import CameraConfig, RunConfig
from spin_ray.demo.inputs import box_from_keypoints, select_person
from spin_ray.demo.predict import fitting_keypoints
from spin_ray.demo.views import rotate_about_vertical
from spin_ray_sim.fitting_problems import synthetic_problems
from spin_ray.geometry import perspective_projection
from spin_ray.model.hmr import HMR
from spin_ray.render.renderer import MeshRenderer
from spin_ray.train.checkpoint import save_checkpoint

WIDTH, HEIGHT = 320, 280
FOCAL = 4000.0  # the person is smaller in the photo than in the 224 px crop
PRINCIPAL = (170.0, 135.0)
BACKGROUND = 90
PERSON_SUFFIXES = ("_overlay_crop.png", "_side.png", ".obj")


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def scene(tmp_path_factory, body):
    """A photo of one person in part colours, its silhouette, and OpenPose JSON with a weaker second person."""
    problem = synthetic_problems(body, 1, torch.Generator().manual_seed(3), CameraConfig())
    return render_scene(tmp_path_factory.mktemp("demo_scene"), body, problem.pose, problem.betas, problem.camera_t)


def render_scene(folder: Path, body, pose: torch.Tensor, betas: torch.Tensor, camera_t: torch.Tensor) -> dict:
    """The photo, silhouette and OpenPose JSON of one person (pose (1,72), betas, camera_t) seen by FOCAL."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        out = body(axis_angle_pose_to_rotmats(pose), betas)
        keypoints = perspective_projection(out.keypoints, camera_t, FOCAL,
                                           camera_center=torch.tensor(PRINCIPAL)[None])[0, :25].numpy()
    colours = np.random.default_rng(0).uniform(0.2, 1.0, (24, 3))[body.smpl.lbs_weights.argmax(1).numpy()]
    vertices, translation = out.vertices[0].numpy(), camera_t[0].numpy()
    with MeshRenderer(WIDTH, HEIGHT, body.faces) as renderer:
        image = renderer.part_colors(vertices, translation, FOCAL, PRINCIPAL, vertex_colors=colours)
        silhouette = renderer.silhouette(vertices, translation, FOCAL, PRINCIPAL)
    image[~silhouette] = BACKGROUND
    cv2.imwrite(str(folder / "person.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    person = np.concatenate([keypoints, np.full((25, 1), 0.9)], axis=1)
    person[17] = 0.0  # an undetected ear, written as OpenPose does
    ghost = np.concatenate([np.random.default_rng(1).uniform(0, 100, (25, 2)), np.full((25, 1), 0.1)], axis=1)
    write_openpose(folder / "person.json", [ghost, person])
    return {"folder": folder, "image": folder / "person.png", "json": folder / "person.json", "rgb": image,
            "silhouette": silhouette, "keypoints": person}


def write_openpose(path: Path, people: list[np.ndarray]) -> Path:
    """OpenPose's --write_json layout for the given (25,3) keypoint arrays."""
    path.write_text(json.dumps({"version": 1.3, "people": [
        {"person_id": [-1], "pose_keypoints_2d": p.reshape(-1).tolist(), "face_keypoints_2d": []} for p in people]}))
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["demo", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def outputs(out: Path, people=(1,), stem: str = "person") -> list[Path]:
    """The overlay of everybody, then each person's crop overlay, side view and .obj."""
    return [out / f"{stem}_overlay.png"] + [out / f"{stem}_{i}{suffix}" for i in people for suffix in PERSON_SUFFIXES]


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    vertices = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    faces = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
    return vertices, faces


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_refined_mesh_covers_the_person(scene, body, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--refine", "--out", out)
    assert code == 0
    assert "person 1:" in stdout  # the confident person, not the ghost listed first
    before, after = map(float, re.search(r"ranking error ([\d.]+) -> ([\d.]+)", stdout).groups())
    assert after < before / 3
    for path in outputs(out):
        assert f"wrote {path}" in stdout and path.is_file()

    overlay = read_rgb(out / "person_overlay.png")
    assert overlay.shape == scene["rgb"].shape
    covered = (overlay != scene["rgb"]).any(axis=2)  # overlay() leaves pixels off the mesh bit-exact
    assert iou(covered, scene["silhouette"]) > 0.5

    crop = read_rgb(out / "person_1_overlay_crop.png")
    assert crop.shape == (224, 224, 3)
    side = read_rgb(out / "person_1_side.png")
    side_mask = (side != 255).any(axis=2)
    assert side.shape == (224, 224, 3) and side[0, 0].tolist() == [255, 255, 255] and side_mask.sum() > 500

    vertices, faces = read_obj(out / "person_1.obj")
    assert vertices.shape == (body.num_vertices, 3) and faces.shape == body.faces.shape
    np.testing.assert_array_equal(faces - 1, body.faces)  # 1-based
    # Seen from the side (same crop camera), the arms-out person is narrower than from the front.
    front_width = np.ptp(5000.0 * vertices[:, 0] / vertices[:, 2])
    assert np.ptp(np.flatnonzero(side_mask.any(axis=0))) < 0.8 * front_width
    # Camera frame: projecting the .obj with the photo's camera (the crop camera scaled to the box) hits the person.
    box_side = float(re.search(r"side ([\d.]+) px", stdout).group(1))
    centre = np.array([float(v) for v in re.search(r"center \(([\d.]+), ([\d.]+)\)", stdout).groups()])
    uv = 5000.0 * box_side / 224 * vertices[:, :2] / vertices[:, 2:] + centre
    rows = np.clip(np.rint(uv[:, 1]).astype(int), 0, HEIGHT - 1)
    cols = np.clip(np.rint(uv[:, 0]).astype(int), 0, WIDTH - 1)
    assert scene["silhouette"][rows, cols].mean() > 0.7


def test_refine_finds_a_wide_stride_from_a_mean_pose_guess(body, tmp_path, capsys):
    # Issue 20's photo: legs wide apart, a network whose guess is the mean pose (zeroed output layers).
    problem = synthetic_problems(body, 1, torch.Generator().manual_seed(3), CameraConfig())
    pose = problem.pose.clone()
    pose[0, 3:9] = torch.tensor([-0.7, 0.0, 0.45, 0.6, 0.0, -0.45])  # left hip forward and out, right back and out
    pose[0, 9 + 3: 9 + 6] = torch.tensor([0.8, 0.0, 0.0])  # left knee bent
    stride = render_scene(tmp_path / "stride", body, pose, problem.betas, problem.camera_t)
    cfg = RunConfig.model_validate({"data": {"img_res": 64}})
    state = HMR.from_config(cfg.network, cfg.body.num_betas).state_dict()
    for name in ("dec_pose", "dec_betas", "dec_camera"):
        state[f"{name}.weight"].zero_()
        state[f"{name}.bias"].zero_()
    checkpoint = save_checkpoint(tmp_path / "mean.pt", {"model": state, "config": cfg.model_dump(mode="json")})
    distances = {}
    for recipe in ("spin", "multistart"):
        code, stdout, _ = run(capsys, stride["image"], "--keypoints", stride["json"], "--checkpoint", checkpoint,
                              "--refine", "--recipe", recipe, "--out", tmp_path / recipe)
        assert code == 0, stdout
        distances[recipe] = float(re.search(r"mean keypoint distance ([\d.]+) px", stdout).group(1))
        assert ": valid" in stdout
    assert distances["multistart"] < 3.0, distances  # the legs follow the stance
    assert distances["multistart"] < 0.5 * distances["spin"], distances


def test_without_checkpoint_or_refine_uses_the_shipped_regressor_and_says_so(scene, tmp_path, capsys):
    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--out", tmp_path)
    assert code == 0
    assert "no --checkpoint: the shipped pretrained regressor" in stdout and "SMPLify" not in stdout
    assert all(path.is_file() for path in outputs(tmp_path))
    comment = (tmp_path / "person_1.obj").read_text().splitlines()[0]
    assert "the shipped pretrained regressor" in comment and "mean parameters" not in comment


def test_help_names_the_shipped_regressor_as_the_default_network(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "without one: the shipped pretrained regressor" in text
    assert "mean parameters without one" not in text


def test_checkpoint_weights_and_config_are_used(scene, tmp_path, capsys):
    cfg = RunConfig.model_validate({"data": {"img_res": 64}})
    model = HMR.from_config(cfg.network, cfg.body.num_betas)
    state = model.state_dict()
    state["init_camera"] = torch.tensor([0.45, 0.0, 0.0])  # half the mean scale: twice as far away
    # No camera correction from the random backbone, so the network's camera is exactly init_camera.
    state["dec_camera.weight"].zero_()
    state["dec_camera.bias"].zero_()
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"model": state, "config": cfg.model_dump(mode="json")})
    x, y, w, h = 100.0, 20.0, 140.0, 230.0

    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--checkpoint", checkpoint,
                          "--bbox", x, y, w, h, "--out", tmp_path / "net")
    assert code == 0, stdout
    assert "network input 64 px" in stdout and "no --checkpoint" not in stdout
    assert f"box center ({x + w / 2:.1f}, {y + h / 2:.1f}), side {max(w, h):.1f} px" in stdout
    mean_state = HMR.from_config(cfg.network, cfg.body.num_betas).state_dict()  # the mean camera, no correction
    mean_state["dec_camera.weight"].zero_()
    mean_state["dec_camera.bias"].zero_()
    mean_checkpoint = save_checkpoint(tmp_path / "mean.pt", {"model": mean_state, "config": cfg.model_dump(mode="json")})
    code, _, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--checkpoint", mean_checkpoint,
                     "--bbox", x, y, w, h, "--out", tmp_path / "mean")
    assert code == 0
    depth_net = read_obj(tmp_path / "net" / "person_1.obj")[0][:, 2].mean()
    depth_mean = read_obj(tmp_path / "mean" / "person_1.obj")[0][:, 2].mean()
    assert depth_net / depth_mean == pytest.approx(2.0, rel=0.02)

    payload = torch.load(checkpoint, weights_only=True)
    payload["identity"] = {"body_model": "another-body-model"}
    torch.save(payload, tmp_path / "other_body.pt")
    code, _, err = run(capsys, scene["image"], "--keypoints", scene["json"], "--checkpoint",
                       tmp_path / "other_body.pt", "--out", tmp_path / "refused")
    assert code == 1 and "trained with body model another-body-model" in err
    assert not (tmp_path / "refused").exists()


def test_a_rejected_fit_is_said_in_the_terminal_and_on_every_picture(scene, tmp_path, capsys):
    # The checkpoint's config sets the validity threshold below any real fit's error: the fit is rejected.
    cfg = RunConfig.model_validate({"data": {"img_res": 64}, "fitting": {"valid_error_threshold": 1e-6}})
    model = HMR.from_config(cfg.network, cfg.body.num_betas)
    checkpoint = save_checkpoint(tmp_path / "strict.pt", {"model": model.state_dict(),
                                                          "config": cfg.model_dump(mode="json")})
    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--checkpoint", checkpoint,
                          "--refine", "--out", tmp_path / "strict")
    assert code == 0
    assert "SMPLify (multistart): ranking error" in stdout and "REJECTED" in stdout
    assert "note: person 1: the fit is REJECTED" in stdout and "fitting.valid_error_threshold 1e-06" in stdout
    for name in ("person_1_overlay_crop.png", "person_overlay.png", "person_1_side.png"):
        picture = read_rgb(tmp_path / "strict" / name)
        band = picture[:6]
        assert (band[..., 0] > 150).mean() > 0.5 and (band[..., 1] < 60).mean() > 0.5, name  # the red band
    assert "fit REJECTED" in (tmp_path / "strict" / "person_1.obj").read_text().splitlines()[0]
    # The same fit with the paper's recipe and threshold is valid and unmarked.
    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--refine", "--recipe", "spin",
                          "--out", tmp_path / "plain")
    assert code == 0 and "SMPLify (spin): ranking error" in stdout and ": valid" in stdout
    assert read_rgb(tmp_path / "plain" / "person_overlay.png")[:6, :, 0].mean() < 150


def _bad_json(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("case, expected", [
    ("missing image", "does not exist"),
    ("unreadable image", "could not be decoded"),
    ("missing json", "does not exist"),
    ("not json", "is not JSON"),
    ("no people list", "no 'people' list"),
    ("no people", "found no people"),
    ("wrong keypoint count", "45 values (15 keypoints: OpenPose's MPI model?)"),
    ("all confidences zero", "every keypoint of person 0 has confidence 0"),
    ("person out of range", "--person 5: "),
    ("bad bbox", "width and height must be positive"),
    ("missing checkpoint", "does not exist"),
    ("truncated SPIN checkpoint", "not a readable spin-ray checkpoint"),
    ("1x1 image", "person.json: person 1: box of side "),  # ... lies wholly outside the 1x1 image
    ("keypoints 5000 px away", "k.json: person 0: box of side "),  # ... outside the 320x280 image
    ("bbox outside", "--bbox -100 0 50 50: box of side 50.0 px centred at (-75.0, 25.0) lies wholly outside the "
                     "320x280 image"),
])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(scene, tmp_path, capsys, case, expected):
    image, keypoints, extra = scene["image"], scene["json"], []
    if case == "missing image":
        image = tmp_path / "nope.png"
    elif case == "unreadable image":
        image = tmp_path / "broken.png"
        image.write_bytes(b"\x89PNG but not really")
    elif case == "missing json":
        keypoints = tmp_path / "nope.json"
    elif case == "not json":
        keypoints = _bad_json(tmp_path, "k.json", "{people: oops")
    elif case == "no people list":
        keypoints = _bad_json(tmp_path, "k.json", '{"version": 1.3}')
    elif case == "no people":
        keypoints = _bad_json(tmp_path, "k.json", '{"version": 1.3, "people": []}')
    elif case == "wrong keypoint count":
        keypoints = _bad_json(tmp_path, "k.json", json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 45}]}))
    elif case == "all confidences zero":
        zero = scene["keypoints"].copy()
        zero[:, 2] = 0
        keypoints = write_openpose(tmp_path / "k.json", [zero])
    elif case == "person out of range":
        extra = ["--person", "5"]
    elif case == "bad bbox":
        extra = ["--bbox", "10", "10", "0", "50"]
    elif case == "missing checkpoint":
        extra = ["--checkpoint", tmp_path / "nope.pt"]
    elif case == "truncated SPIN checkpoint":  # a download cut short
        cut = tmp_path / "model_checkpoint.pt"
        torch.save({"model": {"decpose.weight": torch.zeros(144, 64)}, "epoch": 1}, cut)
        cut.write_bytes(cut.read_bytes()[:1500])
        extra = ["--checkpoint", cut]
    elif case == "1x1 image":  # the keypoints of another, larger photo
        image = tmp_path / "person.png"
        cv2.imwrite(str(image), np.full((1, 1, 3), 90, np.uint8))
    elif case == "keypoints 5000 px away":
        far = scene["keypoints"].copy()
        far[:, 0] += 5000.0
        keypoints = write_openpose(tmp_path / "k.json", [far])
    elif case == "bbox outside":
        extra = ["--bbox", "-100", "0", "50", "50"]
    out = tmp_path / "out"
    code, stdout, err = run(capsys, image, "--keypoints", keypoints, "--out", out, *extra)
    assert code == 1
    assert err.startswith("spin-ray demo: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists() and "wrote" not in stdout
    if case in ("1x1 image", "keypoints 5000 px away"):
        size = "1x1" if case == "1x1 image" else f"{WIDTH}x{HEIGHT}"
        assert f"lies wholly outside the {size} image; nothing to draw" in err


def test_box_follows_spins_rule_on_confident_keypoints():
    keypoints = np.zeros((25, 3))
    keypoints[:4] = [[10, 20, 0.9], [50, 20, 0.5], [30, 120, 0.3], [500, 500, 0.1]]  # the last is not confident
    center, scale = box_from_keypoints(keypoints, "k.json")
    np.testing.assert_allclose(center, [30, 70])
    assert scale == pytest.approx(1.2 * 100 / 200)
    people = [np.column_stack([np.zeros((25, 2)), np.full(25, c)]) for c in (0.2, 0.6, 0.4)]
    assert select_person(people, None, "k.json") == 1 and select_person(people, 2, "k.json") == 2


def test_fitting_keypoints_are_in_the_224_crop_with_dataset_joints_off():
    openpose = np.zeros((25, 3))
    openpose[0] = [300, 200, 0.8]  # the box center
    openpose[1] = [350, 150, 0.5]  # half a box right and up
    kp = fitting_keypoints(openpose, np.array([300.0, 200.0]), 0.5, CameraConfig())
    assert kp.shape == (1, 49, 3)
    np.testing.assert_allclose(kp[0, 0].numpy(), [112, 112, 0.8], atol=1e-4)
    np.testing.assert_allclose(kp[0, 1].numpy(), [224, 0, 0.5], atol=1e-4)
    assert (kp[0, 25:, 2] == 0).all()


def test_side_view_turns_a_quarter_about_the_vertical_through_the_centre():
    points = np.random.default_rng(0).normal(size=(50, 3)) + [0.0, 0.0, 10.0]
    turned = rotate_about_vertical(points, 90.0)
    np.testing.assert_allclose(turned.mean(0), points.mean(0), atol=1e-5)
    np.testing.assert_allclose(turned[:, 1], points[:, 1], atol=1e-5)  # heights unchanged
    centred, turned_centred = points - points.mean(0), turned - points.mean(0)
    np.testing.assert_allclose(turned_centred[:, 0], centred[:, 2], atol=1e-5)  # depth becomes width
    four = points
    for _ in range(4):
        four = rotate_about_vertical(four, 90.0)
    np.testing.assert_allclose(four, points, atol=1e-4)


_NO_DETECTOR = "the photo detector is not installed (make detect)"


def _detector_available() -> bool:
    from spin_ray.data.detect import detector_available

    return detector_available()


@pytest.mark.skipif(not _detector_available(), reason=_NO_DETECTOR)
def test_a_photo_with_nobody_is_one_line_exit_1_and_writes_nothing(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    code, stdout, stderr = run(capsys, blank, "--out", tmp_path / "out")
    assert code == 1 and "no person found" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not _detector_available(), reason=_NO_DETECTOR)
def test_a_photo_without_keypoints_is_detected_and_meshed(scene, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, scene["image"], "--out", out)
    if code == 1 and "no person found" in stderr:
        pytest.skip("BlazePose does not see this part-coloured render (measured: about half of tight renders)")
    assert code == 0, stderr
    assert (out / "person_overlay.png").is_file() and list(out.glob("person_*.obj"))
    covered = (read_rgb(out / "person_overlay.png") != scene["rgb"]).any(axis=2)
    assert iou(covered, scene["silhouette"]) > 0.3


def test_a_photo_without_keypoints_and_no_detector_is_one_line_naming_make_detect(tmp_path, capsys, monkeypatch):
    import sys

    # The detector's package absent (as on a machine without `make detect`): imports of it fail.
    for name in [n for n in list(sys.modules) if n.split(".")[0] == "mediapipe"] + ["mediapipe"]:
        monkeypatch.setitem(sys.modules, name, None)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((200, 300, 3), 128, np.uint8))
    code, stdout, stderr = run(capsys, photo, "--out", tmp_path / "out")
    assert code == 1 and "make detect" in stderr and "--keypoints" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, body):
    """A photo of two people side by side (the right one nearer), each silhouette, and their OpenPose JSON."""
    folder = tmp_path_factory.mktemp("demo_two")
    problem = synthetic_problems(body, 1, torch.Generator().manual_seed(3), CameraConfig())
    offsets = (torch.tensor([[-1.2, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, -8.0]]))
    colours = np.random.default_rng(0).uniform(0.2, 1.0, (24, 3))[body.smpl.lbs_weights.argmax(1).numpy()]
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    people, silhouettes = [], []
    with torch.no_grad(), MeshRenderer(WIDTH, HEIGHT, body.faces) as renderer:
        out = body(axis_angle_pose_to_rotmats(problem.pose), problem.betas)
        for offset in offsets:  # far first, so the nearer person is painted over
            camera_t = problem.camera_t + offset
            keypoints = perspective_projection(out.keypoints, camera_t, FOCAL,
                                               camera_center=torch.tensor(PRINCIPAL)[None])[0, :25].numpy()
            vertices, translation = out.vertices[0].numpy(), camera_t[0].numpy()
            rgb = renderer.part_colors(vertices, translation, FOCAL, PRINCIPAL, vertex_colors=colours)
            silhouette = renderer.silhouette(vertices, translation, FOCAL, PRINCIPAL)
            image[silhouette] = rgb[silhouette]
            silhouettes.append(silhouette)
            people.append(np.concatenate([keypoints, np.full((25, 1), 0.9)], axis=1))
    cv2.imwrite(str(folder / "two.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert not (silhouettes[0] & silhouettes[1]).any()
    return {"image": folder / "two.png", "json": write_openpose(folder / "two.json", people), "rgb": image,
            "silhouettes": silhouettes}


def test_every_person_is_meshed_in_one_overlay_with_an_obj_each(two_people, body, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, two_people["image"], "--keypoints", two_people["json"], "--refine", "--out", out)
    assert code == 0, err
    assert stdout.count(": valid") == 2 and "person 0:" in stdout and "person 1:" in stdout
    for path in outputs(out, people=(0, 1), stem="two"):
        assert f"wrote {path}" in stdout and path.is_file()
    assert len(list(out.iterdir())) == 7  # one overlay, three files a person
    covered = (read_rgb(out / "two_overlay.png") != two_people["rgb"]).any(axis=2)
    for silhouette in two_people["silhouettes"]:
        assert (covered & silhouette).sum() > 0.6 * silhouette.sum()
    assert covered.sum() < 1.6 * sum(s.sum() for s in two_people["silhouettes"])
    # Each person's mesh in its own colour.
    overlay = read_rgb(out / "two_overlay.png").astype(float)
    means = [overlay[covered & s].mean(axis=0) for s in two_people["silhouettes"]]
    assert np.abs(means[0] - means[1]).max() > 20
    left, right = (read_obj(out / f"two_{i}.obj")[0] for i in (0, 1))
    assert left.shape == right.shape == (body.num_vertices, 3)
    assert not np.allclose(left, right)


def test_person_restricts_the_demo_to_one_person(two_people, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, two_people["image"], "--keypoints", two_people["json"], "--person", "1",
                            "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in outputs(out, people=(1,), stem="two"))
    covered = (read_rgb(out / "two_overlay.png") != two_people["rgb"]).any(axis=2)
    left, right = two_people["silhouettes"]
    assert (covered & right).sum() > 0.3 * right.sum() and (covered & left).sum() < 0.05 * left.sum()


def test_nearer_people_are_drawn_over_farther_ones():
    from spin_ray.demo.views import PlacedMesh, render_image_overlay

    # Two squares facing the camera over the same pixels; the nearer one (in its own box's units) must show.
    square = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    image = np.zeros((40, 40, 3), np.uint8)
    far = PlacedMesh(square + [0, 0, 100], 1000.0, (20.0, 20.0), (1.0, 0.0, 0.0))  # depth / focal = 0.1
    near = PlacedMesh(square * 0.5 + [0, 0, 25], 500.0, (20.0, 20.0), (0.0, 0.0, 1.0))  # 0.05: nearer
    for order in ([far, near], [near, far]):
        picture, mask = render_image_overlay(image, order, faces)
        assert mask[20, 20] and picture[20, 20, 2] > picture[20, 20, 0]


def test_config_gives_the_demo_its_camera_and_body_model(scene, body, tmp_path, capsys):
    code, stdout, _ = run(capsys, scene["image"], "--keypoints", scene["json"], "--out", tmp_path / "plain")
    assert code == 0 and f"body model {body.identity}" in stdout
    config = tmp_path / "run.yaml"
    config.write_text("camera:\n  focal_length: 2500.0\n")
    code, stdout, err = run(capsys, scene["image"], "--keypoints", scene["json"], "--config", config,
                            "--out", tmp_path / "config")
    assert code == 0, err
    assert f"body model {body.identity}" in stdout
    depth_plain = read_obj(tmp_path / "plain" / "person_1.obj")[0][:, 2].mean()
    depth_config = read_obj(tmp_path / "config" / "person_1.obj")[0][:, 2].mean()
    # The same weak-perspective camera seen by half the focal length is half as far away.
    assert depth_config / depth_plain == pytest.approx(0.5, rel=0.05)


def test_config_that_does_not_exist_is_one_line(scene, tmp_path, capsys):
    code, stdout, err = run(capsys, scene["image"], "--keypoints", scene["json"], "--config", tmp_path / "no.yaml",
                            "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "config file" in err and "does not exist" in err, err
    assert not (tmp_path / "out").exists() and "wrote" not in stdout


def test_person_beyond_two_people_is_one_line(two_people, tmp_path, capsys):
    code, stdout, err = run(capsys, two_people["image"], "--keypoints", two_people["json"], "--person", "5",
                            "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "--person 5: " in err and "has 2 people (valid: 0 to 1)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not _detector_available(), reason=_NO_DETECTOR)
def test_a_photo_of_two_people_without_keypoints_meshes_each(two_people, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, two_people["image"], "--out", out)
    if code == 1 and "no person found" in stderr:
        pytest.skip("BlazePose does not see these part-coloured renders")
    assert code == 0, stderr
    objs = sorted(out.glob("two_*.obj"))
    assert objs and (out / "two_overlay.png").is_file()
    assert len(objs) == stdout.count("box center")
