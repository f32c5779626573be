"""The synthetic benchmark's renderer of people: one chunk of samples from the body model, seeded per chunk.

`SyntheticGenerator` holds the state (body model, GL context) and turns a `ChunkSpec` into a
`SyntheticChunk` of images and annotations; `synth.py` builds whole datasets from chunks and caches them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import (
    EXTRA_KEYPOINT_NAMES,
    NUM_OPENPOSE,
    SMPL_EXTRA_VERTEX_IDS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    SPIN49_FROM_JOINTS_AND_EXTRAS,
)
from spin_ray.body.pose_sampler import sample_body_poses, sample_global_orient
from spin_ray.config import RunConfig
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.spin_format import SHAPE_DIM
from spin_ray.data.synth_masks import part_labels_of_joint_map
from spin_ray.data.synth_scene import (
    BOX_MARGIN,
    clothing_albedo,
    decode_depth_and_part,
    detector_keypoints,
    encode_depth_and_part,
    inside_image,
    keypoint_parts,
    occluded_keypoints,
    person_boxes,
    project,
    random_background,
)
from spin_ray.errors import ConfigError
from spin_ray.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from spin_ray.render.renderer import MeshRenderer, face_incidence, vertex_normals

# Seeds of a split's chunks are derived from the split's code (see chunk_seed_sequence).
SPLIT_CODES: dict[str, int] = {"synth-3d": 1, "synth-itw": 2, "synth-test": 3}
# Keypoints on the skin rather than inside the body: a little of their own surface in front hides them.
_SURFACE_KEYPOINTS = frozenset(SMPL_EXTRA_VERTEX_IDS) | {"head_top"}
# Centre jitter of a person, in person-box sides.
_CENTRE_JITTER = 0.08
# Image edges a truncated person crosses, as (axis, direction), with their probabilities, and the
# share of the person's extent that leaves the image (below one half, so the box centre stays inside).
_TRUNCATION_EDGES: tuple[tuple[int, int], ...] = ((1, 1), (1, -1), (0, -1), (0, 1))
_TRUNCATION_EDGE_PROBS = (0.4, 0.2, 0.2, 0.2)
_TRUNCATION_CUT = (0.1, 0.45)
# Lighting: ambient and diffuse ranges of the Lambert shading.
_AMBIENT = (0.25, 0.45)
_MIN_BODY_VALUE = 2.0 / 255.0
_DIFFUSE = (0.55, 0.8)


@dataclass(frozen=True)
class ChunkSpec:
    """One seeded unit of work: samples start..start+count of a split."""

    split: str
    start: int
    count: int
    chunk_index: int


def chunk_seed_sequence(seed: int, split: str, chunk_index: int) -> np.random.SeedSequence:
    """Independent random stream of one chunk; splits never share streams (the test split is held out)."""
    if split not in SPLIT_CODES:
        raise ConfigError(f"unknown synthetic split '{split}'; the splits are {list(SPLIT_CODES)}")
    return np.random.SeedSequence([seed, SPLIT_CODES[split], chunk_index])


@dataclass
class SyntheticChunk:
    """Rendered images (n,S,S,3) RGB uint8 and every annotation array of a chunk."""

    spec: ChunkSpec
    images: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    part: np.ndarray
    openpose: np.ndarray
    S: np.ndarray
    pose: np.ndarray
    shape: np.ndarray
    cam_t: np.ndarray
    focal_length: np.ndarray
    masks: np.ndarray
    part_labels: np.ndarray  # (n,S,S) uint8: the six-part segmentation (data/synth_masks.py), 0 background


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with n torch threads (results must not depend on the caller's thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SyntheticGenerator:
    """Renders chunks of synthetic samples; holds the body model and one GL context (not fork-safe)."""

    def __init__(self, cfg: RunConfig, body: BodyModel | None = None):
        self.cfg = cfg
        self.synth = cfg.synth
        self.body = BodyModel.from_config(cfg.body) if body is None else body
        self.size = cfg.synth.image_size
        self.renderer = MeshRenderer(self.size, self.size, self.body.faces)
        # One renderer (one GL context) per process: MeshRenderer does not make its context current
        # before drawing, so a second one in the same process would draw into the wrong context.
        self.incidence = face_incidence(self.body.faces, self.body.num_vertices)
        self.part_of_vertex = self.body.smpl.lbs_weights.argmax(dim=1).numpy()
        sources = [(SMPL_JOINT_NAMES + EXTRA_KEYPOINT_NAMES)[i] for i in SPIN49_FROM_JOINTS_AND_EXTRAS]
        on_surface = np.array([name in _SURFACE_KEYPOINTS for name in sources])
        self.self_occlusion = np.where(on_surface, cfg.synth.surface_occlusion_depth,
                                       cfg.synth.self_occlusion_depth)
        self.own_parts = keypoint_parts(list(SMPL_PARENTS), self.part_of_vertex,
                                        self.body.keypoint_regressor.numpy())

    def close(self) -> None:
        """Release the GL context."""
        self.renderer.close()

    def _orientations(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Global orients (n,3): facing the camera within +-max_yaw; large turns get any yaw and a roll."""
        s = self.synth
        orient = sample_global_orient(n, math.radians(s.max_yaw_deg), gen, dtype=torch.float64)
        large = torch.rand(n, generator=gen, dtype=torch.float64) < s.large_turn_prob
        yaw = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * math.pi
        roll = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * math.radians(s.max_roll_deg)
        turn = torch.zeros(n, 3, dtype=torch.float64)
        turn[:, 1] = yaw
        tilt = torch.zeros(n, 3, dtype=torch.float64)
        tilt[:, 2] = roll
        # Roll about the camera axis after a yaw about the camera's vertical axis.
        turned = axis_angle_to_matrix(tilt) @ axis_angle_to_matrix(turn) @ axis_angle_to_matrix(orient)
        return torch.where(large[:, None], matrix_to_axis_angle(turned), orient).float()

    def render_chunk(self, spec: ChunkSpec) -> SyntheticChunk:
        """All samples of one chunk, a pure function of (settings, body model, spec)."""
        s, size, n = self.synth, self.size, spec.count
        seq = chunk_seed_sequence(s.seed, spec.split, spec.chunk_index)
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        rng = np.random.default_rng(seq)
        with _torch_threads(1), torch.no_grad():
            pose = sample_body_poses(n, gen)
            pose[:, :3] = self._orientations(n, gen)
            betas10 = torch.randn(n, SHAPE_DIM, generator=gen)
            betas = torch.zeros(n, self.body.num_betas)
            k = min(SHAPE_DIM, self.body.num_betas)
            betas[:, :k] = betas10[:, :k]
            betas10[:, k:] = 0.0
            out = self.body(axis_angle_pose_to_rotmats(pose), betas)
        vertices = out.vertices.numpy().astype(np.float64)
        keypoints = out.keypoints.numpy().astype(np.float64)

        focal = rng.uniform(*s.focal_length, n)
        fraction = rng.uniform(*s.person_height, n)
        low, high = keypoints[..., :2].min(axis=1), keypoints[..., :2].max(axis=1)
        side_m = BOX_MARGIN * (high - low).max(axis=1)
        depth = focal * side_m / (fraction * size)
        box_px = fraction * size
        offset = rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER, (n, 2)) * box_px[:, None]
        # Truncation: push the person over one image edge (most often the bottom, cutting the legs)
        # so that a share `cut` of its keypoint extent along that axis leaves the image.
        truncated = rng.random(n) < s.truncation_prob
        edge = rng.choice(len(_TRUNCATION_EDGES), n, p=_TRUNCATION_EDGE_PROBS)
        cut = rng.uniform(*_TRUNCATION_CUT, n)
        extent_px = (high - low) * (focal / depth)[:, None]
        for i in np.flatnonzero(truncated):
            axis, sign = _TRUNCATION_EDGES[edge[i]]
            offset[i, axis] = sign * (size / 2.0 - extent_px[i, axis] / 2.0 + cut[i] * extent_px[i, axis])
        mid = (low + high) / 2.0
        mid_z = keypoints[..., 2].mean(axis=1)
        cam_t = np.concatenate([offset * depth[:, None] / focal[:, None] - mid, (depth - mid_z)[:, None]], axis=1)

        uv = project(keypoints, cam_t, focal, size)
        kp_depth = keypoints[..., 2] + cam_t[:, 2:3]
        images = np.empty((n, size, size, 3), np.uint8)
        masks = np.empty((n, size, size), bool)
        depth_maps = np.empty((n, size, size), np.float32)
        part_maps = np.empty((n, size, size), np.int16)
        for i in range(n):
            images[i], masks[i], depth_maps[i], part_maps[i] = self._render_person(vertices[i], cam_t[i], focal[i], rng)
        in_image = inside_image(uv, size)
        occluded = in_image & occluded_keypoints(
            uv, kp_depth, depth_maps, part_maps, self.own_parts, s.occlusion_depth,
            self.self_occlusion)
        center, scale = person_boxes(uv, size)
        part = np.concatenate([uv[:, NUM_OPENPOSE:], (in_image & ~occluded)[:, NUM_OPENPOSE:, None]], axis=-1)
        openpose = detector_keypoints(uv[:, :NUM_OPENPOSE], in_image[:, :NUM_OPENPOSE], occluded[:, :NUM_OPENPOSE],
                                      scale * SCALE_UNIT_PX, rng, s)
        joints = keypoints[:, NUM_OPENPOSE:] + cam_t[:, None]
        S = np.concatenate([joints, np.ones((n, joints.shape[1], 1))], axis=-1)
        return SyntheticChunk(
            spec=spec, images=images, center=center, scale=scale, part=part.astype(np.float32),
            openpose=openpose, S=S.astype(np.float32), pose=pose.numpy().astype(np.float32),
            shape=betas10.numpy().astype(np.float32), cam_t=cam_t.astype(np.float32),
            focal_length=focal.astype(np.float32), masks=masks, part_labels=part_labels_of_joint_map(part_maps),
        )

    def _render_person(self, vertices: np.ndarray, cam_t: np.ndarray, focal: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Composited RGB image, body mask, depth map and part map (-1: background)."""
        albedo = clothing_albedo(rng)[self.part_of_vertex]
        light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.3), -1.0])
        light /= np.linalg.norm(light)
        normals = vertex_normals(vertices.astype(np.float32), self.body.faces, self.incidence)
        ambient, diffuse = rng.uniform(*_AMBIENT), rng.uniform(*_DIFFUSE)
        shade = ambient + diffuse * np.abs(normals @ light)
        # Never pure black, so the background's black marks exactly the pixels without the body.
        colours = np.clip(albedo * shade[:, None], _MIN_BODY_VALUE, 1.0)
        body_rgb = self.renderer.part_colors(vertices, cam_t, focal, vertex_colors=colours)
        mask = body_rgb.max(axis=-1) > 0
        z = vertices[:, 2] + cam_t[2]
        near, far = float(z.min()), float(z.max())
        coded = self.renderer.part_colors(
            vertices, cam_t, focal, vertex_colors=encode_depth_and_part(z, self.part_of_vertex, near, far))
        depth_map, part_map = decode_depth_and_part(coded, near, far)
        image = random_background(rng, self.size)
        image[mask] = body_rgb[mask]
        return image, mask, depth_map, part_map


# -- writing, workers, caching --------------------------------------------------------------------
