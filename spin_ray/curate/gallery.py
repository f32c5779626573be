"""Fit-store gallery data: pick samples, crop their images, render their fits, write the page folder.

A gallery is one folder: `index.html` (see gallery_page) and `images/` with, per sample, the
canonical crop, the crop with the stored fit rendered over it and, when a network predictor is
given, the crop with the prediction. Every problem (an empty namespace, unknown ids, a dataset
without images, a missing image) becomes a notice on the page rather than an exception, so a
curation pass over a large store never dies on one bad sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.errors import FitStoreError
from spin_ray.curate.sample_ids import SampleId
from spin_ray.curate.sample_paths import DatasetCache, DatasetLocation

# A network's prediction for canonical crops (N, S, S, 3) uint8 RGB: axis-angle pose (N, 72),
# betas (N, 10) and camera translation (N, 3) in the crop camera of CameraConfig.
Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

IMAGES_DIR = "images"
FIT_COLOR = (0.55, 0.75, 0.95)
PREDICTION_COLOR = (0.95, 0.72, 0.45)
MESH_OPACITY = 0.75  # the image stays visible through the mesh, so misalignment shows
JPEG_QUALITY = 90
_IMAGE_SUFFIXES = ("_crop.jpg", "_fit.jpg", "_pred.jpg")  # the only files a gallery writes under images/
MAX_LISTED = 20  # ids listed by name in one notice before "and N more"


@dataclass(frozen=True)
class Selection:
    """Which samples a gallery shows: the worst or best k per dataset, or an explicit id list."""

    mode: str  # "worst", "best" or "ids"
    k: int = 24
    ids: tuple[SampleId, ...] = ()
    datasets: tuple[str, ...] = ()  # empty: every dataset in the namespace

    def describe(self) -> str:
        """A short phrase for the page header."""
        if self.mode == "ids":
            return f"{len(self.ids)} ids from a file"
        return f"{self.mode} {self.k} per dataset"


@dataclass
class Card:
    """One sample on the page: its stored fit's numbers, image files and anything that went wrong."""

    dataset: str
    index: int
    error: float
    source: str
    step: int
    updates: int
    imgname: str = ""
    crop: str | None = None
    overlay: str | None = None
    prediction: str | None = None
    keypoints: list[list[float]] = field(default_factory=list)  # observed [x, y, conf] in crop pixels
    fit_keypoints: list[list[float]] = field(default_factory=list)  # the fit's projected [x, y]
    problems: list[str] = field(default_factory=list)


@dataclass
class GalleryData:
    """Everything the page shows."""

    namespace: str
    selection: str
    created: str
    crop_size: int
    threshold: float
    notices: list[str] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        """Plain dict for the page's embedded JSON."""
        return asdict(self)


def _listed(ids: Sequence[SampleId]) -> str:
    shown = ", ".join(f"{d}:{i}" for d, i in ids[:MAX_LISTED])
    return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")


def select_samples(store, selection: Selection, notices: list[str]) -> list[tuple[str, np.ndarray]]:
    """(dataset, indices) to show, in selection order; what cannot be shown is added to notices."""
    stored = store.datasets()
    if not stored:
        notices.append(
            f"Namespace {store.namespace!r} holds no fits yet: nothing to show. Check --namespace and --url, "
            f"or fill the store first (spin-ray fit, or a training run)."
        )
        return []
    if selection.mode == "ids":
        by_dataset: dict[str, list[int]] = {}
        for dataset, index in selection.ids:
            by_dataset.setdefault(dataset, []).append(index)
        unknown = [d for d in by_dataset if d not in stored]
        if unknown:
            notices.append(
                f"Dataset(s) {', '.join(unknown)} from the ids file have no fits in namespace "
                f"{store.namespace!r} (it holds {', '.join(stored)}); their ids are not shown."
            )
        return [(d, np.asarray(ix, dtype=np.int64)) for d, ix in by_dataset.items() if d in stored]
    names = list(selection.datasets) or stored
    unknown = [d for d in names if d not in stored]
    if unknown:
        notices.append(
            f"Dataset(s) {', '.join(unknown)} have no fits in namespace {store.namespace!r} "
            f"(it holds {', '.join(stored)})."
        )
    ranked = store.worst if selection.mode == "worst" else store.best
    return [(name, ranked(name, selection.k)[0]) for name in names if name in stored]


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise FitStoreError(f"could not encode {path.name} as JPEG")
    path.write_bytes(data.tobytes())


def _read_rgb(path: Path) -> np.ndarray | None:
    """The image as RGB uint8, or None if it is missing or unreadable."""
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class _MeshPainter:
    """Body model + renderer: meshes of (pose, betas) at closed-form cameras, painted over crops."""

    def __init__(self, body, camera: CameraConfig, ignored: tuple[int, ...]) -> None:
        from spin_ray.render.renderer import MeshRenderer

        self.body = body
        self.camera = camera
        self.ignored = ignored  # the keypoints the store's ranking (and so the closed-form camera) leaves out
        self.renderer = MeshRenderer(camera.crop_size, camera.crop_size, body.faces)

    def close(self) -> None:
        self.renderer.close()

    def camera_for(self, pose: np.ndarray, betas: np.ndarray, keypoints_px: np.ndarray) -> np.ndarray:
        """Closed-form translations (N, 3) of fits to crop keypoints, as the store's ranking uses."""
        from spin_ray.fitting.starts import typical_depth
        from spin_ray.fitting.smplify import camera_from_keypoints

        return camera_from_keypoints(
            self.body, torch.from_numpy(pose), torch.from_numpy(betas), torch.from_numpy(keypoints_px),
            self.camera, typical_depth(self.camera), self.ignored,
        ).numpy()

    def paint(
        self, crops: np.ndarray, pose: np.ndarray, betas: np.ndarray, camera_t: np.ndarray, color
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Crops (N, S, S, 3) with the meshes blended in, projected keypoints (N, 49, 2), and per
        sample why its mesh could not be drawn (None where it was)."""
        from spin_ray.body.body_model import axis_angle_pose_to_rotmats
        from spin_ray.errors import RenderError
        from spin_ray.fitting.smplify import project
        from spin_ray.render.renderer import overlay

        with torch.no_grad():
            out = self.body(axis_angle_pose_to_rotmats(torch.from_numpy(pose)), torch.from_numpy(betas))
            projected = project(out.keypoints, torch.from_numpy(camera_t), self.camera).numpy()
        centre = (self.camera.crop_size / 2.0, self.camera.crop_size / 2.0)
        painted = crops.copy()
        problems: list[str | None] = [None] * len(crops)
        for i in range(len(crops)):
            try:
                rgba = self.renderer.shaded(
                    out.vertices[i].numpy(), camera_t[i], self.camera.focal_length, centre, color=color
                )
            except RenderError as err:  # e.g. a degenerate fit whose camera puts it behind the lens
                problems[i] = f"mesh not drawn: {err}"
                continue
            painted[i] = overlay(crops[i], rgba, opacity=MESH_OPACITY)
        return painted, projected, problems


def _round(values: np.ndarray, digits: int = 1) -> list[list[float]]:
    return np.round(np.nan_to_num(values.astype(np.float64)), digits).tolist()


def build_gallery(
    store,
    selection: Selection,
    locations: dict[str, DatasetLocation],
    out_dir: str | Path,
    body,
    camera: CameraConfig | None = None,
    threshold: float = 100.0,
    predictor: Predictor | None = None,
    fitting: FittingConfig | None = None,
) -> GalleryData:
    """Select samples, write their crop / fit / prediction images under out_dir/images, return the page data.

    camera and fitting are the run config's (default: the default config's).
    """
    from spin_ray.data.augment import crop_image, crop_matrix, transform_points
    from spin_ray.fitting.smplify import ignored_joints

    camera = camera or CameraConfig()
    fitting = fitting or FittingConfig()
    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    # A gallery written again into the same folder must not keep the last one's pictures around.
    for suffix in _IMAGE_SUFFIXES:
        for stale in images_dir.glob(f"*{suffix}"):
            stale.unlink()
    data = GalleryData(
        namespace=store.namespace,
        selection=selection.describe(),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        crop_size=camera.crop_size,
        threshold=threshold,
    )
    meta = store.meta
    if meta is not None and meta.body_model_hash != body.identity:
        data.notices.append(
            f"The fits were written for body model {meta.body_model_hash[:16]}, but the meshes are drawn "
            f"with {body.identity[:16]} ({body.source}): the overlays may not match. Pass --config with "
            f"the run's config so the gallery uses its body model."
        )
    chosen = select_samples(store, selection, data.notices)
    datasets = DatasetCache(locations)
    painter = _MeshPainter(body, camera, ignored_joints(fitting)) if chosen else None
    res = camera.crop_size
    try:
        for name, indices in chosen:
            fits = store.read(name, indices)
            absent = [(name, int(i)) for i in indices[~fits.found]]
            if absent:
                data.notices.append(f"{len(absent)} id(s) have no stored fit in {name}: {_listed(absent)}.")
            rows = np.flatnonzero(fits.found)
            dataset = datasets.get(name)
            if dataset is None:
                data.notices.append(f"Images of {name} are not shown: {datasets.problem(name)}")
            elif (fits.indices[rows] >= len(dataset)).any():
                beyond = [(name, int(i)) for i in fits.indices[rows] if i >= len(dataset)]
                data.notices.append(
                    f"{len(beyond)} id(s) of {name} are beyond its {len(dataset)} samples in {dataset.source} "
                    f"(another version of the npz?): {_listed(beyond)}."
                )
            crops = np.zeros((len(rows), res, res, 3), np.uint8)
            crops[:] = 64  # a neutral grey where no image could be read: the fit still shows
            keypoints = np.zeros((len(rows), 49, 3), np.float32)
            cards: list[Card] = []
            for slot, row in enumerate(rows.tolist()):
                index = int(fits.indices[row])
                card = Card(
                    dataset=name, index=index, error=round(float(fits.error[row]), 3), source=str(fits.source[row]),
                    step=int(fits.step[row]), updates=int(fits.updates[row]),
                )
                cards.append(card)
                if dataset is None:
                    card.problems.append(f"no images for dataset {name} (see the notice above)")
                    continue
                if index >= len(dataset):
                    card.problems.append(f"index {index} is beyond the {len(dataset)} samples of {dataset.source}")
                    continue
                card.imgname = str(dataset.imgname[index])
                matrix = crop_matrix(dataset.center[index], float(dataset.scale[index]), res)
                kp = dataset.keypoints49()[index].astype(np.float64)
                keypoints[slot] = np.concatenate([transform_points(kp[:, :2], matrix), kp[:, 2:]], axis=1)
                card.keypoints = _round(keypoints[slot])
                image = _read_rgb(dataset.image_path(index))
                if image is None:
                    card.problems.append(f"image missing or unreadable: {dataset.image_path(index)}")
                    continue
                crops[slot] = crop_image(image, matrix, res)
                card.crop = f"{IMAGES_DIR}/{name}_{index}_crop.jpg"
                _write_jpeg(out_dir / card.crop, crops[slot])
            if not cards:
                continue
            # Without keypoints there is no camera to place the mesh: those cards show numbers only.
            drawable = np.array([bool(c.keypoints) for c in cards])
            if drawable.any():
                pose, betas = fits.pose[rows][drawable], fits.betas[rows][drawable]
                kp = keypoints[drawable]
                camera_t = painter.camera_for(pose, betas, kp)
                painted, projected, fit_problems = painter.paint(crops[drawable], pose, betas, camera_t, FIT_COLOR)
                predicted, pred_problems = None, [None] * len(painted)
                if predictor is not None:
                    p_pose, p_betas, p_cam = predictor(crops[drawable])
                    predicted, _, pred_problems = painter.paint(
                        crops[drawable], np.asarray(p_pose, np.float32), np.asarray(p_betas, np.float32),
                        np.asarray(p_cam, np.float32), PREDICTION_COLOR,
                    )
                for j, card in enumerate(c for c, ok in zip(cards, drawable) if ok):
                    card.fit_keypoints = _round(projected[j])
                    if fit_problems[j]:
                        card.problems.append(f"fit {fit_problems[j]}")
                    else:
                        card.overlay = f"{IMAGES_DIR}/{name}_{card.index}_fit.jpg"
                        _write_jpeg(out_dir / card.overlay, painted[j])
                    if predicted is not None and pred_problems[j]:
                        card.problems.append(f"prediction {pred_problems[j]}")
                    elif predicted is not None:
                        card.prediction = f"{IMAGES_DIR}/{name}_{card.index}_pred.jpg"
                        _write_jpeg(out_dir / card.prediction, predicted[j])
            data.cards.extend(cards)
    finally:
        if painter is not None:
            painter.close()
    if selection.mode == "ids" and not data.cards and not data.notices:
        data.notices.append("The ids file lists no samples.")
    return data
