"""The synthetic benchmark's per-chunk maths: projection, visibility, occlusion, detector errors, backgrounds.

Pure numpy/OpenCV functions of arrays and a random generator, used by `synth.SyntheticGenerator`.
"""

from __future__ import annotations

import cv2
import numpy as np

from spin_ray.body.joints import (
    OPENPOSE25_NAMES,
    SMPL_JOINT_NAMES,
    SPIN49_FROM_JOINTS_AND_EXTRAS,
)
from spin_ray.config import SynthConfig
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.errors import DataError

# SPIN's person box: the keypoints' bounding box enlarged by this factor.
BOX_MARGIN = 1.2
# Detector simulation: per-keypoint noise multipliers and the confidence they map to.
_NOISE_MULT = (0.5, 3.0)
_OCCLUDED_NOISE_GAIN = 2.0
_CONF_RANGE = (0.31, 0.99)
_CONF_PER_MULT = 0.24
_CONF_JITTER = 0.03
# Left/right pairs a detector confuses (OpenPose names, left first).
_SWAP_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (OPENPOSE25_NAMES.index(f"OP L{j}"), OPENPOSE25_NAMES.index(f"OP R{j}"))
    for j in ("Elbow", "Wrist", "Knee", "Ankle", "Shoulder", "Hip")
)
# Body regions for clothing colours, by the SMPL joint that skins a vertex most.
_REGIONS: dict[str, tuple[str, ...]] = {
    "head": ("head", "neck"),
    "torso": ("spine1", "spine2", "spine3", "left_collar", "right_collar"),
    "hips": ("pelvis",),
    "upper_arms": ("left_shoulder", "right_shoulder"),
    "forearms": ("left_elbow", "right_elbow"),
    "hands": ("left_wrist", "right_wrist", "left_hand", "right_hand"),
    "thighs": ("left_hip", "right_hip"),
    "shins": ("left_knee", "right_knee"),
    "feet": ("left_ankle", "right_ankle", "left_foot", "right_foot"),
}
_SKIN_TONES = np.array([[0.36, 0.22, 0.15], [0.55, 0.37, 0.26], [0.76, 0.57, 0.45], [0.93, 0.78, 0.67]])


def project(points: np.ndarray, cam_t: np.ndarray, focal: np.ndarray, image_size: int) -> np.ndarray:
    """Pixels (n,K,2) of body-frame points (n,K,3) translated by cam_t (n,3), principal point at the centre."""
    cam = points + cam_t[:, None]
    return focal[:, None, None] * cam[..., :2] / cam[..., 2:3] + image_size / 2.0


def inside_image(uv: np.ndarray, image_size: int) -> np.ndarray:
    """Whether each point (…,2) falls in a pixel of the image (pixel centres at integers)."""
    return np.all((uv >= -0.5) & (uv < image_size - 0.5), axis=-1)


def keypoint_parts(parents: list[int], part_of_vertex: np.ndarray, keypoint_regressor: np.ndarray) -> np.ndarray:
    """(49,24) bool: the body parts a keypoint lies in or next to (its own surface does not hide it).

    A joint's parts are its own, its parent's and its children's; an extra keypoint's are the parts
    of the vertices its regressor reads, and their neighbours.
    """
    count = len(parents)
    near = np.eye(count, dtype=bool)
    for child, parent in enumerate(parents):
        if parent >= 0:
            near[child, parent] = near[parent, child] = True
    extras = np.zeros((len(keypoint_regressor), count), bool)
    for k, row in enumerate(np.asarray(keypoint_regressor)):
        extras[k, np.unique(part_of_vertex[np.flatnonzero(row)])] = True
    extras = (extras.astype(np.int64) @ near.astype(np.int64)) > 0
    return np.concatenate([near, extras])[list(SPIN49_FROM_JOINTS_AND_EXTRAS)]


def occluded_keypoints(uv: np.ndarray, depth: np.ndarray, depth_maps: np.ndarray, part_maps: np.ndarray,
                       own_parts: np.ndarray, threshold: float, self_threshold: float | np.ndarray) -> np.ndarray:
    """(n,K) True where the rendered surface at a keypoint's pixel (uv in the maps' pixels) hides it.

    Hidden: another part's surface is more than `threshold` closer, or the keypoint's own or a
    neighbouring part's surface is more than `self_threshold` closer (joints sit inside the body,
    so their own surface is always somewhat closer; `self_threshold` may be per keypoint (K,)).
    part_maps (n,H,W) hold part ids, -1 for none; own_parts (K,P) is `keypoint_parts`.
    """
    n, size = part_maps.shape[0], part_maps.shape[1]
    cols = np.clip(np.rint(uv[..., 0]).astype(np.int64), 0, size - 1)
    rows = np.clip(np.rint(uv[..., 1]).astype(np.int64), 0, size - 1)
    batch = np.arange(n)[:, None]
    part = part_maps[batch, rows, cols]
    gap = depth - depth_maps[batch, rows, cols]
    own = own_parts[np.arange(depth.shape[1])[None, :], np.maximum(part, 0)]
    hidden = np.where(own, gap > np.broadcast_to(self_threshold, own.shape[1:]), gap > threshold)
    return (part >= 0) & hidden


def person_boxes(uv: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SPIN's center (n,2) and scale (n,) from the keypoints that fall inside the image."""
    inside = inside_image(uv, image_size)
    if not inside.any(axis=1).all():
        raise DataError("a synthetic person has no keypoint inside the image (truncation too strong?)")
    big = np.where(inside[..., None], uv, np.inf)
    small = np.where(inside[..., None], uv, -np.inf)
    low, high = big.min(axis=1), small.max(axis=1)
    center = np.clip((low + high) / 2.0, 0.0, image_size - 1.0)
    side = BOX_MARGIN * np.maximum((high - low).max(axis=1), 1.0)
    return center.astype(np.float32), (side / SCALE_UNIT_PX).astype(np.float32)


def detector_keypoints(uv: np.ndarray, visible_in_image: np.ndarray, occluded: np.ndarray, box_side: np.ndarray,
                       rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Simulated 2D detections (n,25,3) [x, y, conf] from exact projections (n,25,2).

    Noise std = detector_noise * box side * a per-keypoint factor in 0.5-3 (doubled when occluded);
    confidence falls with that factor; misses (all zero, like OpenPose) at random, more often when
    occluded, always outside the image; some samples get one left/right pair swapped.
    """
    n, k = uv.shape[:2]
    mult = rng.uniform(*_NOISE_MULT, (n, k)) * np.where(occluded, _OCCLUDED_NOISE_GAIN, 1.0)
    sigma = cfg.detector_noise * box_side[:, None] * mult
    xy = uv + rng.standard_normal((n, k, 2)) * sigma[..., None]
    conf = 1.0 - _CONF_PER_MULT * (mult - _NOISE_MULT[0]) + _CONF_JITTER * rng.standard_normal((n, k))
    conf = np.clip(conf, *_CONF_RANGE)
    missed = (rng.random((n, k)) < cfg.detector_dropout_prob) | ~visible_in_image
    missed |= occluded & (rng.random((n, k)) < cfg.occluded_dropout_prob)
    out = np.concatenate([xy, conf[..., None]], axis=-1)
    swap = rng.random(n) < cfg.detector_swap_prob
    pair = rng.integers(0, len(_SWAP_PAIRS), n)
    for i in np.flatnonzero(swap):
        left, right = _SWAP_PAIRS[pair[i]]
        out[i, [left, right]] = out[i, [right, left]]
        missed[i, [left, right]] = missed[i, [right, left]]
    out[missed] = 0.0
    return out.astype(np.float32)


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural RGB background (size,size,3) uint8: gradient, smooth noise, shapes, grain."""
    direction = rng.standard_normal(2)
    direction /= np.linalg.norm(direction) + 1e-9
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    t = (direction[0] * ramp[None, :] + direction[1] * ramp[:, None]).astype(np.float32) + 0.5
    a, b = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    cells = int(rng.integers(2, 12))
    blobs = cv2.resize(rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    image = a + t[..., None] * (b - a) + np.float32(rng.uniform(0, 70)) * blobs
    for _ in range(int(rng.integers(2, 14))):
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        x0, y0 = (int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        kind = rng.random()
        if kind < 0.4:
            w, h = (int(v) for v in rng.integers(size // 20, size // 2, 2))
            cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), colour, thickness)
        elif kind < 0.8:
            cv2.circle(image, (x0, y0), int(rng.integers(size // 40, size // 4)), colour, thickness)
        else:
            x1, y1 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(image, (x0, y0), (x1, y1), colour, max(thickness, 1))
    image += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(0, 8))
    return np.clip(image, 0, 255).astype(np.uint8)


def clothing_albedo(rng: np.random.Generator) -> np.ndarray:
    """Per-joint-part colours (24,3) in [0,1]: skin, shirt, trousers, shoes, each part tinted; or random."""
    region_of = {j: r for r, joints in _REGIONS.items() for j in joints}
    if rng.random() < 0.2:  # mannequin-like: every region its own random colour
        colours = {r: rng.uniform(0.1, 0.95, 3) for r in _REGIONS}
    else:
        w = rng.random()
        i = min(int(w * (len(_SKIN_TONES) - 1)), len(_SKIN_TONES) - 2)
        frac = w * (len(_SKIN_TONES) - 1) - i
        skin = (1 - frac) * _SKIN_TONES[i] + frac * _SKIN_TONES[i + 1]
        shirt, trousers = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.8, 3)
        shoes = rng.uniform(0.02, 0.5, 3)
        colours = {"head": skin, "hands": skin, "torso": shirt, "upper_arms": shirt, "hips": trousers,
                   "thighs": trousers, "feet": shoes,
                   "forearms": shirt if rng.random() < 0.5 else skin,
                   "shins": trousers if rng.random() < 0.75 else skin}
    tint = rng.uniform(0.9, 1.1, (len(SMPL_JOINT_NAMES), 1))
    albedo = np.stack([colours[region_of[name]] for name in SMPL_JOINT_NAMES]) * tint
    return np.clip(albedo, 0.0, 1.0)


def encode_depth_and_part(depth: np.ndarray, part: np.ndarray, near: float, far: float) -> np.ndarray:
    """Vertex colours (V,3) in [0,1] carrying depth as 16 bits in R,G and part id + 1 in B."""
    code = np.rint((depth - near) / max(far - near, 1e-9) * 65535.0).astype(np.int64)
    return np.stack([code // 256, code % 256, part + 1], axis=-1).astype(np.float32) / 255.0


def decode_depth_and_part(rgb: np.ndarray, near: float, far: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth map (H,W) float32 and part map (H,W) int16 (-1: background) from an `encode_depth_and_part` render."""
    code = rgb[..., 0].astype(np.float32) * 256.0 + rgb[..., 1].astype(np.float32)
    return (near + code / 65535.0 * (far - near)).astype(np.float32), rgb[..., 2].astype(np.int16) - 1
