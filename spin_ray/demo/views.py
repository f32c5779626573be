"""The demo's pictures and mesh file: overlays on the crop and the full image, a side view, Wavefront .obj.

Renderers are created here, in the process that draws, one at a time: a MeshRenderer does not make
its GL context current before drawing, so two alive in one process would share the wrong context.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spin_ray.data.augment import crop_image, crop_matrix
from spin_ray.errors import RenderError
from spin_ray.render.renderer import MeshRenderer, overlay

# The first is the single-person colour of old; the others are far from it and from each other.
MESH_COLORS = ((0.65, 0.74, 0.86), (0.93, 0.66, 0.46), (0.58, 0.85, 0.55), (0.86, 0.58, 0.84), (0.95, 0.88, 0.45),
               (0.50, 0.84, 0.86))
MESH_OPACITY = 0.8  # the photo shows through a little, so misalignment is visible
SIDE_VIEW_DEGREES = 90.0
WHITE = 255
WARNING_RED = (200, 0, 0)


@dataclass(frozen=True)
class PersonViews:
    """RGB uint8 pictures of one person's mesh in its own box."""

    crop_overlay: np.ndarray  # (S, S, 3) the box at the fitting crop's resolution, mesh blended in
    side_view: np.ndarray  # (S, S, 3) on white


@dataclass(frozen=True)
class PlacedMesh:
    """One person's camera-frame mesh and the full-image camera of its box (focal and principal point, pixels)."""

    vertices: np.ndarray  # (V, 3)
    focal: float
    center: tuple[float, float]
    color: tuple[float, float, float]


def person_color(rank: int) -> tuple[float, float, float]:
    """The mesh colour of the rank-th person drawn (cycling through MESH_COLORS)."""
    return MESH_COLORS[rank % len(MESH_COLORS)]


def rotate_about_vertical(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Vertices (V,3) turned by `degrees` about the camera's vertical (y) axis through their centroid."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    centre = vertices.mean(axis=0)
    return ((vertices - centre) @ rotation.T + centre).astype(np.float32)


def render_person_views(
    image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, center: np.ndarray, scale: float,
    crop_size: int, crop_focal: float, color: tuple[float, float, float],
) -> PersonViews:
    """Draw one person's camera-frame vertices over its box crop, and from the side on white."""
    crop = crop_image(image, crop_matrix(center, scale, crop_size), crop_size)
    no_translation = (0.0, 0.0, 0.0)
    crop_centre = (crop_size / 2.0, crop_size / 2.0)
    with MeshRenderer(crop_size, crop_size, faces) as renderer:
        crop_rgba = renderer.shaded(vertices, no_translation, crop_focal, crop_centre, color)
        side_rgba = renderer.shaded(rotate_about_vertical(vertices, SIDE_VIEW_DEGREES), no_translation, crop_focal,
                                    crop_centre, color)
    white = np.full((crop_size, crop_size, 3), WHITE, np.uint8)
    return PersonViews(crop_overlay=overlay(crop, crop_rgba, MESH_OPACITY), side_view=overlay(white, side_rgba))


def image_depth(mesh: PlacedMesh) -> float:
    """How far the person is, in units shared by every person of the photo: each mesh lives in the crop camera of
    its own box, whose depth scales with that camera's focal length, so depth over focal compares across boxes."""
    return float(np.median(mesh.vertices[:, 2])) / mesh.focal


def render_image_overlay(
    image: np.ndarray, meshes: list[PlacedMesh], faces: np.ndarray, renderer: MeshRenderer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every mesh over the whole image, farthest first so nearer people cover farther ones; and the (H, W) bool
    mask of where any mesh covers the image. `renderer`: one of the image's size to reuse (a video's frames)."""
    height, width = image.shape[:2]
    picture, mask = image, np.zeros((height, width), bool)
    own = renderer is None
    renderer = MeshRenderer(width, height, faces) if own else renderer
    try:
        for mesh in sorted(meshes, key=image_depth, reverse=True):
            rgba = renderer.shaded(mesh.vertices, (0.0, 0.0, 0.0), mesh.focal, mesh.center, mesh.color)
            picture = overlay(picture, rgba, MESH_OPACITY)
            mask |= rgba[..., 3] > 0
    finally:
        if own:
            renderer.close()
    return picture, mask


def stamp(rgb: np.ndarray, text: str) -> np.ndarray:
    """A copy of an RGB picture with `text` in white on a red band across its top (a warning people cannot miss)."""
    out = rgb.copy()
    height, width = out.shape[:2]
    scale = max(0.35, min(1.0, width / 640))
    thickness = max(1, round(2 * scale))
    (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if text_w > width - 8:  # long text on a small picture: shrink it to fit
        scale *= (width - 8) / text_w
        (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = min(height, text_h + base + 8)
    out[:band] = WARNING_RED
    cv2.putText(out, text, (4, band - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return out


def encode_png(rgb: np.ndarray, what: str) -> bytes:
    """PNG bytes of an RGB uint8 picture."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RenderError(f"OpenCV could not encode the {what} as PNG (image of shape {rgb.shape})")
    return data.tobytes()


def obj_text(vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> str:
    """A Wavefront .obj of a triangle mesh: `v x y z` lines, then `f a b c` with 1-based indices."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise RenderError(f"obj_text needs vertices (V,3) and faces (F,3), got {vertices.shape} and {faces.shape}")
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    v = "\n".join(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices.tolist())
    f = "\n".join(f"f {a} {b} {c}" for a, b, c in (faces.astype(np.int64) + 1).tolist())
    return f"{header}{v}\n{f}\n"
