"""A whole dataset fitted by the fitter pool into the fit store, resumable (`spin-ray fit`).

Each batch starts where `fitting.static_fits.static_start` puts it (the init's pose and betas, the
camera in closed form from the keypoints, the canonical crop) and goes to the pool as a step's
predictions (`FitRequest.from_predictions`, the trainer's own request path); each fitter runs
`fit_predictions` and writes what it finds with keep-best as soon as it has it (source `static`).
Only rows without a stored fit, or with `refit_above` a worse one, are sent: a run that was killed
and started again fits what is still missing. Rows SMPLify rejects store nothing and are tried again
by the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig
from spin_ray.errors import InputError, PipelineError, StoreFullError
from spin_ray.fitting.static_fits import static_start
from spin_ray.pipeline.fitter import FitterActor
from spin_ray.pipeline.pool import FitterPool
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.fit_store import FitStore

# Store rows read per round of the "what is missing" scan (one pipelined batch read each).
READ_CHUNK = 8192
# Seconds between progress-bar refreshes while the last requests finish.
PROGRESS_PERIOD_S = 1.0


class DatasetFitter(FitterActor):
    """A fitter of the offline dataset fit: its fits are the dataset's static fits (source `static`)."""

    source = "static"


DATASET_FITTER_CLASS = f"{__name__}:{DatasetFitter.__name__}"


@dataclass(frozen=True)
class DatasetFit:
    """What to fit: one dataset's canonical-crop keypoints, the rows that may be fitted, where each row starts."""

    dataset: str  # the store's dataset name; rows are (dataset, row)
    keypoints: np.ndarray  # (N, 49, 3) float32 [x, y, conf] in pixels of each row's canonical crop
    usable: np.ndarray  # (N,) bool: rows with sound annotations (the others are never fitted)
    init_pose: np.ndarray  # (N or 1, 72) float32 axis-angle start
    init_betas: np.ndarray  # (N or 1, num_betas) float32 start
    step: int = 0  # trainer step stored with the fits (a checkpoint's; 0 for the mean pose or given fits)
    fingerprint: str | None = None  # the dataset's content (data/identity.py): binds `dataset` to it in the store
    source: str = "?"  # where the dataset came from (its .npz), for messages

    def __post_init__(self) -> None:
        n = self.keypoints.shape[0]
        for name in ("init_pose", "init_betas"):
            if getattr(self, name).shape[0] not in (1, n):
                raise InputError(f"dataset fit of {self.dataset}: {name} has {getattr(self, name).shape[0]} rows, "
                                 f"expected 1 or {n} (one per dataset row)")
        if self.usable.shape != (n,):
            raise InputError(f"dataset fit of {self.dataset}: usable has shape {self.usable.shape}, expected ({n},)")

    def start_of(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(pose, betas) tensors of the rows' starts."""
        pick = lambda a: a[np.zeros(len(rows), np.int64)] if a.shape[0] == 1 else a[rows]  # noqa: E731
        return torch.from_numpy(np.ascontiguousarray(pick(self.init_pose), np.float32)), \
            torch.from_numpy(np.ascontiguousarray(pick(self.init_betas), np.float32))


@dataclass
class DatasetFitSummary:
    """What one `fit_dataset` call did, and the state of the dataset in the store after it."""

    dataset: str
    rows: int  # rows of the dataset
    usable: int  # rows with sound annotations
    stored_before: int  # usable rows that had a good enough fit already (not sent)
    sent: int  # rows sent to the pool
    fitted: int  # rows whose fit came back finite
    failed: int  # rows SMPLify rejected or lost to non-finite values (nothing stored; the next run retries)
    written: int  # fits that improved the store
    unfinished: int  # rows of requests that failed, were lost or abandoned (the next run retries)
    stored_after: int  # usable rows with a stored fit at the end
    median_error: float  # median stored error over the usable rows with a fit (NaN: none)
    valid: int  # stored fits with an error below fitting.valid_error_threshold
    seconds: float  # wall time of the fitting
    fitters: int  # fitter actors at the end

    @property
    def fits_per_s(self) -> float:
        """Rows fitted per second of wall time."""
        return self.fitted / self.seconds if self.seconds > 0 else float("nan")


def dataset_fit_config(cfg: RunConfig, fitters: int | None = None, fitter_gpus: float | None = None) -> RunConfig:
    """The run config of a dataset fit's pool: blocking submits (nothing is dropped), static-fit fitters."""
    pipeline = cfg.pipeline
    gpus = pipeline.fitter_num_gpus if fitter_gpus is None else fitter_gpus
    update = {
        "num_fitters": pipeline.num_fitters if fitters is None else fitters,
        "fitter_num_gpus": gpus,
        # A fitter given a GPU should use it unless the config says otherwise.
        "fitter_device": pipeline.fitter_device or ("cuda" if gpus > 0 else None),
        "busy_policy": "block",
        "fitter_class": DATASET_FITTER_CLASS,
    }
    return cfg.model_copy(update={"pipeline": type(pipeline).model_validate({**pipeline.model_dump(), **update})})


def rows_to_fit(store: FitStore, dataset: str, usable: np.ndarray, refit_above: float | None = None,
                chunk: int = READ_CHUNK) -> np.ndarray:
    """Usable rows with no sound stored fit (or, with refit_above, one whose error is above it), in row order."""
    candidates = np.flatnonzero(usable)
    todo = []
    for start in range(0, len(candidates), chunk):
        rows = candidates[start:start + chunk]
        stored = store.read(dataset, rows, skip_corrupt=True)  # a corrupt record counts as missing: refit it
        need = ~stored.found
        if refit_above is not None:
            need |= stored.found & (stored.error > refit_above)
        todo.append(rows[need])
    return np.concatenate(todo) if todo else np.zeros(0, np.int64)


def start_request(body: BodyModel, job: DatasetFit, rows: np.ndarray, cfg: RunConfig) -> FitRequest:
    """The rows' starts in the canonical crop as a request, what the pool makes of a trainer's predictions."""
    pose, betas = job.start_of(rows)
    keypoints = torch.from_numpy(np.ascontiguousarray(job.keypoints[rows], np.float32))
    start = static_start(body, keypoints, pose, betas, cfg.camera, cfg.fitting)
    return FitRequest.build(job.step, job.dataset, rows.astype(np.int64), start.pose, start.betas, start.camera_t,
                            start.keypoints, start.aug)


class _Progress:
    """The bar (fits/s, ETA, failures, running median of the stored errors of the rows fitted) and the counts."""

    def __init__(self, store: FitStore, dataset: str, total: int, progress: bool) -> None:
        self.store, self.dataset = store, dataset
        self.bar = tqdm(total=total, desc=f"fit {dataset}", unit="fit", disable=not progress, smoothing=0.1)
        self.rows_of: dict[int, np.ndarray] = {}
        self.errors: list[np.ndarray] = []
        self.fitted = self.failed = self.written = 0
        self.shown_at = 0.0

    def take(self, reports: list) -> None:
        for report in reports:
            rows = self.rows_of.pop(report.request_id, None)
            if rows is None:
                continue
            self.fitted += report.fitted
            self.failed += report.failed
            self.written += report.written
            stored = self.store.read(self.dataset, rows, skip_corrupt=True)
            self.errors.append(stored.error[stored.found])
            self.bar.update(report.batch_size)
        now = time.monotonic()
        if reports and now - self.shown_at >= PROGRESS_PERIOD_S:
            self.shown_at = now
            errors = np.concatenate(self.errors) if self.errors else np.zeros(0)
            median = f"{np.median(errors):.2f}" if errors.size else "-"
            self.bar.set_postfix(failed=self.failed, median_error=median, refresh=False)

    def close(self) -> None:
        self.bar.close()


def fit_dataset(start_pool: Callable[[], FitterPool], store: FitStore, body: BodyModel, job: DatasetFit,
                cfg: RunConfig, refit_above: float | None = None, progress: bool = True) -> DatasetFitSummary:
    """Send every row that needs a fit to a pool from start_pool (started only if some row does), wait for the last."""
    started = time.monotonic()
    if job.fingerprint is not None:
        store.bind_dataset(job.dataset, job.fingerprint, job.source)  # another dataset's fits are never reused
    todo = rows_to_fit(store, job.dataset, job.usable, refit_above)
    tracker = _Progress(store, job.dataset, len(todo), progress)
    fitters = 0
    usable = int(job.usable.sum())
    try:
        if len(todo):
            with start_pool() as pool:
                _send_all(pool, body, job, cfg, todo, tracker)
                fitters = pool.metrics().num_fitters
    except StoreFullError as full:
        # What the store holds, not what reports said: a refused request may have written part of its batch.
        raise StoreFullError(f"{full} ({job.dataset}: {_stored_errors(store, job).size} of {usable} usable rows "
                             "have a fit in the store)", full.written) from None
    finally:
        tracker.close()
    seconds = time.monotonic() - started
    errors = _stored_errors(store, job)
    return DatasetFitSummary(
        dataset=job.dataset, rows=len(job.usable), usable=usable, stored_before=usable - len(todo), sent=len(todo),
        fitted=tracker.fitted, failed=tracker.failed, written=tracker.written,
        unfinished=int(sum(len(r) for r in tracker.rows_of.values())), stored_after=int(errors.size),
        median_error=float(np.median(errors)) if errors.size else float("nan"),
        valid=int((errors < cfg.fitting.valid_error_threshold).sum()), seconds=seconds, fitters=fitters,
    )


def _send_all(pool: FitterPool, body: BodyModel, job: DatasetFit, cfg: RunConfig, todo: np.ndarray,
              tracker: _Progress) -> None:
    """Submit the rows batch by batch (each submit waits for a free fitter), then wait for the last reports."""
    for begin in range(0, len(todo), cfg.fitting.batch_size):
        rows = todo[begin:begin + cfg.fitting.batch_size]
        request = start_request(body, job, rows, cfg)
        tracker.rows_of[request.request_id] = rows
        pool.submit(request)  # busy_policy block: waits for a free fitter, never drops
        tracker.take(pool.poll())
    while not pool.drain(PROGRESS_PERIOD_S):
        tracker.take(pool.poll())
        metrics = pool.metrics()
        if metrics.in_flight == 0 and metrics.pending > 0 and metrics.num_fitters == 0:
            raise PipelineError(f"dataset fit of {job.dataset}: {metrics.pending} requests wait but no fitter is "
                                f"left to run them ({metrics.last_error}); run the same command again to fit the rest")
    tracker.take(pool.poll())


def _stored_errors(store: FitStore, job: DatasetFit) -> np.ndarray:
    """Stored errors of the dataset's usable rows (from the store's error index)."""
    if not store.count(job.dataset):
        return np.zeros(0)
    indices, errors = store.all_errors(job.dataset)
    indices = np.asarray(indices, np.int64)
    inside = (indices >= 0) & (indices < len(job.usable))
    in_use = np.zeros(len(indices), bool)
    in_use[inside] = job.usable[indices[inside]]
    return np.asarray(errors, np.float64)[in_use]
