"""`spin-ray data import` on COCO, OpenPose, Halpe and WholeBody files written from a tiny rendered SPIN dataset."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from spin_ray.body.joints import SPIN49_NAMES
from spin_ray.cli import main
from spin_ray.data.importers.coco_json import image_table_of
from spin_ray.data.importers.sources import people_of_image, read_source
from spin_ray.data.importers.to_spin import ImportOptions, import_people
from spin_ray.data.row_checks import check_rows
from spin_ray.data.spin_format import load_spin_npz

# Hand-written inverse maps: COCO-17 joint k sits at these indices of SPIN's 24 dataset joints / BODY_25.
COCO_FROM_PART = [19, 20, 21, 22, 23, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]
COCO_FROM_OPENPOSE = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]
# Halpe's extra nine (head, neck, hip, l/r big toe, l/r small toe, l/r heel) from BODY_25; head has no BODY_25 joint.
HALPE_EXTRA_FROM_OPENPOSE = [None, 1, 8, 19, 22, 20, 23, 21, 24]
COCO18_FROM_OPENPOSE = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
KEEP = 10  # people kept from the tiny dataset; four more are made to be filtered


def _tight_box(points: np.ndarray) -> list[float]:
    low, high = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    return [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])]


@pytest.fixture(scope="module")
def scene(tiny_spin_data, tmp_path_factory):
    """COCO annotations, a COCO results file and OpenPose JSONs of the tiny in-the-wild split, plus its arrays."""
    source = tiny_spin_data["tiny-itw"]
    spin = np.load(source)
    folder = tmp_path_factory.mktemp("import")
    part, openpose, names = spin["part"][:KEEP + 2], spin["openpose"][:KEEP + 2], spin["imgname"][:KEEP + 2]
    images = [{"id": 100 + i, "file_name": str(n), "width": 224, "height": 224} for i, n in enumerate(names)]
    annotations, results = [], []
    for i in range(KEEP):
        coco = np.concatenate([part[i, COCO_FROM_PART, :2], np.full((17, 1), 2.0)], axis=1)
        coco[3, 2] = 0  # the left ear is not labelled
        annotations.append({"id": i, "image_id": 100 + i, "iscrowd": 0, "bbox": _tight_box(coco),
                            "keypoints": coco.reshape(-1).tolist(), "num_keypoints": 16, "category_id": 1})
        det = np.concatenate([openpose[i, COCO_FROM_OPENPOSE, :2], np.full((17, 1), 0.8)], axis=1)
        results.append({"image_id": 100 + i, "category_id": 1, "keypoints": det.reshape(-1).tolist(),
                        "score": 0.9 if i else 0.1, "bbox": _tight_box(det)})
    good = np.array(annotations[0]["keypoints"]).reshape(17, 3)
    few = good.copy()
    few[4:, 2] = 0  # 3 labelled joints
    tiny = good.copy()
    tiny[:, :2] = 5 + (good[:, :2] - good[:, :2].min(axis=0)) * 0.05  # about 8 px tall
    cut = good.copy()
    cut[:, 0] -= 190  # mostly left of the image
    for k, (points, crowd) in enumerate(((good, 1), (few, 0), (tiny, 0), (cut, 0))):
        annotations.append({"id": 50 + k, "image_id": 100 + KEEP + k % 2, "iscrowd": crowd, "bbox": _tight_box(points),
                            "keypoints": points.reshape(-1).tolist(), "category_id": 1})
    gt = folder / "annotations.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    det = folder / "results.json"
    det.write_text(json.dumps(results))
    op_dir = folder / "openpose"
    for i in range(KEEP):
        person = openpose[i]
        if i == 1:  # OpenPose's COCO-18 model
            person = person[COCO18_FROM_OPENPOSE]
        path = op_dir / (names[i].rsplit(".", 1)[0] + "_keypoints.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": person.reshape(-1).tolist()}]}))
    return {"gt": gt, "det": det, "openpose": op_dir, "images": source.parent, "part": part, "openpose_kp": openpose,
            "names": names, "annotations": annotations, "folder": folder}


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(["data", "import", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_coco_ground_truth_round_trip(scene, tmp_path, capsys):
    out = tmp_path / "mine.npz"
    code, stdout, _ = _run(capsys, scene["gt"], "--format", "coco", "--images", scene["images"], "--out", out)
    assert code == 0, stdout
    spin = load_spin_npz(out, scene["images"])
    assert len(spin) == KEEP and check_rows(spin).usable.all()
    assert ("kept 10 of 14 people; left out: 1 crowd (iscrowd), 1 fewer than 6 visible joints, "
            "1 tiny (box side < 32 px), 1 truncated (< 50% of the box in the image)") in stdout
    assert spin.imgname.tolist() == scene["names"][:KEEP].tolist()
    labelled = [i for i in COCO_FROM_PART if i != COCO_FROM_PART[3]]
    np.testing.assert_allclose(spin.part[:, labelled, :2], scene["part"][:KEEP, labelled, :2], atol=1e-4)
    assert (spin.part[:, labelled, 2] == 1).all() and (spin.part[:, COCO_FROM_PART[3], 2] == 0).all()
    others = [j for j in range(24) if j not in COCO_FROM_PART]  # neck, head top, pelvis, thorax, spine, jaw, head
    assert (spin.part[:, others, 2] == 0).all()
    assert not spin.has_openpose.any()  # ground truth alone: no detector joints
    boxes = np.array([a["bbox"] for a in scene["annotations"][:KEEP]])
    np.testing.assert_allclose(spin.center, boxes[:, :2] + boxes[:, 2:] / 2, atol=1e-3)
    np.testing.assert_allclose(spin.scale, 1.2 * boxes[:, 2:].max(axis=1) / 200, rtol=1e-5)


def test_box_factor_and_keypoint_boxes(scene):
    people = read_source(scene["gt"], "coco")
    spin, report = import_people(people, ImportOptions(box="keypoints", box_factor=1.0, min_inside=0), None)
    # No truncation filter; the cut-off person still goes: too few of its joints are inside the image.
    assert report.removed["truncated"] == 0 and report.removed["outside"] == 1 and report.kept == KEEP
    visible = spin.part[0, :, 2] > 0
    side = np.ptp(spin.part[0, visible, :2], axis=0).max()
    assert spin.scale[0] == pytest.approx(side / 200, rel=1e-5)


def test_detector_results_fill_the_openpose_slots_and_scores_filter(scene):
    people = read_source(scene["det"], "coco", images=image_table_of(scene["gt"]))  # image ids named by the GT file
    assert people.role == "detections" and people.imgname[3] == scene["names"][3]
    spin, report = import_people(people, ImportOptions(min_score=0.5), None, scene["images"])
    assert report.removed["score"] == 1 and len(spin) == KEEP - 1
    np.testing.assert_allclose(spin.openpose[:, COCO_FROM_OPENPOSE, :2], scene["openpose_kp"][1:KEEP, COCO_FROM_OPENPOSE, :2],
                               atol=1e-4)
    np.testing.assert_allclose(spin.openpose[:, COCO_FROM_OPENPOSE, 2], 0.8)
    assert (spin.openpose[:, [1, 8, 19, 20, 21, 22, 23, 24], 2] == 0).all()  # COCO has no neck, mid-hip or feet
    assert (spin.part[..., 2] == 0).all()


def test_openpose_folder_body25_and_coco18(scene):
    people = read_source(scene["openpose"], "openpose", image_dir=scene["images"])
    assert people.imgname.tolist() == scene["names"][:KEEP].tolist()  # extension found in the image folder
    spin, report = import_people(people, ImportOptions(), None, scene["images"])
    assert report.kept == KEEP
    body25 = [i for i in range(KEEP) if i != 1]
    np.testing.assert_allclose(spin.openpose[body25], scene["openpose_kp"][body25], atol=1e-4)
    coco18 = spin.openpose[1]
    np.testing.assert_allclose(coco18[COCO18_FROM_OPENPOSE], scene["openpose_kp"][1, COCO18_FROM_OPENPOSE], atol=1e-4)
    assert (coco18[[8, 19, 20, 21, 22, 23, 24], 2] == 0).all()


def test_gt_and_detections_spin_3_3(scene, tmp_path, capsys):
    moved = json.loads(scene["det"].read_text())
    moved[2]["keypoints"] = (np.array(moved[2]["keypoints"]).reshape(17, 3) + [60, 0, 0]).reshape(-1).tolist()
    det = tmp_path / "moved.json"
    det.write_text(json.dumps(moved))
    out = tmp_path / "both.npz"
    code, stdout, _ = _run(capsys, scene["gt"], "--format", "coco", "--out", out, "--gt-and-detections", det)
    assert code == 0
    assert "detections matched to 9 of 10 ground-truth people" in stdout
    spin = load_spin_npz(out, scene["images"])
    matched = [i for i in range(KEEP) if i != 2]
    np.testing.assert_allclose(spin.openpose[matched][:, COCO_FROM_OPENPOSE, :2],
                               scene["openpose_kp"][matched][:, COCO_FROM_OPENPOSE, :2], atol=1e-4)
    assert (spin.openpose[2, :, 2] == 0).all() and (spin.part[:, 19, 2] == 1).all()


def test_detections_of_another_category_are_not_matched(scene, tmp_path):
    results = json.loads(scene["det"].read_text())
    results[5]["category_id"] = 18  # the detector's dog at the person's place
    det = tmp_path / "dog.json"
    det.write_text(json.dumps(results))
    people = read_source(scene["gt"], "coco")
    detections = read_source(det, "coco", images=image_table_of(scene["gt"]))
    spin, report = import_people(people, ImportOptions(), None, None, detections)
    assert report.matched == KEEP - 1 and (spin.openpose[5, :, 2] == 0).all() and (spin.openpose[4, :, 2] > 0).any()


@pytest.mark.parametrize("fmt", ["halpe", "wholebody"])
def test_halpe_and_wholebody_extras_reach_their_slots(scene, tmp_path, fmt):
    op = scene["openpose_kp"][:KEEP]
    det = np.concatenate([op[:, COCO_FROM_OPENPOSE, :2], np.full((KEEP, 17, 1), 0.7)], axis=2)
    if fmt == "halpe":
        extra = np.stack([op[:, j] if j is not None else np.zeros((KEEP, 3)) for j in HALPE_EXTRA_FROM_OPENPOSE], 1)
        filled = {"OP Neck": 1, "OP MidHip": 8, "OP LBigToe": 19, "OP RHeel": 24}
    else:
        extra = np.concatenate([op[:, [19, 20, 21, 22, 23, 24]], np.zeros((KEEP, 110, 3))], axis=1)
        filled = {"OP LSmallToe": 20, "OP RBigToe": 22}
    points = np.concatenate([det, extra], axis=1)
    path = tmp_path / f"{fmt}.json"
    path.write_text(json.dumps([{"image_id": str(n), "keypoints": p.reshape(-1).tolist(), "score": 1.0}
                                for n, p in zip(scene["names"][:KEEP], points)]))
    spin, _ = import_people(read_source(path, fmt), ImportOptions(), None)
    for name, j in filled.items():
        np.testing.assert_allclose(spin.openpose[:, SPIN49_NAMES.index(name), :2], op[:, j, :2], atol=1e-4)


def test_demo_reads_any_format_for_its_image(scene, tmp_path):
    image = scene["images"] / scene["names"][4]
    (coco_person,) = people_of_image(scene["gt"], image)
    dog = {**scene["annotations"][4], "id": 99, "category_id": 18}  # a dog in the same photo is no person
    with_dog = _edited(scene, tmp_path, lambda d: (d["annotations"].insert(0, dog),
                                                   d.update(categories=[{"id": 1, "name": "person"},
                                                                        {"id": 18, "name": "dog"}])))
    assert len(people_of_image(with_dog, image)) == 1
    np.testing.assert_allclose(coco_person[COCO_FROM_OPENPOSE, :2],
                               scene["part"][4, COCO_FROM_PART, :2], atol=1e-4)  # ground truth in the BODY_25 slots
    image1 = scene["images"] / scene["names"][1]
    (coco18,) = people_of_image(scene["openpose"] / (scene["names"][1].rsplit(".", 1)[0] + "_keypoints.json"), image1)
    assert coco18.shape == (25, 3) and coco18[8, 2] == 0 and coco18[1, 2] > 0


@pytest.mark.parametrize("edit, expected", [
    (lambda d: "{not json", "is not JSON"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "keypoints": [1.0] * 54}]},
     "annotations[0].keypoints has 54 values, expected 51 (COCO-17 x [x, y, v]) for --format coco"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, 3]}]}, "annotations[0].bbox"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "keypoints": "oops"}]}, "annotations[0].keypoints: "),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 7}]}, "annotations[0].image_id 7 is not among"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "keypoints": [1.0] * 78}]}, "(26 joints: use --format halpe)"),
    (lambda d: 3, "got a JSON int"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "iscrowd": 1}]}, "every one of the 1 people was left out"),
])
def test_bad_files_are_one_line(scene, tmp_path, capsys, edit, expected):
    data = edit(json.loads(scene["gt"].read_text()))
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    code, _, err = _run(capsys, path, "--format", "coco", "--out", tmp_path / "x.npz")
    assert code == 1 and err.count("\n") == 1 and str(path) in err, err
    assert expected in err
    assert not (tmp_path / "x.npz").exists()


def test_bad_openpose_file_names_file_person_and_field(scene, tmp_path, capsys):
    folder = tmp_path / "op"
    folder.mkdir()
    (folder / "a_keypoints.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 75},
                                                                    {"pose_keypoints_2d": [1.0] * 45}]}))
    code, _, err = _run(capsys, folder, "--format", "openpose", "--out", tmp_path / "x.npz")
    assert code == 1 and err.count("\n") == 1
    assert "a_keypoints.json: people[1].pose_keypoints_2d has 45 values (15 keypoints: OpenPose's MPI model?)" in err


def test_the_gallery_reads_a_keypoint_file_as_the_rows_data_import_writes(scene, tmp_path, capsys):
    from spin_ray.curate.sample_paths import DatasetCache, parse_data_flag

    out = tmp_path / "mine.npz"
    assert _run(capsys, scene["gt"], "--format", "coco", "--images", scene["images"], "--out", out)[0] == 0
    imported = load_spin_npz(out, scene["images"])
    location = parse_data_flag(f"mine={scene['gt']}:{scene['images']}")
    assert location.npz == scene["gt"] and location.image_root == scene["images"]
    on_the_fly = DatasetCache({"mine": location}).get("mine")
    assert on_the_fly is not None and len(on_the_fly) == len(imported)
    assert on_the_fly.imgname.tolist() == imported.imgname.tolist()
    np.testing.assert_allclose(on_the_fly.keypoints49(), imported.keypoints49())
    np.testing.assert_allclose(on_the_fly.center, imported.center)


# -- bad annotations are left out and counted, never imported as if they were fine (issue 26, item 6) --------

def _edited(scene, tmp_path, edit) -> "Path":
    data = json.loads(scene["gt"].read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _flip_width(d):
    x, y, w, h = d["annotations"][0]["bbox"]
    d["annotations"][0]["bbox"] = [x + w, y, -w, h]  # the same box drawn right to left


def _far_keypoints(d, person, joints):
    points = np.array(d["annotations"][person]["keypoints"], float).reshape(17, 3)
    points[joints, 0] += 5000.0  # far right of the 224 px image; the bbox is unchanged and inside
    d["annotations"][person]["keypoints"] = points.reshape(-1).tolist()


def _animals(d):
    d["categories"] = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    d["annotations"][2]["category_id"] = 18
    d["annotations"][5]["category_id"] = 18


@pytest.mark.parametrize("case, edit, counted, dropped", [
    ("negative width", _flip_width, "1 bad bbox (width or height <= 0)", [0]),
    ("another category", _animals, "2 not a person (category_id other than 1)", [2, 5]),
    ("image file missing", lambda d: d["images"][3].update(file_name="gone.png"),
     "1 image file missing or unreadable under --images", [3]),
    ("zero width", lambda d: d["images"][4].update(width=0), "1 image width or height 0 or less", [4]),
    ("duplicate image id", lambda d: d["images"].append({**d["images"][6], "file_name": d["images"][7]["file_name"]}),
     "1 image id listed twice with different files", [6]),
    ("keypoints outside", lambda d: _far_keypoints(d, 8, slice(None)),
     "1 fewer than 6 visible joints inside the image", [8]),
])
def test_bad_annotations_are_left_out_and_counted(scene, tmp_path, capsys, case, edit, counted, dropped):
    out = tmp_path / "mine.npz"
    code, stdout, err = _run(capsys, _edited(scene, tmp_path, edit), "--format", "coco", "--images", scene["images"],
                             "--out", out)
    assert code == 0, err
    assert f"kept {KEEP - len(dropped)} of 14 people" in stdout and counted in stdout, stdout
    spin = load_spin_npz(out, scene["images"])
    kept = [i for i in range(KEEP) if i not in dropped]
    boxes = np.array([a["bbox"] for a in scene["annotations"]])[kept]
    np.testing.assert_allclose(spin.center, boxes[:, :2] + boxes[:, 2:] / 2, atol=1e-3)
    np.testing.assert_allclose(spin.scale, 1.2 * boxes[:, 2:].max(axis=1) / 200, rtol=1e-5)


def test_keypoints_outside_the_image_are_not_visible_and_counted(scene, tmp_path, capsys):
    out = tmp_path / "mine.npz"
    path = _edited(scene, tmp_path, lambda d: _far_keypoints(d, 0, [9, 10]))  # both wrists, 5000 px away
    code, stdout, _ = _run(capsys, path, "--format", "coco", "--images", scene["images"], "--out", out)
    assert code == 0 and f"kept {KEEP} of 14 people" in stdout
    assert "note: 2 keypoints of 1 person lie outside their image (beyond 10% of its side) and were set to not visible" \
        in stdout, stdout
    spin = load_spin_npz(out, scene["images"])
    wrists = [COCO_FROM_PART[9], COCO_FROM_PART[10]]
    assert (spin.part[0, wrists, 2] == 0).all() and (spin.part[1, wrists, 2] == 1).all()
    assert (spin.part[0, [COCO_FROM_PART[7], COCO_FROM_PART[8]], 2] == 1).all()  # the elbows stay


def test_a_file_without_a_person_category_is_one_line(scene, tmp_path, capsys):
    def dogs(d):
        d["categories"] = [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}]
        for a in d["annotations"]:
            a["category_id"] = 18
    path = _edited(scene, tmp_path, dogs)
    code, _, err = _run(capsys, path, "--format", "coco", "--out", tmp_path / "x.npz")
    assert code == 1 and err.count("\n") == 1, err
    assert "none of its categories is a person (18 'dog', 17 'cat')" in err and "--category-id" in err
    assert not (tmp_path / "x.npz").exists()
    code, stdout, err = _run(capsys, path, "--format", "coco", "--out", tmp_path / "x.npz", "--category-id", "18")
    assert code == 0, err
    assert "took category_id 18 ('dog') as people (--category-id)" in stdout


def test_a_missing_images_folder_is_one_line(scene, tmp_path, capsys):
    code, stdout, err = _run(capsys, scene["gt"], "--format", "coco", "--images", tmp_path / "nope",
                             "--out", tmp_path / "x.npz")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--images {tmp_path / 'nope'}: no such folder" in err
    assert not (tmp_path / "x.npz").exists() and stdout == ""


def test_a_keypoint_beyond_float32_is_refused_with_its_reason_and_no_numpy_warning(scene, tmp_path, capsys):
    def huge(d):
        d["annotations"][1]["keypoints"][0] = 1e300
    path = _edited(scene, tmp_path, huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would print on the terminal
        code, stdout, err = _run(capsys, path, "--format", "coco", "--images", scene["images"],
                                 "--out", tmp_path / "x.npz")
    assert code == 0, err
    assert "1 refused by the row checks (1 keypoint)" in stdout, stdout
    assert "annotations[1]" in stdout and "beyond float32's range" in stdout, stdout


# -- the output path is checked before the import work; an interrupted write leaves nothing (items 8, 13) ----

def test_missing_output_folders_are_created(scene, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "mine.npz"
    code, stdout, _ = _run(capsys, scene["gt"], "--format", "coco", "--out", out)
    assert code == 0 and out.is_file() and f"wrote {out}" in stdout
    assert f"note: no --images: the image files were not checked (fit and train look for them in {out.parent}" in stdout


def _refuses_files(folder: Path) -> bool:
    try:
        (folder / ".spin-ray-probe").touch()
    except OSError:
        return folder.is_dir()
    (folder / ".spin-ray-probe").unlink()
    return False


@pytest.mark.parametrize("blocked", ["file in the way", "read-only folder"])
def test_an_unwritable_output_is_one_line_before_any_reading(scene, tmp_path, capsys, blocked):
    if blocked == "file in the way":
        (tmp_path / "taken").write_text("a file, not a folder")
        out = tmp_path / "taken" / "sub" / "mine.npz"
    elif os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        out = folder / "mine.npz"
    elif _refuses_files(Path("/sys")):  # root writes into any folder but on a read-only mount
        out = Path("/sys/mine.npz")
    else:
        pytest.skip("no read-only folder for root here")
    missing_source = tmp_path / "never-read.json"  # the output is checked first, so this is never opened
    code, stdout, err = _run(capsys, missing_source, "--format", "coco", "--out", out)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--out {out}: cannot write" in err and "never-read.json" not in err
    assert stdout == "" and not out.exists()


def test_an_interrupted_write_leaves_no_temporary_file(scene, tmp_path, capsys, monkeypatch):
    real = np.savez_compressed

    def interrupted(file, **arrays):
        real(file, **arrays)  # the bytes are written ...
        raise KeyboardInterrupt  # ... and Ctrl-C comes before the rename

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    out = tmp_path / "mine.npz"
    code, _, err = _run(capsys, scene["gt"], "--format", "coco", "--out", out)
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither mine.npz nor mine.npz.tmp.npz
