"""Closed test meshes (icosphere, torus) for renderer tests and benchmarks."""

from __future__ import annotations

import numpy as np


def torus(rings: int = 117, segments: int = 117, major: float = 1.0, minor: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Torus around the y axis: vertices (rings*segments, 3) float32, faces (2*rings*segments, 3) int64."""
    u = np.linspace(0, 2 * np.pi, rings, endpoint=False)[:, None]
    v = np.linspace(0, 2 * np.pi, segments, endpoint=False)[None, :]
    radius = major + minor * np.cos(v)
    verts = np.stack(
        np.broadcast_arrays(radius * np.cos(u), minor * np.sin(v), radius * np.sin(u)), axis=-1
    ).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    a = i * segments + j
    b = ((i + 1) % rings) * segments + j
    c = ((i + 1) % rings) * segments + (j + 1) % segments
    d = i * segments + (j + 1) % segments
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts.astype(np.float32), faces.astype(np.int64)


def icosphere(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices (V,3) float32 and faces (F,3) int64, 20 * 4**subdivisions triangles."""
    phi = (1.0 + 5.0 ** 0.5) / 2.0
    verts = [(-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0), (0, -1, phi), (0, 1, phi),
             (0, -1, -phi), (0, 1, -phi), (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = np.array(verts, dtype=np.float64)
    f = np.array(faces, dtype=np.int64)
    for _ in range(subdivisions):
        # Midpoint of every edge, shared between the two faces on it.
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid_index = len(v) + inverse.reshape(3, -1)
        v = np.concatenate([v, (v[unique[:, 0]] + v[unique[:, 1]]) / 2.0])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        ab, bc, ca = mid_index
        f = np.concatenate([np.stack(t, axis=1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32), f
