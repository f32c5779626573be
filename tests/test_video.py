"""spin-ray demo VIDEO on short clips rendered from the synthetic body: frames in = frames out, one track id per
person, keypoints smoothed; and the bad videos (corrupt, cut short, damaged frames, nobody in it)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from spin_ray.cli import main
from spin_ray.data.detect import detector_available
from spin_ray.data.video import VideoFrames, is_video
from spin_ray.errors import InputError
from video_clips import count_frames, moving_pair, synthetic_people, write_clip

FRAMES = 8
needs_detector = pytest.mark.skipif(not detector_available(), reason="the photo detector is not installed "
                                                                      "(make detect)")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["demo", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def people():
    return synthetic_people()


@pytest.fixture(scope="module")
def clip(people, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    frames = moving_pair(people, FRAMES)
    return {"path": write_clip(folder / "walk.avi", frames), "frames": frames}


@pytest.fixture(scope="module")
def walked(clip, tmp_path_factory):
    """The demo run once on the clip (its outputs are looked at by several tests)."""
    out = tmp_path_factory.mktemp("walked")
    if not detector_available():
        pytest.skip("the photo detector is not installed (make detect)")
    code = main(["demo", str(clip["path"]), "--out", str(out)])
    return {"code": code, "out": out, "tracks": dict(np.load(out / "walk_tracks.npz"))}


@needs_detector
def test_every_frame_in_is_a_frame_out_with_the_meshes_drawn(clip, walked):
    assert walked["code"] == 0
    videos = sorted(walked["out"].glob("walk_overlay.*"))
    assert len(videos) == 1 and videos[0].suffix in (".mp4", ".avi")
    assert count_frames(videos[0]) == FRAMES
    capture = cv2.VideoCapture(str(videos[0]))
    changed = []
    for frame in clip["frames"]:
        ok, drawn = capture.read()
        assert ok and drawn.shape == frame.shape
        changed.append(np.abs(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB).astype(int) - frame).max(axis=2) > 40)
    capture.release()
    # The meshes cover part of both halves of every frame (the codec changes little else by more than 40).
    for mask in changed:
        assert mask[:, :256].mean() > 0.03 and mask[:, 256:].mean() > 0.03


@needs_detector
def test_each_person_keeps_one_track_id_across_the_frames(walked):
    tracks = walked["tracks"]
    assert sorted(set(tracks["track"].tolist())) == [0, 1]
    for track in (0, 1):
        mine = tracks["track"] == track
        assert sorted(tracks["frame"][mine].tolist()) == list(range(FRAMES))  # once in every frame
        sides = tracks["center"][mine, 0] < 256
        assert sides.all() or not sides.any()  # always on the same half: never swapped
    left = tracks["track"] == tracks["track"][np.argmin(tracks["center"][:, 0])]
    assert np.all(np.diff(tracks["center"][left, 0]) > 0)  # and it walks right, as rendered


@needs_detector
def test_keypoints_are_smoothed_over_time(walked):
    tracks = walked["tracks"]
    for track in (0, 1):
        mine = tracks["track"] == track
        raw, smooth = tracks["raw"][mine], tracks["keypoints"][mine]
        both = (raw[..., 2] > 0.5).all(axis=0)
        # Jitter: the second difference over frames (a steady walk has none).
        jitter = lambda kp: np.abs(np.diff(kp[:, both, :2], n=2, axis=0)).mean()  # noqa: E731
        assert jitter(smooth) < jitter(raw), (jitter(smooth), jitter(raw))
        np.testing.assert_array_equal(smooth[0], raw[0])  # the first frame is the filter's start
    assert tracks["pose"].shape == (2 * FRAMES, 72) and np.isfinite(tracks["pose"]).all()


@needs_detector
def test_a_video_cut_short_keeps_the_frames_read_and_every_k_th(people, tmp_path, capsys):
    whole = write_clip(tmp_path / "whole.avi", moving_pair(people, 10))
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[:int(0.6 * len(data))])
    code, out, err = run(capsys, cut, "--every", "2", "--out", tmp_path / "out")
    assert code == 0, err
    read = [line for line in out.splitlines() if line.startswith("read ")]
    assert read and "read 3 frames of cut.avi (1 in 2 of its 6)" in read[0], out
    assert "ended after 6 of the 10 frames" in read[0] and "frames read are kept" in read[0]
    assert count_frames(next((tmp_path / "out").glob("cut_overlay.*"))) == 3


def test_a_damaged_frame_is_skipped_and_counted(people, tmp_path):
    clip = write_clip(tmp_path / "clip.avi", moving_pair(people, 6))
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # JPEG frames of MJPG
    assert len(starts) == 6
    data[starts[3]:starts[3] + 2000] = bytes(2000)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with VideoFrames(damaged) as frames:
        indices = [index for index, _ in frames]
    assert indices == [0, 1, 2, 4, 5]
    assert frames.summary() == ("read 5 frames of damaged.avi; 1 unreadable frame skipped (the frames read are "
                                "kept)")


def test_a_corrupt_video_is_one_line_naming_it_exit_1_nothing_written(tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4000))
    code, out, err = run(capsys, junk, "--out", tmp_path / "out")
    assert code == 1 and str(junk) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="does not exist"):
        VideoFrames(tmp_path / "missing.mp4")


def test_a_video_is_told_by_suffix_or_content(people, tmp_path):
    clip = write_clip(tmp_path / "clip.avi", moving_pair(people, 2))
    unnamed = tmp_path / "clip.data"
    unnamed.write_bytes(clip.read_bytes())
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), people[0])
    assert is_video(clip) and is_video(unnamed) and not is_video(photo)
    assert is_video(tmp_path / "not-there.mp4") and not is_video(tmp_path / "not-there.bin")


@needs_detector
def test_a_video_with_nobody_is_one_line_exit_1_nothing_written(tmp_path, capsys):
    blank = write_clip(tmp_path / "empty.avi", np.full((4, 120, 160, 3), 128, np.uint8))
    code, out, err = run(capsys, blank, "--out", tmp_path / "out")
    assert code == 1 and "no person found" in err and "read 4 frames" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_photo_options_on_a_video_are_one_line(clip, tmp_path, capsys):
    code, out, err = run(capsys, clip["path"], "--bbox", "0", "0", "10", "10", "--out", tmp_path / "out")
    assert code == 1 and "--bbox is for a photo" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, clip["path"], "--keypoints", tmp_path / "k.json", "--out", tmp_path / "out")
    assert code == 1 and "--keypoints is for a photo" in err
    assert not (tmp_path / "out").exists()


def test_every_on_a_photo_is_one_line(people, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), people[0])
    code, out, err = run(capsys, photo, "--every", "2", "--out", tmp_path / "out")
    assert code == 1 and "--every 2 is for a video" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@needs_detector
def test_refine_fits_every_person_of_the_frames_meshed(clip, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, clip["path"], "--every", "4", "--refine", "--person", "1", "--out", out)
    assert code == 0, err
    assert "1 person followed (track 1: 2 frames)" in stdout, stdout
    assert "SMPLify (multistart): 2 fits, median ranking error" in stdout
    tracks = np.load(out / "walk_tracks.npz")
    assert tracks["frame"].tolist() == [0, 4] and (tracks["track"] == 1).all()
    assert np.isfinite(tracks["error"]).all() and (tracks["error"] < 100).all()  # valid fits


def test_the_overlay_video_is_h264_or_motion_jpeg(tmp_path):
    """The issue's codecs: H.264 where OpenCV has an encoder, else Motion-JPEG; it reads back with every frame."""
    from spin_ray.demo.video_out import OverlayVideoWriter

    writer = OverlayVideoWriter(10.0, 64, 48)
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    path = writer.finish(tmp_path / "clip_overlay")
    capture = cv2.VideoCapture(str(path))
    code = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").lower()
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert (path.suffix, code) in ((".mp4", "avc1"), (".mp4", "h264"), (".avi", "mjpg")), (path, code)
    assert frames == 5
