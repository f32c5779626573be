"""spin-ray data import FOLDER --format detect: rendered photos (or a rendered clip) through the bundled detector to
a SPIN-format .npz that the dataset loader and `spin-ray fit` read; a rerun takes the people from the cache."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from spin_ray.cli import main
from spin_ray.data.detect import detector_available
from spin_ray.data.spin_format import load_spin_npz
from video_clips import DETECTED, moving_pair, synthetic_people, write_clip

needs_detector = pytest.mark.skipif(not detector_available(),
                                    reason="the photo detector is not installed (make detect)")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def through(stdout: str) -> tuple[int, int]:
    """(images run through the detector, images from the cache) as the import printed them."""
    line = next(line for line in stdout.splitlines() if "through the detector" in line)
    detected = int(line.split("(")[1].split(" through")[0])
    cached = int(line.split("through the detector, ")[1].split(" from")[0])
    return detected, cached


@pytest.fixture(scope="module")
def people():
    return synthetic_people()


@pytest.fixture
def photos(people, tmp_path):
    """A folder of three one-person photos, one two-person photo in a subfolder, and a file that is no image."""
    folder = tmp_path / "photos"
    (folder / "group").mkdir(parents=True)
    for i in DETECTED[:3]:
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(people[i], cv2.COLOR_RGB2BGR))
    pair = np.concatenate([people[DETECTED[0]], people[DETECTED[3]]], axis=1)
    cv2.imwrite(str(folder / "group" / "pair.png"), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@needs_detector
def test_a_folder_of_photos_becomes_a_spin_dataset_and_a_rerun_uses_the_cache(photos, tmp_path, capsys):
    out = tmp_path / "data" / "mine.npz"
    code, stdout, err = run(capsys, "data", "import", photos, "--format", "detect", "--out", out)
    assert code == 0, err
    assert through(stdout) == (4, 0), stdout
    assert "1 unreadable: broken.jpg" in stdout and f"wrote {out}" in stdout
    data = load_spin_npz(out, photos)
    names = data.imgname.tolist()
    assert sorted(set(names)) == ["group/pair.png", "p0.jpg", "p1.jpg", "p3.jpg"]
    assert names.count("group/pair.png") == 2 and len(names) == 5
    assert data.has_openpose.all() and (data.openpose[..., 2] > 0).sum(axis=1).min() >= 20
    assert (data.part[..., 2] == 0).all()  # no ground truth: the dataset joints are off
    # SPIN's box rule on the confident keypoints: scale = 1.2 x the longer side / 200.
    confident = data.openpose[0][data.openpose[0, :, 2] > 0.2, :2]
    side = (confident.max(0) - confident.min(0)).max()
    assert data.scale[0] == pytest.approx(1.2 * side / 200, rel=1e-4)
    first = data.openpose.copy()

    code, stdout, err = run(capsys, "data", "import", photos, "--format", "detect", "--out", out)
    assert code == 0 and through(stdout) == (0, 4), stdout  # nothing detected again
    np.testing.assert_array_equal(load_spin_npz(out, photos).openpose, first)

    # A changed photo (new content, new time) is detected again; the rest come from the cache.
    changed = photos / "p0.jpg"
    cv2.imwrite(str(changed), cv2.cvtColor(np.full((256, 256, 3), 100, np.uint8), cv2.COLOR_RGB2BGR))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    code, stdout, err = run(capsys, "data", "import", photos, "--format", "detect", "--out", out)
    assert code == 0 and through(stdout) == (1, 3), stdout
    assert "p0.jpg" not in load_spin_npz(out, photos).imgname.tolist()

    # Another folder of the same name, its files copied with their names, sizes and times, imported beside it:
    # the cache file has the same name, but it belongs to the first folder and is not used.
    other = tmp_path / "elsewhere" / "photos"
    shutil.copytree(photos, other)  # copy2: the same names, sizes and modification times
    code, stdout, err = run(capsys, "data", "import", other, "--format", "detect", "--out", out)
    assert code == 0 and through(stdout) == (4, 0), stdout
    assert "of another source" in stdout + err


@needs_detector
def test_the_imported_photos_are_fitted_on_the_pool_and_shown_in_the_gallery(photos, ray_local, tmp_path, capsys):
    """The issue's road: a folder of photos -> a SPIN dataset -> the fitter pool -> `store gallery --data-dir`."""
    out = tmp_path / "mine.npz"
    assert run(capsys, "data", "import", photos, "--format", "detect", "--out", out)[0] == 0
    data_dir = tmp_path / "fit-mine" / "redis"
    code, _, err = run(capsys, "fit", out, "--image-root", photos, "--output-dir", data_dir.parent, "--fitters", "1",
                       "--iterations", "10", "--no-progress")
    assert code == 0, err
    code, stdout, err = run(capsys, "store", "stats", "--data-dir", data_dir, "--json")
    assert code == 0, err
    assert [(d["dataset"], d["count"]) for d in json.loads(stdout)["datasets"]] == [("mine", 5)]
    gallery = tmp_path / "gallery"
    code, _, err = run(capsys, "store", "gallery", "--data-dir", data_dir, "--worst", "5",
                       "--data", f"mine={out}:{photos}", "--out", gallery)
    assert code == 0, err
    assert (gallery / "index.html").is_file() and len(list((gallery / "images").iterdir())) >= 5


@needs_detector
def test_a_video_becomes_a_dataset_of_its_frames(people, tmp_path, capsys):
    clip = write_clip(tmp_path / "walk.avi", moving_pair(people, 6))
    out = tmp_path / "data" / "walk.npz"
    code, stdout, err = run(capsys, "data", "import", clip, "--format", "detect", "--every", "2", "--out", out)
    assert code == 0, err
    assert "read 3 frames of walk.avi (1 in 2 of its 6)" in stdout and through(stdout) == (3, 0)
    data = load_spin_npz(out, out.parent)
    assert sorted(set(data.imgname.tolist())) == [f"walk_frames/{i:06d}.jpg" for i in (0, 2, 4)]
    assert len(data.imgname) == 6  # two people a frame
    for name in set(data.imgname.tolist()):
        assert cv2.imread(str(out.parent / name)).shape == (256, 512, 3)
    code, stdout, err = run(capsys, "data", "import", clip, "--format", "detect", "--every", "2", "--out", out)
    assert code == 0 and through(stdout) == (0, 3), stdout


def test_bad_sources_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "data", "import", empty, "--format", "detect", "--out", tmp_path / "x.npz")
    assert code == 1 and "no photos in it" in err and len(err.strip().splitlines()) == 1, err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(3000))
    code, _, err = run(capsys, "data", "import", junk, "--format", "detect", "--out", tmp_path / "x.npz")
    assert code == 1 and str(junk) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_without_the_detector_the_import_is_one_line_naming_make_detect(tmp_path, capsys, monkeypatch):
    import sys

    for name in [n for n in list(sys.modules) if n.split(".")[0] == "mediapipe"] + ["mediapipe"]:
        monkeypatch.setitem(sys.modules, name, None)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    code, _, err = run(capsys, "data", "import", folder, "--format", "detect", "--out", tmp_path / "x.npz")
    assert code == 1 and "make detect" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "photos.detections.json").exists()
