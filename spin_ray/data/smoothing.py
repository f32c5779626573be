"""Keypoints smoothed over time: the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012), batched over joints.

A low-pass filter whose cut-off rises with speed: at rest it removes a detector's jitter, in a fast move it follows
with little lag. Speeds are measured in person sizes per second (the caller gives the person's size in pixels), so
one setting serves a person 80 or 800 px tall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroSettings:
    """The filter's three numbers (the paper's names)."""

    min_cutoff: float = 1.5  # Hz: the cut-off at rest (lower: less jitter, more lag)
    beta: float = 8.0  # Hz per (person size / s): how fast the cut-off rises with speed
    d_cutoff: float = 1.0  # Hz: the cut-off of the speed estimate


@dataclass(frozen=True)
class OneEuroState:
    """What the filter remembers of one track: the filtered points and their filtered speed."""

    value: np.ndarray  # (J, 2) filtered positions, pixels
    speed: np.ndarray  # (J, 2) filtered speed, person sizes per second
    seen: np.ndarray  # (J,) bool: the joint had confidence > 0 in the last update


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """The exponential smoothing factor of a first-order low-pass filter with `cutoff` (Hz) sampled every dt s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
    return 1.0 / (1.0 + tau / dt)


def one_euro_step(
    state: OneEuroState | None, keypoints: np.ndarray, dt: float, size: float, settings: OneEuroSettings,
) -> tuple[OneEuroState, np.ndarray]:
    """Filter one frame of keypoints (J, 3) [x, y, confidence] taken dt s after the last: (new state, (J, 3) out).

    A joint with confidence 0 is left as given and its memory kept; one seen again (or seen first) starts afresh
    at its new position. `size` is the person's size in pixels (its box side), the unit of speed.
    """
    if dt <= 0 or size <= 0:
        raise ValueError(f"one_euro_step needs dt > 0 and size > 0, got dt={dt} size={size}")
    keypoints = np.asarray(keypoints, np.float64)
    xy, seen = keypoints[:, :2], keypoints[:, 2] > 0
    if state is None:
        state = OneEuroState(xy.copy(), np.zeros_like(xy), np.zeros(len(xy), bool))
    fresh = seen & ~state.seen
    raw_speed = (xy - state.value) / dt / size
    speed = state.speed + smoothing_factor(settings.d_cutoff, dt) * (raw_speed - state.speed)
    cutoff = settings.min_cutoff + settings.beta * np.linalg.norm(speed, axis=1, keepdims=True)
    value = state.value + smoothing_factor(cutoff, dt) * (xy - state.value)
    value = np.where(fresh[:, None], xy, value)
    speed = np.where(fresh[:, None], 0.0, speed)
    new = OneEuroState(np.where(seen[:, None], value, state.value), np.where(seen[:, None], speed, state.speed),
                       seen)
    out = keypoints.copy()
    out[seen, :2] = value[seen]
    return new, out.astype(np.float32)
