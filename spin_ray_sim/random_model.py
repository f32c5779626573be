"""Random SMPL-layout model arrays, for tests and benchmarks where the real files are not at hand."""

from __future__ import annotations

import numpy as np

from spin_ray.body.joints import NUM_EXTRA_KEYPOINTS, NUM_SMPL_JOINTS, SMPL_PARENTS
from spin_ray.body.model_file import NUM_H36M_JOINTS, NUM_POSE_BASIS


def _sparse_rows(rng: np.random.Generator, rows: int, num_vertices: int, max_support: int) -> np.ndarray:
    """(rows, V) regressor: each row a convex combination of 1..max_support random vertices."""
    out = np.zeros((rows, num_vertices), dtype=np.float32)
    for row in range(rows):
        ids = rng.choice(num_vertices, size=int(rng.integers(1, max_support + 1)), replace=False)
        w = rng.uniform(0.2, 1.0, size=len(ids))
        out[row, ids] = w / w.sum()
    return out


def random_model_arrays(
    num_vertices: int = 300,
    num_betas: int = 10,
    seed: int = 0,
    keypoint_support: int = 4,
    with_keypoint_regressor: bool = True,
    joints_per_vertex: int = 4,
) -> dict[str, np.ndarray]:
    """Raw SMPL-layout arrays of a random body: smooth skinning, nonzero shape and pose blendshapes.

    Joints are spread over ~1.7 m like a person's and vertices scattered around them, so poses move
    points by realistic distances; the keypoint regressor rows touch at most `keypoint_support` vertices.
    """
    rng = np.random.default_rng(seed)
    parents = np.array(SMPL_PARENTS)
    # Joints: each a random offset of ~10-20 cm from its parent, so the tree spans a body's size.
    joints = np.zeros((NUM_SMPL_JOINTS, 3))
    for j in range(1, NUM_SMPL_JOINTS):
        joints[j] = joints[parents[j]] + rng.normal(0.0, 0.1, size=3)
    owner = rng.integers(0, NUM_SMPL_JOINTS, size=num_vertices)
    v_template = joints[owner] + rng.normal(0.0, 0.05, size=(num_vertices, 3))
    # Smooth weights: a softmax over distances to the nearest `joints_per_vertex` joints (SMPL's
    # vertices depend on at most 4 joints).
    dist2 = ((v_template[:, None, :] - joints[None]) ** 2).sum(-1)
    logits = -dist2 / (2 * 0.08**2)
    far = np.argsort(dist2, axis=1)[:, joints_per_vertex:]
    np.put_along_axis(logits, far, -np.inf, axis=1)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    # J_regressor: each joint a convex combination of its 8 nearest vertices (like SMPL's sparse rows).
    j_regressor = np.zeros((NUM_SMPL_JOINTS, num_vertices))
    nearest = np.argsort(dist2, axis=0)[:8].T
    for j in range(NUM_SMPL_JOINTS):
        w = rng.uniform(0.5, 1.0, size=8)
        j_regressor[j, nearest[j]] = w / w.sum()
    arrays = {
        "v_template": v_template.astype(np.float32),
        "f": rng.integers(0, num_vertices, size=(2 * num_vertices, 3)).astype(np.uint32),
        "shapedirs": rng.normal(0.0, 0.01, size=(num_vertices, 3, num_betas)).astype(np.float32),
        "posedirs": rng.normal(0.0, 0.01, size=(num_vertices, 3, NUM_POSE_BASIS)).astype(np.float32),
        "J_regressor": j_regressor.astype(np.float32),
        "weights": weights.astype(np.float32),
        # SMPL stores the root's parent as uint32 -1.
        "kintree_table": np.stack([np.where(parents < 0, 2**32 - 1, parents), np.arange(NUM_SMPL_JOINTS)]
                                  ).astype(np.int64),
        "J_regressor_h36m": _sparse_rows(rng, NUM_H36M_JOINTS, num_vertices, 6),
    }
    if with_keypoint_regressor:
        arrays["keypoint_regressor"] = _sparse_rows(rng, NUM_EXTRA_KEYPOINTS, num_vertices, keypoint_support)
    return arrays
