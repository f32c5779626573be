"""Renderer throughput: shaded renders per second with a fresh vertex buffer each frame."""

from __future__ import annotations

import time

import numpy as np

from spin_ray.render.renderer import MeshRenderer
from spin_ray_sim.primitives import torus


def measure_renders_per_second(
    width: int = 224,
    height: int = 224,
    seconds: float = 2.0,
    mesh: tuple[np.ndarray, np.ndarray] | None = None,
    mode: str = "shaded",
) -> dict:
    """Renders/s of `mode` (shaded, silhouette, part_colors) for `mesh` (default: a 27,378-triangle
    torus, the size of the open body model); vertices change every frame as in data generation."""
    vertices, faces = mesh if mesh is not None else torus()
    vertices = np.asarray(vertices, dtype=np.float32)
    radius = float(np.linalg.norm(vertices - vertices.mean(0), axis=1).max())
    # Fill about 80 % of the image: focal length from the mesh's radius at distance 3 radii.
    distance = 3.0 * radius
    focal = 0.4 * min(width, height) * distance / radius
    translation = -vertices.mean(0) + np.array([0.0, 0.0, distance], dtype=np.float32)
    rng = np.random.default_rng(0)
    colors = rng.random((len(vertices), 3)).astype(np.float32)
    frames_pool = [vertices + 0.01 * radius * rng.standard_normal(vertices.shape).astype(np.float32) for _ in range(8)]
    with MeshRenderer(width, height, faces) as renderer:
        render = {
            "shaded": lambda v: renderer.shaded(v, translation, focal),
            "silhouette": lambda v: renderer.silhouette(v, translation, focal),
            "part_colors": lambda v: renderer.part_colors(v, translation, focal, vertex_colors=colors),
        }[mode]
        render(vertices)  # warm-up: shader compile and buffer sizing
        frames, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            render(frames_pool[frames % len(frames_pool)])
            frames += 1
        elapsed = time.perf_counter() - start
    return {
        "mode": mode,
        "renders_per_s": frames / elapsed,
        "frames": frames,
        "triangles": int(len(faces)),
        "vertices": int(len(vertices)),
        "size": f"{width}x{height}",
    }
