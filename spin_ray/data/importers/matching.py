"""SPIN §3.3's combination: ground-truth 2D joints in `part`, a detector's joints for the same person in `openpose`.

A detection is matched to a ground-truth person of the same image by the mean pixel distance of the arms
and legs (the 12 limb joints, as SPIN's preprocessing does) visible in both; it is accepted when that
distance is at most `tolerance` x the person's size (SPIN uses 0.1 of the larger side of the annotated
joints' extent). Each detection serves at most one person: the closest pairs are taken first.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from spin_ray.body.keypoint_formats import LIMB12_DATASET, LIMB12_OPENPOSE
from spin_ray.data.importers.people import People

MIN_SHARED_LIMBS = 4  # fewer limb joints seen by both says too little about who is who


def limb_distances(gt: np.ndarray, det: np.ndarray) -> np.ndarray:
    """(G,D) mean distance over limb joints visible in both, inf with fewer than MIN_SHARED_LIMBS; (G,49,3), (D,49,3)."""
    a, b = gt[:, LIMB12_DATASET], det[:, LIMB12_OPENPOSE]
    both = (a[:, None, :, 2] > 0) & (b[None, :, :, 2] > 0)
    dist = np.linalg.norm(a[:, None, :, :2] - b[None, :, :, :2], axis=-1)
    shared = both.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(both, dist, 0.0).sum(axis=-1) / shared
    return np.where(shared >= MIN_SHARED_LIMBS, mean, np.inf)


def person_sizes(keypoints: np.ndarray) -> np.ndarray:
    """(N,) larger side of the extent of each person's visible joints (N,49,3); NaN with none visible."""
    visible = keypoints[..., 2] > 0
    with np.errstate(invalid="ignore"):
        low = np.where(visible[..., None], keypoints[..., :2], np.inf).min(axis=1)
        high = np.where(visible[..., None], keypoints[..., :2], -np.inf).max(axis=1)
        side = (high - low).max(axis=1)
    return np.where(np.isfinite(side), side, np.nan)


def match_detections(gt: People, detections: People, tolerance: float) -> np.ndarray:
    """(G,) index into `detections` of each ground-truth person's detection, -1 where none matches."""
    match = np.full(len(gt), -1, np.intp)
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(detections.imgname):
        by_image[str(name)].append(i)
    sizes = person_sizes(gt.keypoints)
    gt_by_image: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(gt.imgname):
        gt_by_image[str(name)].append(i)
    for name, rows in gt_by_image.items():
        cols = by_image.get(name)
        if not cols:
            continue
        dist = limb_distances(gt.keypoints[rows], detections.keypoints[cols])
        with np.errstate(invalid="ignore"):
            dist[~(dist <= tolerance * sizes[rows][:, None])] = np.inf
        while np.isfinite(dist).any():
            g, d = np.unravel_index(np.argmin(dist), dist.shape)
            match[rows[g]] = cols[d]
            dist[g, :] = np.inf
            dist[:, d] = np.inf
    return match
