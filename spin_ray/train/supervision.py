"""Where a training step's fit targets come from: one interface for every training mode.

A `FitSupervisor` hands the step the fits to supervise with, already in the batch's augmented
frame, and hears about the step's predictions afterwards. The step never knows how fits are made:
- `NoFits` (`2d`): nothing; the loss's fit terms are off.
- `StoreFits` (`static`): the best stored fit of each sample.
- `SyncFits` (`sync`, SPIN as published): SMPLify from the step's own predictions, keep-best into
  the store, then the best stored fit.
- `AsyncFits` (`async`, in `train/async_fits.py`): the best fit stored so far, read ahead; the
  step's predictions go to a fitter queue (the Ray pipeline's pool) without waiting.
`train/modes.py` is the one place that picks the supervisor of a mode. Every fit made from
predictions starts from `step_predictions` (the one conversion of a network's output into SMPLify
terms) and goes through `fitting.fit_predictions` and `FitStore.keep_best_samples`.

Ground-truth SMPL (`has_smpl`) always replaces a stored fit with error 0, as in SPIN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.frames import augment_pose
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.fitting.canonical_fits import fit_predictions
from spin_ray.geometry import matrix_to_axis_angle, weak_perspective_to_translation
from spin_ray.model.hmr import HMROutput
from spin_ray.store.decode import describe
from spin_ray.store.fit_store import FitStore
from spin_ray.train.losses import valid_fit_mask

Batch = Mapping[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitTargets:
    """Fits to supervise one batch with, in the batch's augmented frame."""

    rotmat: torch.Tensor  # (B, 24, 3, 3)
    betas: torch.Tensor  # (B, K)
    error: torch.Tensor  # (B,) ranking error; inf where no fit, 0 for ground truth
    has_smpl: torch.Tensor  # (B,) bool: the target is ground truth
    valid: torch.Tensor  # (B,) bool: valid-fit rule (error below threshold, or ground truth)
    counts: dict[str, float] = field(default_factory=dict)  # for logging: found, fitted, improved, ...


@runtime_checkable
class FitSupervisor(Protocol):
    """Supplies fit targets to the training step and hears about its predictions."""

    name: str

    def prefetch(self, batch: Batch) -> None:
        """Called with the next batch before the current step runs; may start reading its fits."""

    # Optional (read with getattr by the trainer): lookahead_steps > 0 makes the trainer call
    # lookahead(batch, predict) with the batch k steps ahead, so fits can be ready when it trains.

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """Fit targets for batch (None: no fit supervision)."""

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """Called after the optimiser step with the batch and its (pre-step) predictions."""

    def close(self) -> None:
        """Release connections and workers."""


class NoFits:
    """`2d` mode: no fit supervision, only reprojection and 3D losses."""

    name = "2d"

    def prefetch(self, batch: Batch) -> None:
        """Nothing to prefetch."""

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """No targets."""
        return None

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to release."""


def batch_samples(batch: Batch) -> tuple[list[str], np.ndarray]:
    """The batch's sample names: dataset per row and index per row (B,) int64."""
    names = batch["dataset"]
    datasets = [names] * len(batch["index"]) if isinstance(names, str) else [str(n) for n in names]
    return datasets, torch.as_tensor(batch["index"]).cpu().numpy().astype(np.int64)


def read_stored_fits(store: FitStore, batch: Batch, num_betas: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best stored fits of the batch's samples: canonical pose (B,72), betas (B,K), error (B,) inf if none."""
    pose, betas, error, _ = read_stored_fits_with_steps(store, batch, num_betas)
    return pose, betas, error


def read_stored_fits_with_steps(
    store: FitStore, batch: Batch, num_betas: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """`read_stored_fits` plus the trainer step (B,) that wrote each fit (0: static, -1: none).

    One read per dataset in the batch (a mixed batch has a few). A corrupt record is "no fit", with one
    warning per batch naming it: training goes on, `spin-ray store check --repair` clears it.
    """
    datasets, indices = batch_samples(batch)
    n = len(indices)
    pose = np.zeros((n, 72), np.float32)
    betas = np.zeros((n, num_betas), np.float32)
    error = np.full(n, np.inf)
    step = np.full(n, -1, np.int64)
    names = np.asarray(datasets)
    corrupt = []
    for name in dict.fromkeys(datasets):
        rows = np.flatnonzero(names == name)
        stored = store.read(name, indices[rows], skip_corrupt=True)
        corrupt.extend(stored.corrupt)
        found = rows[stored.found]
        pose[found] = stored.pose[stored.found]
        betas[found] = stored.betas[stored.found][:, :num_betas]
        error[found] = stored.error[stored.found]
        step[found] = stored.step[stored.found]
    if corrupt:
        log.warning("%d corrupt fit record(s) read as no fit: %s; run `spin-ray store check --repair`",
                    len(corrupt), describe(corrupt))
    return torch.from_numpy(pose), torch.from_numpy(betas), torch.from_numpy(error).float(), step


def targets_from_canonical(
    batch: Batch, pose: torch.Tensor, betas: torch.Tensor, error: torch.Tensor, threshold: float,
    counts: dict[str, float] | None = None,
) -> FitTargets:
    """Stored canonical fits seen through the batch's augmentation, ground truth taking precedence."""
    device = batch["keypoints"].device
    dtype = batch["keypoints"].dtype
    pose, betas, error = pose.to(device, dtype), betas.to(device, dtype), error.to(device, dtype)
    has_smpl = torch.as_tensor(batch["has_smpl"], device=device).bool()
    seen = augment_pose(pose, batch["aug"].to(device, dtype))
    # The dataset already applied the augmentation to ground-truth pose.
    seen = torch.where(has_smpl[:, None], batch["pose"].to(dtype), seen)
    betas = torch.where(has_smpl[:, None], batch["betas"].to(dtype)[:, :betas.shape[1]], betas)
    error = torch.where(has_smpl, torch.zeros_like(error), error)
    valid = valid_fit_mask(error, has_smpl, threshold)
    found = torch.isfinite(error) & ~has_smpl
    stats = {
        "found": float(found.sum()),
        "valid": float(valid.sum()),
        "stored_error": float(error[found].mean()) if bool(found.any()) else float("nan"),
    }
    stats.update(counts or {})
    return FitTargets(axis_angle_pose_to_rotmats(seen), betas, error, has_smpl, valid, stats)


class StoreFits:
    """`static` mode: supervise with the best fit stored for each sample; never fits."""

    name = "static"

    def __init__(self, store: FitStore, fitting: FittingConfig, num_betas: int) -> None:
        self.store = store
        self.fitting = fitting
        self.num_betas = num_betas

    def prefetch(self, batch: Batch) -> None:
        """Reads are cheap (one round trip per dataset): nothing to start early."""

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """The stored fits of the batch."""
        pose, betas, error = read_stored_fits(self.store, batch, self.num_betas)
        return targets_from_canonical(batch, pose, betas, error, self.fitting.valid_error_threshold)

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """Static fits do not change."""

    def close(self) -> None:
        """Nothing to release: the store belongs to whoever opened it."""


@dataclass(frozen=True)
class StepPredictions:
    """A step's detached predictions as an SMPLify start, with the batch's sample names: a `SampleStarts`
    (fitting/canonical_fits.py), which the fitter pool takes and `sync` mode fits itself."""

    step: int
    datasets: list[str]  # (B,) dataset of each row
    indices: np.ndarray  # (B,) int64 dataset rows
    pose: torch.Tensor  # (B, 72) axis-angle, in the batch's augmented frame
    betas: torch.Tensor  # (B, num_betas)
    camera_t: torch.Tensor  # (B, 3) camera translation
    keypoints: torch.Tensor  # (B, 49, 3) normalised in the augmented crop
    aug: torch.Tensor  # (B, 6) augmentation records


def smplify_terms(pred: HMROutput, camera: CameraConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's output in SMPLify's terms, detached: axis-angle pose (B, 72), betas, crop-camera translation (B, 3).

    SMPLify optimises axis-angle (its pose prior is a density over axis-angle) and the store holds
    axis-angle, so this is the one place a prediction's rotation matrices and weak-perspective camera are
    converted (training's loop, the demo, `spin-ray fit --checkpoint`, a checkpoint's predictor).
    """
    rotmat = pred.rotmat.detach()
    pose = matrix_to_axis_angle(rotmat).reshape(rotmat.shape[0], -1)
    camera_t = weak_perspective_to_translation(pred.camera.detach(), camera.focal_length, camera.crop_size)
    return pose, pred.betas.detach(), camera_t


def step_predictions(batch: Batch, pred: HMROutput, step: int, camera: CameraConfig) -> StepPredictions:
    """A step's predictions as an SMPLify start (`smplify_terms`) with the batch's samples, keypoints and augmentation."""
    datasets, indices = batch_samples(batch)
    pose, betas, camera_t = smplify_terms(pred, camera)
    return StepPredictions(step, datasets, indices, pose=pose, betas=betas, camera_t=camera_t,
                           keypoints=batch["keypoints"].detach(), aug=batch["aug"].detach())


class SyncFits:
    """`sync` mode (SPIN as published): fit the step's own batch, keep the better fit, supervise with it."""

    name = "sync"

    def __init__(
        self, store: FitStore, body: BodyModel, prior: torch.nn.Module, fitting: FittingConfig, camera: CameraConfig,
    ) -> None:
        self.store = store
        self.body = body
        self.prior = prior
        self.fitting = fitting
        self.camera = camera

    def prefetch(self, batch: Batch) -> None:
        """The fits depend on this step's predictions: nothing to start early."""

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """Fit the batch from the predictions, keep-best into the store, return the stored best."""
        predictions = step_predictions(batch, pred, step, self.camera)
        fits = fit_predictions(self.body, self.prior, predictions, self.fitting, self.camera)
        written = self.store.keep_best_samples(predictions.datasets, predictions.indices, fits.pose, fits.betas,
                                               fits.error, step, "loop")
        # Read after the write: the store now holds the better of the new and the old fit, also
        # when another writer improved a sample meanwhile.
        pose, betas, error = read_stored_fits(self.store, batch, self.body.num_betas)
        counts = {"fitted": float(torch.isfinite(fits.error).sum()), "improved": float(written.sum())}
        return targets_from_canonical(batch, pose, betas, error, self.fitting.valid_error_threshold, counts)

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """Fits were made before the step."""

    def close(self) -> None:
        """Nothing to release: the store belongs to whoever opened it."""
