"""Headless mesh rendering (moderngl over EGL): shaded images, part colours, silhouettes, overlays.

Camera convention (the project's): perspective, camera looks along +z, image y points down,
a point X in mesh coordinates lands at pixel  f * (X + t)[:2] / (X + t)[2] + c.
Pixel centres sit at integer coordinates (OpenCV's convention), so a projected point (u, v) falls
in the pixel of row round(v), column round(u).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse

from spin_ray.errors import RenderError

# Fraction of the mesh's depth range added in front of and behind it, so the near/far planes never
# clip the mesh itself.
_DEPTH_MARGIN = 0.05
# Lambert shading: light from the camera, plus ambient so that grazing surfaces are not black.
_AMBIENT = 0.3
_DIFFUSE = 0.7

_VERTEX_SHADER = """
#version 330
uniform vec2 focal;       // pixels
uniform vec2 center;      // pixels
uniform vec2 size;        // image width, height in pixels
uniform vec2 depth_ab;    // z_clip = a * z + b
uniform vec3 translation;
in vec3 in_position;
#ifdef WITH_NORMAL
in vec3 in_normal;
out vec3 v_normal;
out vec3 v_position;
#endif
#ifdef WITH_COLOR
in vec3 in_color;
flat out vec3 v_color;
#endif
void main() {
    vec3 p = in_position + translation;
    // Pixel coordinate u = f x / z + c; the +0.5 puts pixel centres at integer u.
    // Window row 0 is image row 0 (glReadPixels returns the lowest row first), so no y flip here.
    vec2 ndc_times_z = 2.0 * (focal * p.xy + (center + 0.5) * p.z) / size - p.z;
    gl_Position = vec4(ndc_times_z, depth_ab.x * p.z + depth_ab.y, p.z);
#ifdef WITH_NORMAL
    v_normal = in_normal;
    v_position = p;
#endif
#ifdef WITH_COLOR
    v_color = in_color;
#endif
}
"""

_SHADED_FRAGMENT = """
#version 330
uniform vec3 color;
uniform vec2 light;  // ambient, diffuse
in vec3 v_normal;
in vec3 v_position;
out vec4 f_color;
void main() {
    // Two-sided Lambert with a headlight: the mesh's winding order does not matter.
    float lambert = abs(dot(normalize(v_normal), normalize(-v_position)));
    f_color = vec4(color * (light.x + light.y * lambert), 1.0);
}
"""

_COLOR_FRAGMENT = """
#version 330
flat in vec3 v_color;
out vec4 f_color;
void main() { f_color = vec4(v_color, 1.0); }
"""

_MASK_FRAGMENT = """
#version 330
out vec4 f_color;
void main() { f_color = vec4(1.0); }
"""


def face_incidence(faces: np.ndarray, num_vertices: int) -> scipy.sparse.csr_matrix:
    """Sparse (V,F) matrix with a 1 where vertex v is a corner of face f."""
    rows = faces.reshape(-1)
    cols = np.repeat(np.arange(len(faces)), 3)
    ones = np.ones(len(rows), dtype=np.float32)
    return scipy.sparse.csr_matrix((ones, (rows, cols)), shape=(num_vertices, len(faces)))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence=None) -> np.ndarray:
    """Unit per-vertex normals (V,3): area-weighted sum of adjacent face normals (pass a cached
    `face_incidence` to skip rebuilding it every frame)."""
    if incidence is None:
        incidence = face_incidence(faces, len(vertices))
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.asarray(incidence @ face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.maximum(length, 1e-12)).astype(np.float32)


def overlay(image: np.ndarray, rgba: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """Alpha-blend an RGBA render onto an RGB uint8 image; pixels outside the mask are unchanged."""
    if image.shape[:2] != rgba.shape[:2] or rgba.shape[-1] != 4 or image.shape[-1] != 3:
        raise RenderError(
            f"overlay needs an (H,W,3) image and an (H,W,4) render of the same size, "
            f"got {image.shape} and {rgba.shape}"
        )
    alpha = rgba[..., 3:].astype(np.float32) / 255.0 * opacity
    blended = image.astype(np.float32) * (1.0 - alpha) + rgba[..., :3].astype(np.float32) * alpha
    out = np.rint(blended).astype(np.uint8)
    # Keep untouched pixels bit-exact rather than trusting float round trips.
    return np.where(alpha > 0, out, image)


def _create_egl_context():
    """A standalone EGL OpenGL 3.3+ context, or a RenderError that says what to install."""
    try:
        import moderngl
    except ImportError as err:  # pragma: no cover - moderngl is a hard dependency
        raise RenderError(f"moderngl is not installed ({err}); run `make setup`") from None
    # Loading torchvision's compiled ops after Mesa's llvmpipe driver is in the process crashes it
    # (segmentation fault, measured with torch 2.14.1 / torchvision 0.29.1 on Mesa 22): load them first.
    import torchvision  # noqa: F401

    try:
        return moderngl.create_context(standalone=True, backend="egl", require=330)
    except Exception as err:  # moderngl/glcontext raise plain Exception for every EGL failure
        raise RenderError(
            f"could not create a headless EGL OpenGL context ({err}). Install the system libraries "
            "with `bash scripts/system-deps.sh` (Debian: apt-get install libegl1 libgl1); on GPU "
            "nodes the NVIDIA driver's EGL is used instead"
        ) from None


class MeshRenderer:
    """Renders one mesh topology at a fixed image size; reuse it across frames."""

    def __init__(self, width: int, height: int, faces: np.ndarray):
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise RenderError(f"faces must be a non-empty (F,3) integer array, got shape {faces.shape}")
        if not np.issubdtype(faces.dtype, np.integer) or faces.min() < 0:
            raise RenderError("faces must hold non-negative integer vertex indices")
        if width <= 0 or height <= 0:
            raise RenderError(f"image size must be positive, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.faces = faces.astype(np.int64)
        self._num_vertices_needed = int(faces.max()) + 1
        self._ctx = _create_egl_context()
        ctx = self._ctx
        self._fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((self.width, self.height), components=4)],
            depth_attachment=ctx.depth_renderbuffer((self.width, self.height)),
        )
        # Sized on the first frame; later frames write into the same buffers.
        self._positions = ctx.buffer(reserve=12 * self._num_vertices_needed, dynamic=True)
        self._normals = ctx.buffer(reserve=12 * self._num_vertices_needed, dynamic=True)
        self._colors = ctx.buffer(reserve=12 * self._num_vertices_needed, dynamic=True)
        self._indices = ctx.buffer(self.faces.astype(np.uint32).tobytes())
        self._programs = {
            "shaded": ctx.program(
                vertex_shader=_VERTEX_SHADER.replace("#version 330", "#version 330\n#define WITH_NORMAL"),
                fragment_shader=_SHADED_FRAGMENT,
            ),
            "color": ctx.program(
                vertex_shader=_VERTEX_SHADER.replace("#version 330", "#version 330\n#define WITH_COLOR"),
                fragment_shader=_COLOR_FRAGMENT,
            ),
            "mask": ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_MASK_FRAGMENT),
        }
        self._vaos = {
            "shaded": ctx.vertex_array(
                self._programs["shaded"],
                [(self._positions, "3f", "in_position"), (self._normals, "3f", "in_normal")],
                index_buffer=self._indices,
            ),
            "color": ctx.vertex_array(
                self._programs["color"],
                [(self._positions, "3f", "in_position"), (self._colors, "3f", "in_color")],
                index_buffer=self._indices,
            ),
            "mask": ctx.vertex_array(
                self._programs["mask"], [(self._positions, "3f", "in_position")], index_buffer=self._indices
            ),
        }
        self._incidence = None  # built on the first shaded frame, when V is known
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release every GL object and the context; the renderer is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        for obj in (*self._vaos.values(), *self._programs.values(), self._positions, self._normals,
                    self._colors, self._indices, self._fbo):
            obj.release()
        self._ctx.release()

    def __enter__(self) -> MeshRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------------------------
    def shaded(
        self,
        vertices: np.ndarray,
        translation: Sequence[float],
        focal_length: float | Sequence[float],
        camera_center: Sequence[float] | None = None,
        color: Sequence[float] = (0.65, 0.74, 0.86),
    ) -> np.ndarray:
        """RGBA uint8 image (H,W,4) of the Lambert-shaded mesh; alpha is 255 on the mesh, 0 elsewhere."""
        vertices = self._check_vertices(vertices)
        if self._incidence is None or self._incidence.shape[0] != len(vertices):
            self._incidence = face_incidence(self.faces, len(vertices))
        self._normals.write(vertex_normals(vertices, self.faces, self._incidence).tobytes())
        prog = self._programs["shaded"]
        prog["color"].value = tuple(float(c) for c in _rgb01(color, "color"))
        prog["light"].value = (_AMBIENT, _DIFFUSE)
        self._draw("shaded", vertices, translation, focal_length, camera_center)
        return self._read(4)

    def part_colors(
        self,
        vertices: np.ndarray,
        translation: Sequence[float],
        focal_length: float | Sequence[float],
        camera_center: Sequence[float] | None = None,
        vertex_colors: np.ndarray | None = None,
    ) -> np.ndarray:
        """RGB uint8 image (H,W,3), unlit, each triangle in the colour of its last vertex; background black."""
        vertices = self._check_vertices(vertices)
        if vertex_colors is None:
            raise RenderError("part_colors needs vertex_colors (V,3), uint8 or floats in [0,1]")
        colors = _rgb01(vertex_colors, "vertex_colors")
        if colors.shape != vertices.shape:
            raise RenderError(f"vertex_colors must be (V,3) = {vertices.shape}, got {colors.shape}")
        self._colors.write(colors.astype(np.float32).tobytes())
        self._draw("color", vertices, translation, focal_length, camera_center)
        return self._read(3)

    def silhouette(
        self,
        vertices: np.ndarray,
        translation: Sequence[float],
        focal_length: float | Sequence[float],
        camera_center: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Boolean mask (H,W): True where the mesh covers the pixel centre."""
        vertices = self._check_vertices(vertices)
        self._draw("mask", vertices, translation, focal_length, camera_center)
        return self._read(1)[..., 0] > 127

    # -- internals --------------------------------------------------------------------------------
    def _check_vertices(self, vertices: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RenderError("this MeshRenderer was closed; create a new one")
        vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise RenderError(f"vertices must be (V,3), got shape {vertices.shape}")
        if len(vertices) < self._num_vertices_needed:
            raise RenderError(
                f"faces index vertex {self._num_vertices_needed - 1} but only {len(vertices)} vertices "
                "were given (vertices of another mesh?)"
            )
        if not np.isfinite(vertices).all():
            raise RenderError("vertices contain NaN or inf")
        nbytes = vertices.nbytes
        for buf in (self._positions, self._normals, self._colors):
            if buf.size != nbytes:
                buf.orphan(nbytes)
        return vertices

    def _draw(self, mode, vertices, translation, focal_length, camera_center) -> None:
        t = np.asarray(translation, dtype=np.float64).reshape(-1)
        if t.shape != (3,) or not np.isfinite(t).all():
            raise RenderError(f"translation must be 3 finite numbers, got {translation!r}")
        focal = np.broadcast_to(np.asarray(focal_length, dtype=np.float64), (2,))
        if not (focal > 0).all():
            raise RenderError(f"focal_length must be positive pixels, got {focal_length!r}")
        center = (
            np.array([self.width / 2.0, self.height / 2.0])
            if camera_center is None
            else np.asarray(camera_center, dtype=np.float64).reshape(2)
        )
        depth = vertices[:, 2].astype(np.float64) + t[2]
        near, far = float(depth.min()), float(depth.max())
        if far <= 0:
            raise RenderError(
                f"the whole mesh is behind the camera (largest depth {far:.3g}); the camera looks "
                "along +z, so translation z must put the mesh in front of it"
            )
        margin = _DEPTH_MARGIN * max(far - near, 1e-3 * far)
        far = far + margin
        # A mesh partly behind the camera is clipped at a small positive near plane.
        near = max(near - margin, 1e-3 * far)
        # Maps z = near to -1 and z = far to +1 after the perspective divide by z.
        depth_ab = ((far + near) / (far - near), -2.0 * far * near / (far - near))

        self._positions.write(vertices.tobytes())
        prog = self._programs[mode]
        prog["focal"].value = tuple(focal)
        prog["center"].value = tuple(center)
        prog["size"].value = (float(self.width), float(self.height))
        prog["depth_ab"].value = depth_ab
        prog["translation"].value = tuple(t)

        ctx = self._ctx
        self._fbo.use()
        ctx.viewport = (0, 0, self.width, self.height)
        ctx.enable_only(ctx.DEPTH_TEST)
        self._fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._vaos[mode].render()

    def _read(self, components: int) -> np.ndarray:
        data = self._fbo.read(components=components, alignment=1)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.height, self.width, components).copy()


def _rgb01(values, what: str) -> np.ndarray:
    """Colours as floats in [0,1]: uint8 input is divided by 255."""
    arr = np.asarray(values)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise RenderError(f"{what} must be uint8 or floats in [0,1], got values in [{arr.min()}, {arr.max()}]")
    return arr
