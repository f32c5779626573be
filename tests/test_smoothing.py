"""The One-Euro filter (spin_ray/data/smoothing.py) on synthetic jittery keypoints: jitter falls, a step is followed."""

from __future__ import annotations

import numpy as np
import pytest

from spin_ray.data.smoothing import OneEuroSettings, one_euro_step, smoothing_factor

FPS = 30.0
SIZE = 200.0  # px: the person's box side


def run_filter(track: np.ndarray, settings: OneEuroSettings = OneEuroSettings()) -> np.ndarray:
    """Filter a (T, J, 3) sequence frame by frame."""
    state, out = None, []
    for frame in track:
        state, smoothed = one_euro_step(state, frame, 1.0 / FPS, SIZE, settings)
        out.append(smoothed)
    return np.stack(out)


def jittery(frames: int, joints: int = 25, noise: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A still person's keypoints (T, J, 3) with Gaussian jitter of `noise` px, and the truth (J, 2)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(50, 250, (joints, 2))
    xy = truth + rng.normal(0, noise, (frames, joints, 2))
    return np.concatenate([xy, np.ones((frames, joints, 1))], axis=2), truth


def test_jitter_of_a_still_person_falls_by_more_than_half():
    track, truth = jittery(90)
    out = run_filter(track)
    raw_error = np.abs(track[30:, :, :2] - truth).mean()
    smooth_error = np.abs(out[30:, :, :2] - truth).mean()
    assert smooth_error < 0.5 * raw_error, (raw_error, smooth_error)
    frame_to_frame = lambda a: np.abs(np.diff(a[30:, :, :2], axis=0)).mean()  # noqa: E731
    assert frame_to_frame(out) < 0.3 * frame_to_frame(track)


def test_a_step_is_followed_within_a_few_frames():
    track, truth = jittery(60, noise=0.0)
    track[30:, :, 0] += 100.0  # everybody jumps half a person to the right
    out = run_filter(track)
    assert np.abs(out[:30, :, :2] - track[:30, :, :2]).max() < 1e-4
    lag = np.abs(out[:, :, 0] - track[:, :, 0]).max(axis=1)
    assert lag[30] > 1.0  # it does smooth
    assert lag[36] < 5.0 and lag[45] < 0.5, lag[30:46]  # and catches up: 5 px after 0.2 s, 0.5 px after 0.5 s


def test_a_fast_move_lags_less_than_a_plain_low_pass_filter():
    frames = 60
    track, _ = jittery(frames, noise=0.0)
    track[:, :, 0] += np.arange(frames)[:, None] * 10.0  # 300 px/s: 1.5 person sizes a second
    adaptive = run_filter(track)
    plain = run_filter(track, OneEuroSettings(beta=0.0))
    lag = lambda out: np.abs(out[-1, :, 0] - track[-1, :, 0]).mean()  # noqa: E731
    assert lag(adaptive) < 0.3 * lag(plain), (lag(adaptive), lag(plain))


def test_a_missing_joint_passes_through_and_starts_afresh_when_seen_again():
    track, _ = jittery(20)
    track[5:10, 3] = 0.0  # joint 3 undetected for five frames (OpenPose's (0, 0, 0))
    track[10:, 3, :2] += 80.0  # and seen again elsewhere
    out = run_filter(track)
    assert (out[5:10, 3] == 0).all()
    np.testing.assert_allclose(out[10, 3], track[10, 3], atol=1e-4)  # no pull towards where it was
    assert not np.allclose(out[11:, 4, :2], track[11:, 4, :2])  # the others stay smoothed


def test_confidence_is_passed_through_and_bad_steps_are_refused():
    track, _ = jittery(3)
    track[:, :, 2] = 0.7
    assert (run_filter(track)[:, :, 2] == np.float32(0.7)).all()
    with pytest.raises(ValueError, match="dt > 0"):
        one_euro_step(None, track[0], 0.0, SIZE, OneEuroSettings())


def test_smoothing_factor_is_one_at_infinite_cutoff_and_falls_with_it():
    assert smoothing_factor(1e12, 1 / 30) == pytest.approx(1.0)
    assert smoothing_factor(1.0, 1 / 30) < smoothing_factor(5.0, 1 / 30) < 1.0
