"""The end-of-run PNG report: loss curves, fit-store error and valid-fit share, mesh overlays on held-out images."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spin_ray.config import DatasetEntry
from spin_ray.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from spin_ray.errors import RenderError
from spin_ray.geometry import weak_perspective_to_translation

if TYPE_CHECKING:
    from spin_ray.eval.evaluate import EvalResult
    from spin_ray.train.trainer import StepMetrics, Trainer

LOSS_TERMS: tuple[str, ...] = ("loss", "keypoints_2d", "keypoints_3d", "pose", "betas", "camera")
OVERLAY_OPACITY = 0.7


@dataclass
class StartView:
    """The starting network on the held-out set: its errors and mesh overlays, for the report's before and after."""

    result: EvalResult
    overlays: list[np.ndarray]


def _series(history: list[StepMetrics], name: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([m.step for m in history], dtype=np.int64)
    return steps, np.array([getattr(m, name) for m in history], dtype=np.float64)


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over `window` samples (NaN ignored), same length as values."""
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="full")[: values.size]
    counts = np.convolve(finite.astype(np.float64), kernel, mode="full")[: values.size]
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def crop_image(img: torch.Tensor) -> np.ndarray:
    """A normalised network input (3,H,W) back to RGB uint8 (H,W,3)."""
    rgb = img.permute(1, 2, 0).cpu().numpy() * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(rgb * 255.0, 0, 255).astype(np.uint8)


@torch.no_grad()
def mesh_overlays(trainer: Trainer, entry: DatasetEntry, count: int) -> list[np.ndarray]:
    """The network's meshes drawn over the first `count` held-out crops (plain crops if rendering fails)."""
    from spin_ray.eval.evaluate import evaluation_dataset
    from spin_ray.render.renderer import MeshRenderer, overlay

    dataset = evaluation_dataset(entry.npz, entry.image_root, trainer.cfg.data.img_res, name=entry.name)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return []
    images = torch.stack([item["img"] for item in items]).to(trainer.device)
    trainer.model.eval()
    pred = trainer.model(images)
    trainer.model.train()
    vertices = trainer.body(pred.rotmat, pred.betas).vertices.cpu().numpy()
    cam = trainer.cfg.camera
    translation = weak_perspective_to_translation(pred.camera, cam.focal_length, cam.crop_size).cpu().numpy()
    res = trainer.cfg.data.img_res
    crops = [crop_image(item["img"]) for item in items]
    try:
        # Created here, in the process that renders: a GL context does not cross processes.
        with MeshRenderer(res, res, trainer.body.faces) as renderer:
            focal = cam.focal_length * res / cam.crop_size
            return [overlay(crop, renderer.shaded(v, t, focal), OVERLAY_OPACITY)
                    for crop, v, t in zip(crops, vertices, translation)]
    except RenderError as err:
        warnings.warn(f"report: no mesh overlays ({err})", stacklevel=2)
        return crops


def write_report(
    trainer: Trainer, path: str | Path, heldout: DatasetEntry | None = None,
    evaluated: tuple[EvalResult, EvalResult] | None = None, start: StartView | None = None,
) -> Path:
    """Write the PNG report of a run and return its path (with `start`: the same held-out images before and after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = trainer.history
    count = trainer.cfg.train.report_images if heldout is not None else 0
    overlays = mesh_overlays(trainer, heldout, count) if count else []
    before = start.overlays[: len(overlays)] if start is not None else []
    columns = max(4, min(8, len(overlays)))
    block = math.ceil(len(overlays) / columns) if overlays else 0  # rows of one set of overlays
    panels = [("start", before), ("end", overlays)] if before else [("", overlays)]
    grid_rows = block * len(panels)
    fig = plt.figure(figsize=(15, 4.2 + 2.0 * grid_rows))
    spec = fig.add_gridspec(1 + grid_rows, columns, height_ratios=[2.2] + [1.0] * grid_rows)
    thirds = [spec[0, : columns // 3], spec[0, columns // 3: 2 * columns // 3], spec[0, 2 * columns // 3:]]
    window = max(1, len(history) // 50)

    ax = fig.add_subplot(thirds[0])
    for name in LOSS_TERMS:
        steps, values = _series(history, name)
        if values.size and np.nanmax(np.abs(values)) > 0:
            ax.plot(steps, smoothed(values, window), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"losses ({trainer.supervisor.name} mode, running mean of {window})")
    ax.legend(fontsize=7)

    ax = fig.add_subplot(thirds[1])
    steps, values = _series(history, "stored_error")
    if np.isfinite(values).any():
        ax.plot(steps, smoothed(values, window), color="tab:red")
    else:
        ax.text(0.5, 0.5, "no stored fits read", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_title("mean ranking error of the batch's stored fits")

    ax = fig.add_subplot(thirds[2])
    steps, values = _series(history, "valid_fraction")
    ax.plot(steps, smoothed(values, window), color="tab:green", label="valid fits")
    steps, improved = _series(history, "improved")
    steps, batch = _series(history, "batch")
    if improved.any():
        ax.plot(steps, smoothed(improved / np.maximum(batch, 1), window), color="tab:purple", label="improved")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_title("share of the batch")
    ax.legend(fontsize=7)

    for p, (label, images) in enumerate(panels):
        for i, image in enumerate(images):
            ax = fig.add_subplot(spec[1 + p * block + i // columns, i % columns])
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if label and i % columns == 0:
                ax.set_ylabel(f"{label} (step {0 if label == 'start' else trainer.step})", fontsize=9)
    title = f"{trainer.cfg.name}: {trainer.step} steps, {trainer.cfg.network.backbone} @ {trainer.cfg.data.img_res}px"
    if evaluated is not None:
        model, baseline = (r.summary() for r in evaluated)
        began = f"start {start.result.summary()['pa_mpjpe_mm']:.1f} -> end " if start is not None else ""
        title += (f" | held-out {model['dataset']}: PA-MPJPE {began}{model['pa_mpjpe_mm']:.1f} mm "
                  f"(mean pose {baseline['pa_mpjpe_mm']:.1f}), MPJPE {model['mpjpe_mm']:.1f} mm")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
