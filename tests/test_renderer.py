"""Headless renderer: silhouettes agree with an independent rasterisation, depth test, overlay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from spin_ray.errors import RenderError
from spin_ray.render import renderer as R
from spin_ray_sim.primitives import icosphere, torus

OPEN_MODEL = Path(__file__).resolve().parents[1] / "spin_ray" / "body" / "assets" / "open_body_model.npz"


def box(size=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box: 8 vertices, 12 triangles."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    verts = corners * np.array(size) + np.array(offset)
    faces = np.array([
        [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
        [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
    ])
    return verts.astype(np.float32), faces


def project(vertices, translation, focal, center) -> np.ndarray:
    """The project's camera, written out independently of the renderer."""
    p = vertices.astype(np.float64) + np.asarray(translation, dtype=np.float64)
    return focal * p[:, :2] / p[:, 2:] + np.asarray(center, dtype=np.float64)


def rasterise_triangles(points2d, faces, width, height) -> np.ndarray:
    """Reference mask: every projected triangle filled with OpenCV, sub-pixel exact (shift 8)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    fixed = np.rint(points2d * 256).astype(np.int32)
    for tri in faces:
        cv2.fillPoly(mask, [fixed[tri]], 1, lineType=cv2.LINE_8, shift=8)
    return mask.astype(bool)


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def sphere():
    return icosphere(3)


def test_sphere_silhouette_matches_reference_rasterisation(sphere):
    verts, faces = sphere
    translation, focal, center = (0.2, -0.1, 4.0), 360.0, (120.0, 100.0)
    with R.MeshRenderer(240, 200, faces) as renderer:
        mask = renderer.silhouette(verts, translation, focal, center)
    ref = rasterise_triangles(project(verts, translation, focal, center), faces, 240, 200)
    assert mask.sum() > 20000
    assert iou(mask, ref) > 0.98
    # No pixel of either mask is more than one pixel from the other.
    kernel = np.ones((3, 3), np.uint8)
    assert not (mask & ~cv2.dilate(ref.astype(np.uint8), kernel).astype(bool)).any()
    assert not (ref & ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)).any()


def test_open_camera_center_and_projected_vertices_inside(sphere):
    verts, faces = torus(24, 16)
    # Tilted towards the camera so the hole shows; off-centre principal point.
    tilt = np.array([[1, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]], dtype=np.float32)
    verts = verts @ tilt.T
    translation, focal, center = (0.0, 0.3, 5.0), 380.0, (112.0, 112.0)
    with R.MeshRenderer(224, 240, faces) as renderer:
        mask = renderer.silhouette(verts, translation, focal, center)
    uv = project(verts, translation, focal, center)
    ref = rasterise_triangles(uv, faces, 224, 240)
    assert iou(mask, ref) > 0.98
    # The torus hole is background in both.
    hole = np.rint(project(np.zeros((1, 3)), translation, focal, center)[0]).astype(int)
    assert not mask[hole[1], hole[0]] and not ref[hole[1], hole[0]]
    # Every vertex projects onto the silhouette (a 1-pixel tolerance for vertices on the outline).
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cols, rows = np.rint(uv).astype(int).T
    assert grown[rows, cols].all()


@pytest.mark.skipif(not OPEN_MODEL.exists(), reason="open body model not built yet")
def test_open_body_model_silhouette():
    with np.load(OPEN_MODEL) as data:
        verts, faces = data["v_template"].astype(np.float32), data["f"].astype(np.int64)
    center3 = verts.mean(0)
    translation = -center3 + np.array([0.0, 0.0, 2.5 * np.ptp(verts[:, 1])])
    with R.MeshRenderer(224, 224, faces) as renderer:
        mask = renderer.silhouette(verts, translation, 500.0)
    uv = project(verts, translation, 500.0, (112.0, 112.0))
    ref = rasterise_triangles(uv, faces, 224, 224)
    # fillPoly includes every pixel a triangle's outline touches, so on thin limbs and fingers the
    # reference is up to a pixel fatter than the exact rasterisation: compare within one pixel.
    kernel = np.ones((3, 3), np.uint8)
    assert not (mask & ~cv2.dilate(ref.astype(np.uint8), kernel).astype(bool)).any()
    assert not (cv2.erode(ref.astype(np.uint8), kernel).astype(bool) & ~mask).any()
    assert iou(mask, ref) > 0.9
    grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    cols, rows = np.rint(uv).astype(int).T
    # Only vertices that land in the image can be checked (negative indices would wrap around).
    inside = (cols >= 0) & (cols < 224) & (rows >= 0) & (rows < 224)
    assert inside.mean() > 0.5
    assert grown[rows[inside], cols[inside]].all()


def test_box_lands_where_the_camera_formula_says():
    verts, faces = box(size=(1.0, 2.0, 0.01))
    # A thin box facing the camera at depth 10 with f=100 spans 10 x 20 pixels around the centre.
    with R.MeshRenderer(64, 64, faces) as renderer:
        mask = renderer.silhouette(verts, (1.0, 0.0, 10.0), 100.0, (32.0, 32.0))
    rows, cols = np.nonzero(mask)
    # x in [0.5, 1.5] * 10 + 32 = [37, 47]; y in [-1, 1] * 10 + 32 = [22, 42] (pixel centres inclusive).
    assert (cols.min(), cols.max()) == (37, 47)
    assert (rows.min(), rows.max()) == (22, 42)


def test_depth_test_keeps_the_nearer_surface_whatever_the_draw_order():
    near_v, near_f = box(size=(1, 1, 0.1), offset=(0, 0, -1))
    far_v, far_f = box(size=(2, 2, 0.1), offset=(0, 0, 1))
    for order in ((near_v, near_f, far_v, far_f), (far_v, far_f, near_v, near_f)):
        v = np.concatenate([order[0], order[2]])
        f = np.concatenate([order[1], order[3] + len(order[0])])
        colors = np.zeros((16, 3), np.uint8)
        is_near = np.concatenate([np.full(8, order[0] is near_v), np.full(8, order[0] is not near_v)])
        colors[is_near] = (255, 0, 0)
        colors[~is_near] = (0, 0, 255)
        with R.MeshRenderer(64, 64, f) as renderer:
            img = renderer.part_colors(v, (0, 0, 6.0), 60.0, vertex_colors=colors)
        assert tuple(img[32, 32]) == (255, 0, 0)  # near box in front
        assert tuple(img[32, 24]) == (0, 0, 255)  # only the far box reaches here
        assert tuple(img[0, 0]) == (0, 0, 0)


def test_shaded_alpha_is_the_silhouette_and_faces_the_light(sphere):
    verts, faces = sphere
    with R.MeshRenderer(96, 96, faces) as renderer:
        rgba = renderer.shaded(verts, (0, 0, 3.0), 100.0, color=(1.0, 1.0, 1.0))
        mask = renderer.silhouette(verts, (0, 0, 3.0), 100.0)
        # Reused renderer, new vertex positions: the buffer update must take effect.
        moved = renderer.silhouette(verts, (0.5, 0, 3.0), 100.0)
    assert rgba.dtype == np.uint8 and rgba.shape == (96, 96, 4)
    assert np.array_equal(rgba[..., 3] == 255, mask)
    assert (rgba[..., 3][~mask] == 0).all()
    centre, rim = rgba[48, 48, 0], rgba[48, np.nonzero(mask[48])[0].min(), 0]
    assert centre > 240 and rim < centre - 60
    assert np.nonzero(moved[48])[0].mean() > np.nonzero(mask[48])[0].mean() + 10


def test_overlay_blends_only_inside_the_mask(sphere):
    verts, faces = sphere
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    with R.MeshRenderer(80, 80, faces) as renderer:
        rgba = renderer.shaded(verts, (0, 0, 3.0), 80.0)
    out = R.overlay(photo, rgba)
    inside = rgba[..., 3] > 0
    assert inside.any() and (~inside).any()
    assert np.array_equal(out[~inside], photo[~inside])
    assert np.array_equal(out[inside], rgba[..., :3][inside])
    half = R.overlay(photo, rgba, opacity=0.5)
    expected = (photo[inside].astype(float) + rgba[..., :3][inside]) / 2
    assert np.abs(half[inside] - expected).max() <= 1.0
    with pytest.raises(RenderError, match="same size"):
        R.overlay(photo[:10], rgba)


def test_bad_input_and_lifetime_errors(sphere):
    verts, faces = sphere
    renderer = R.MeshRenderer(32, 32, faces)
    with pytest.raises(RenderError, match="behind the camera"):
        renderer.silhouette(verts, (0, 0, -5.0), 50.0)
    with pytest.raises(RenderError, match="vertices"):
        renderer.silhouette(verts[:10], (0, 0, 5.0), 50.0)
    with pytest.raises(RenderError, match="vertex_colors"):
        renderer.part_colors(verts, (0, 0, 5.0), 50.0, vertex_colors=np.full((len(verts), 3), 2.0))
    renderer.close()
    renderer.close()  # idempotent
    with pytest.raises(RenderError, match="closed"):
        renderer.silhouette(verts, (0, 0, 5.0), 50.0)


def test_missing_egl_says_what_to_install(monkeypatch):
    import moderngl

    def fail(**kwargs):
        raise Exception("eglGetDisplay failed")

    monkeypatch.setattr(moderngl, "create_context", fail)
    with pytest.raises(RenderError, match="libegl1 libgl1"):
        R.MeshRenderer(8, 8, np.array([[0, 1, 2]]))


def test_agrees_with_geometry_perspective_projection(sphere):
    geometry = pytest.importorskip("spin_ray.geometry")
    import torch

    verts, faces = sphere
    translation, focal, center = np.array([0.1, 0.2, 4.0]), 150.0, np.array([60.0, 50.0])
    uv = geometry.perspective_projection(
        torch.from_numpy(verts)[None].double(),
        torch.from_numpy(translation)[None],
        focal,
        torch.from_numpy(center)[None],
    )[0].numpy()
    np.testing.assert_allclose(uv, project(verts, translation, focal, center), atol=1e-6)
    with R.MeshRenderer(120, 100, faces) as renderer:
        mask = renderer.silhouette(verts, translation, focal, center)
    assert iou(mask, rasterise_triangles(uv, faces, 120, 100)) > 0.97
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cols, rows = np.rint(uv).astype(int).T
    assert grown[rows, cols].all()
