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
so fits of the 2D-only split can be scored against the truth they were not given), `synth-test` (held
out, SPIN's evaluation keys pose, shape, S, gender, and LSP-style segmentation masks: `maskname`,
`partname` naming PNGs under masks/synth-test/, see data/synth_masks.py).
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
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from spin_ray.body.body_model import BodyModel
from spin_ray.config import SYNTH_SPLITS, RunConfig, SynthConfig
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.spin_format import save_npz_atomically, write_spin_npz
from spin_ray.data.synth_generator import (
    ChunkSpec,
    SyntheticChunk,
    SyntheticGenerator,
)
from spin_ray.data.synth_masks import mask_names, write_masks
from spin_ray.errors import ConfigError, DataError

# Bump when the generator's output changes for the same settings: old caches are then not reused.
GENERATOR_VERSION = 3  # 2: hidden truth of the 2D-only split in <split>_truth.npz; 3: synth-test's masks
SPLITS_WITH_MASKS: frozenset[str] = frozenset({"synth-test"})
SPLITS_WITH_3D: frozenset[str] = frozenset({"synth-3d", "synth-test"})
SETTINGS_FILE = "settings.json"
_HASH_CHARS = 16




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


def chunk_specs(split: str, size: int, chunk_size: int) -> list[ChunkSpec]:
    """The chunks of a split, in order."""
    return [ChunkSpec(split, start, min(chunk_size, size - start), i)
            for i, start in enumerate(range(0, size, chunk_size))]





# -- the generator (state: body model and GL context) ---------------------------------------------

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
    if chunk.spec.split in SPLITS_WITH_MASKS:
        write_masks(folder, chunk.spec.split, chunk.spec.start, chunk.part_labels)


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
        if split in SPLITS_WITH_MASKS:
            names = [mask_names(split, i) for i in range(size)]
            _add_string_keys(paths[split], maskname=[m for m, _ in names], partname=[p for _, p in names])
        if not three_d:
            np.savez(hidden_truth_path(paths[split]), pose=a["pose"], shape=a["shape"], S=a["S"],
                     cam_t=a["cam_t"], focal_length=a["focal_length"])
    return paths


def _add_string_keys(npz: Path, **keys: list[str]) -> None:
    """Add per-sample string keys (SPIN's maskname, partname) to a written dataset npz, atomically."""
    with np.load(npz, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update({key: np.asarray(values, dtype=str) for key, values in keys.items()})
    save_npz_atomically(npz, arrays)


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


def synthetic_data_folder(cfg: RunConfig) -> Path:
    """The cache folder of this config's synthetic data (it may not be generated yet)."""
    return cache_root(cfg) / settings_hash(cfg, BodyModel.from_config(cfg.body).identity)


def cached_synthetic_data(cfg: RunConfig) -> dict[str, Path] | None:
    """Paths of the synthetic splits' npz files when they were generated already, else None; never generates."""
    final = synthetic_data_folder(cfg)
    if not (final / SETTINGS_FILE).is_file():
        return None
    return {split: final / f"{split}.npz" for split in split_sizes(cfg.synth)}


def ensure_synthetic_data(cfg: RunConfig, workers: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Paths of the synthetic splits' npz files, generating them on first use; images are relative to
    the folder holding the npz files (the image root)."""
    body = BodyModel.from_config(cfg.body)
    digest = settings_hash(cfg, body.identity)
    final = cache_root(cfg) / digest
    sizes = split_sizes(cfg.synth)
    if not sizes:
        raise ConfigError("synth.sizes are all 0: give at least one split a size, e.g. synth-3d=1000")
    cached = cached_synthetic_data(cfg)
    if cached is not None:
        return cached
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
