"""The synthetic benchmark: people rendered from the body model, written in SPIN's dataset format.

Each sample: a pose from the open pose sampler, betas ~ N(0, 1), an upright orientation facing the
camera within +-max_yaw (now and then any yaw and a roll), a perspective camera with a random focal
length and distance, clothing-like per-part colours under a random light, a procedural background,
and now and then a person pushed partly out of the image. Ground truth is exact: the 24 dataset
keypoints are the model's projected keypoints with visibility 0 outside the image or behind a
surface (depth test against the rendered depth), and the 25 "detector" keypoints add the errors a
2D detector makes (noise scaled by person size, left/right swaps, misses, confidences).

Splits: `synth-3d` (pose, shape, 3D joints, like H36M), `synth-itw` (2D only, like COCO/MPII: no
pose, shape or S keys; their truth goes to a side file `synth-itw_truth.npz` that training never reads,
so fits of the 2D-only split can be scored against the truth they were not given), `synth-test` (held out, SPIN's evaluation keys pose, shape, S, gender).
Extra keys of the 3D splits: `cam_t` (N,3) translation of the model into the camera frame (metres)
and `focal_length` (N,) in pixels; the principal point is the image centre. `S` is in the camera
frame. Gender is 'n': the data come from one (neutral) model.

Work is split into chunks of `chunk_size` samples, each seeded from (seed, split, chunk index), so
the data do not depend on how many processes made them. A dataset lives in
`<cache>/<hash of its settings>/` ({split}.npz, images/{split}/NNNNNN.jpg, settings.json) and is
reused when that folder exists: it is created by renaming a finished temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import (
    EXTRA_KEYPOINT_NAMES,
    NUM_OPENPOSE,
    SMPL_EXTRA_VERTEX_IDS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    SPIN49_FROM_JOINTS_AND_EXTRAS,
)
from spin_ray.config import SYNTH_SPLITS, RunConfig, SynthConfig, config_from_dict
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.spin_format import SHAPE_DIM, write_spin_npz
from spin_ray.errors import ConfigError, DataError
from spin_ray.body.pose_sampler import sample_body_poses, sample_global_orient
from spin_ray.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from spin_ray.render.renderer import MeshRenderer, face_incidence, vertex_normals
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

# Bump when the generator's output changes for the same settings: old caches are then not reused.
GENERATOR_VERSION = 2  # 2: hidden truth of the 2D-only split in <split>_truth.npz
SPLIT_CODES: dict[str, int] = {"synth-3d": 1, "synth-itw": 2, "synth-test": 3}
SPLITS_WITH_3D: frozenset[str] = frozenset({"synth-3d", "synth-test"})
SETTINGS_FILE = "settings.json"
_HASH_CHARS = 16
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



# -- settings, hashing, paths ---------------------------------------------------------------------

def parse_sizes(text: str) -> dict[str, int]:
    """Split sizes from 'synth-3d=N,synth-itw=N,synth-test=N' (any subset of the splits)."""
    sizes: dict[str, int] = {}
    example = ",".join(f"{s}={n}" for s, n in SynthConfig().sizes.items())
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"bad size '{item}': expected SPLIT=N with N a whole number >= 0, e.g. {example}")
        if name not in SYNTH_SPLITS:
            raise ConfigError(f"unknown synthetic split '{name}' in '{item}'; the splits are {list(SYNTH_SPLITS)}")
        sizes[name] = int(value)
    if not sizes:
        raise ConfigError(f"no sizes given in {text!r}; expected e.g. {example}")
    return sizes


def _hashed_settings(cfg: RunConfig, body_identity: str) -> dict:
    """Everything that changes the generated data, and nothing else (not workers or paths)."""
    synth = cfg.synth.model_dump(mode="json", exclude={"workers", "cache_dir"})
    synth["sizes"] = {s: synth["sizes"].get(s, 0) for s in SYNTH_SPLITS}
    return {"generator_version": GENERATOR_VERSION, "body_model": body_identity, "synth": synth}


def settings_hash(cfg: RunConfig, body_identity: str) -> str:
    """Short hex digest naming the cache folder of these settings with this body model."""
    text = json.dumps(_hashed_settings(cfg, body_identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def cache_root(cfg: RunConfig) -> Path:
    """Folder holding one subfolder per generated dataset."""
    return Path(cfg.synth.cache_dir) if cfg.synth.cache_dir is not None else Path(cfg.cache_dir) / "synth"


def split_sizes(cfg: SynthConfig) -> dict[str, int]:
    """Non-empty splits and their sizes, in SYNTH_SPLITS order."""
    return {s: cfg.sizes[s] for s in SYNTH_SPLITS if cfg.sizes.get(s, 0) > 0}


def image_name(split: str, index: int, fmt: str) -> str:
    """Path of a sample's image relative to the dataset folder (SPIN's imgname)."""
    return f"images/{split}/{index:06d}.{fmt}"


@dataclass(frozen=True)
class ChunkSpec:
    """One seeded unit of work: samples start..start+count of a split."""

    split: str
    start: int
    count: int
    chunk_index: int


def chunk_specs(split: str, size: int, chunk_size: int) -> list[ChunkSpec]:
    """The chunks of a split, in order."""
    return [ChunkSpec(split, start, min(chunk_size, size - start), i)
            for i, start in enumerate(range(0, size, chunk_size))]


def chunk_seed_sequence(seed: int, split: str, chunk_index: int) -> np.random.SeedSequence:
    """Independent random stream of one chunk; splits never share streams (the test split is held out)."""
    if split not in SPLIT_CODES:
        raise ConfigError(f"unknown synthetic split '{split}'; the splits are {list(SPLIT_CODES)}")
    return np.random.SeedSequence([seed, SPLIT_CODES[split], chunk_index])


# -- the generator (state: body model and GL context) ---------------------------------------------

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
            focal_length=focal.astype(np.float32), masks=masks,
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

_ANNOTATIONS = ("center", "scale", "part", "openpose", "S", "pose", "shape", "cam_t", "focal_length")


def _write_chunk_images(chunk: SyntheticChunk, folder: Path, synth: SynthConfig) -> None:
    """Encode and write a chunk's images under folder."""
    params = [cv2.IMWRITE_JPEG_QUALITY, synth.jpeg_quality] if synth.image_format == "jpg" else []
    for i in range(chunk.spec.count):
        path = folder / image_name(chunk.spec.split, chunk.spec.start + i, synth.image_format)
        ok, data = cv2.imencode(f".{synth.image_format}", cv2.cvtColor(chunk.images[i], cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise DataError(f"could not encode {path} as {synth.image_format}")
        path.write_bytes(data.tobytes())


def _generate_and_write(generator: SyntheticGenerator, spec: ChunkSpec, folder: Path) -> dict:
    """Render a chunk, write its images, return its annotations (no images)."""
    chunk = generator.render_chunk(spec)
    _write_chunk_images(chunk, folder, generator.synth)
    return {"spec": spec, **{key: getattr(chunk, key) for key in _ANNOTATIONS}}


_WORKER: dict = {}


def _init_worker(cfg: RunConfig, folder: Path) -> None:
    """Spawned worker: one thread each (the workers fill the cores), its own GL context."""
    os.environ["LP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    _WORKER["generator"] = SyntheticGenerator(cfg)
    _WORKER["folder"] = folder


def _worker_chunk(spec: ChunkSpec) -> dict:
    return _generate_and_write(_WORKER["generator"], spec, _WORKER["folder"])


def _resolve_workers(requested: int | None, cfg: SynthConfig, chunks: int) -> int:
    workers = cfg.workers if requested is None else requested
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0 uses every core), got {workers}")
    return max(1, min(workers or os.cpu_count() or 1, chunks))


def generate(cfg: RunConfig, folder: Path, workers: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Generate every non-empty split into folder (which must be new); returns the npz paths."""
    sizes = split_sizes(cfg.synth)
    specs = [spec for split, size in sizes.items() for spec in chunk_specs(split, size, cfg.synth.chunk_size)]
    for split in sizes:
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    workers = _resolve_workers(workers, cfg.synth, len(specs))
    results: list[dict] = []
    bar = tqdm(total=sum(sizes.values()), desc="synth", unit="img", disable=not progress)
    try:
        if workers == 1:
            generator = SyntheticGenerator(cfg)
            try:
                for spec in specs:
                    results.append(_generate_and_write(generator, spec, folder))
                    bar.update(spec.count)
            finally:
                generator.close()
        else:
            # spawn, not fork: a GL context (and torch's threads) do not survive a fork.
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=(cfg, folder)) as pool:
                for result in pool.imap_unordered(_worker_chunk, specs):
                    results.append(result)
                    bar.update(result["spec"].count)
    finally:
        bar.close()
    return _write_npz_files(cfg, folder, sizes, results)


def _write_npz_files(cfg: RunConfig, folder: Path, sizes: dict[str, int], results: list[dict]) -> dict[str, Path]:
    paths = {}
    for split, size in sizes.items():
        parts = sorted((r for r in results if r["spec"].split == split), key=lambda r: r["spec"].start)
        a = {key: np.concatenate([r[key] for r in parts]) for key in _ANNOTATIONS}
        names = [image_name(split, i, cfg.synth.image_format) for i in range(size)]
        three_d = split in SPLITS_WITH_3D
        paths[split] = write_spin_npz(
            folder / f"{split}.npz", imgname=names, center=a["center"], scale=a["scale"], part=a["part"],
            openpose=a["openpose"],
            S=a["S"] if three_d else None, pose=a["pose"] if three_d else None,
            shape=a["shape"] if three_d else None, has_smpl=np.ones(size) if three_d else None,
            gender=np.full(size, "n") if three_d else None,
            extra={"cam_t": a["cam_t"], "focal_length": a["focal_length"]} if three_d else None,
        )
        if not three_d:
            np.savez(hidden_truth_path(paths[split]), pose=a["pose"], shape=a["shape"], S=a["S"],
                     cam_t=a["cam_t"], focal_length=a["focal_length"])
    return paths


def hidden_truth_path(npz: str | Path) -> Path:
    """The side file holding a 2D-only synthetic split's withheld truth (pose, shape, S, cam_t, focal_length)."""
    npz = Path(npz)
    return npz.with_name(f"{npz.stem}_truth.npz")


def load_hidden_truth(npz: str | Path) -> dict[str, np.ndarray]:
    """The withheld truth of a 2D-only synthetic split, row for row with its npz; a clear error if absent."""
    path = hidden_truth_path(npz)
    if not path.is_file():
        raise DataError(f"{path} does not exist: only synthetic 2D-only splits made by spin-ray synth "
                        f"(generator version {GENERATOR_VERSION} or later) carry their hidden truth")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def ensure_synthetic_data(cfg: RunConfig, workers: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Paths of the synthetic splits' npz files, generating them on first use; images are relative to
    the folder holding the npz files (the image root)."""
    body = BodyModel.from_config(cfg.body)
    digest = settings_hash(cfg, body.identity)
    final = cache_root(cfg) / digest
    sizes = split_sizes(cfg.synth)
    if not sizes:
        raise ConfigError("synth.sizes are all 0: give at least one split a size, e.g. synth-3d=1000")
    if (final / SETTINGS_FILE).is_file():
        return {split: final / f"{split}.npz" for split in sizes}
    partial = final.with_name(f"{digest}.partial-{uuid.uuid4().hex[:8]}")
    try:
        paths = generate(cfg, partial, workers=workers, progress=progress)
        settings = _hashed_settings(cfg, body.identity) | {"splits": {s: p.name for s, p in paths.items()}}
        (partial / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
        try:
            partial.rename(final)
        except OSError:
            if not (final / SETTINGS_FILE).is_file():
                raise DataError(f"could not move the generated data {partial} to {final}; is {final} "
                                "a stale folder? delete it and run again") from None
            # Another process finished the same settings first: keep its copy.
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return {split: final / f"{split}.npz" for split in sizes}


# -- the README picture ----------------------------------------------------------------------------

_DATASET_COLOUR = (40, 230, 40)  # RGB
_DETECTOR_COLOUR = (255, 40, 200)
_BOX_COLOUR = (255, 220, 0)


def draw_sample(image: np.ndarray, part: np.ndarray, openpose: np.ndarray, center: np.ndarray,
                scale: float, tile: int | None = None) -> np.ndarray:
    """The image (resized to tile) with the person box, visible dataset keypoints (dots) and
    detections (crosses); invisible keypoints and missed detections are not drawn."""
    zoom = 1.0 if tile is None else tile / image.shape[0]
    canvas = image.copy() if tile is None else cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)

    def pixel(x: float, y: float) -> tuple[int, int]:
        # Pixel centres sit at integers in both images, so scale about -0.5.
        return int(round((x + 0.5) * zoom - 0.5)), int(round((y + 0.5) * zoom - 0.5))

    half = scale * SCALE_UNIT_PX / 2.0
    cv2.rectangle(canvas, pixel(center[0] - half, center[1] - half), pixel(center[0] + half, center[1] + half),
                  _BOX_COLOUR, 1)
    for x, y, v in part:
        if v > 0:
            cv2.circle(canvas, pixel(x, y), 2, _DATASET_COLOUR, -1, cv2.LINE_AA)
    for x, y, c in openpose:
        if c > 0:
            cv2.drawMarker(canvas, pixel(x, y), _DETECTOR_COLOUR, cv2.MARKER_TILTED_CROSS, 6, 1)
    return canvas


def write_preview(cfg: RunConfig, path: str | Path, count: int = 12, columns: int = 4, tile: int = 160) -> Path:
    """A grid image of `count` synthetic samples (synth-3d's first chunk) with their keypoints drawn."""
    if count < 1 or columns < 1 or tile < 16:
        raise ConfigError(f"preview needs count >= 1, columns >= 1, tile >= 16; got {count}, {columns}, {tile}")
    generator = SyntheticGenerator(cfg)
    try:
        chunk = generator.render_chunk(ChunkSpec("synth-3d", 0, count, 0))
    finally:
        generator.close()
    tiles = [draw_sample(chunk.images[i], chunk.part[i], chunk.openpose[i], chunk.center[i],
                         float(chunk.scale[i]), tile) for i in range(count)]
    rows = math.ceil(count / columns)
    grid = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise DataError(f"could not write the preview image {path} (unknown extension? use .png or .jpg)")
    return path
