"""`async` mode: the step supervises with the best fits stored so far and hands its predictions to
a fitter queue without waiting; the fits the queue's fitters find serve the next visit of those samples.

The queue is anything with `FitQueue`'s calls: the Ray pipeline's `FitterPool` (one trainer) or its
`PoolClient` (data-parallel workers sharing one pool). Training never sees an actor.

The store read for batch t+1 starts (on a reader thread) while step t runs, so a step waits on
Redis only if the read is slower than a whole step. If Redis goes away, reads and the step wait for
it to come back (up to store.outage_timeout_s) instead of failing the run.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Protocol, TypeVar

import numpy as np
import torch

from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.errors import FitStoreUnavailable
from spin_ray.model.hmr import HMROutput
from spin_ray.store.fit_store import FitStore
from spin_ray.train.supervision import (
    Batch,
    FitTargets,
    StepPredictions,
    batch_samples,
    read_stored_fits_with_steps,
    step_predictions,
    targets_from_canonical,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def wait_for_store(action: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run action, retrying with backoff while the store is unreachable, for at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return action()
        except FitStoreUnavailable as err:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("fit store unreachable while %s; retrying in %.1f s (%s)", what, delay, err)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


class FitQueue(Protocol):
    """Where `async` mode sends predictions to be fitted: bounded, never blocking a step under busy_policy drop."""

    def submit_predictions(self, predictions: StepPredictions) -> bool:
        """Queue a step's predictions for fitting; False if they were dropped."""

    def poll(self) -> list[Any]:
        """Reports (with `fitted` and `written` counts) of the fits finished since the last poll."""


class AsyncFits:
    """FitSupervisor of `async` mode: prefetched store reads in, predictions out to a fit queue."""

    name = "async"

    def __init__(
        self, store: FitStore, pool: FitQueue, fitting: FittingConfig, camera: CameraConfig, num_betas: int,
        outage_timeout_s: float, lookahead_steps: int = 0,
    ) -> None:
        self.store = store
        self.pool = pool
        # > 0: each batch is fitted from predictions made lookahead_steps steps before it trains,
        # instead of from its own step's predictions (which serve only its next visit).
        self.lookahead_steps = lookahead_steps
        self._step = 0
        self.fitting = fitting
        self.camera = camera
        self.num_betas = num_betas
        self.outage_timeout_s = outage_timeout_s
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit-store-reader")
        self._prefetched: tuple[tuple, Future] | None = None
        self.prefetch_hits = 0
        self.prefetch_misses = 0
        self.read_wait_s = 0.0
        self.loop_fits_used = 0
        self.loop_fit_age_sum = 0.0

    @staticmethod
    def _key(batch: Batch) -> tuple:
        datasets, indices = batch_samples(batch)
        return tuple(datasets), indices.tobytes()

    def _read(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        return wait_for_store(lambda: read_stored_fits_with_steps(self.store, batch, self.num_betas),
                              self.outage_timeout_s, "reading fits")

    def prefetch(self, batch: Batch) -> None:
        """Start reading the next batch's fits while the current step runs."""
        self._prefetched = (self._key(batch), self._reader.submit(self._read, batch))

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """The batch's stored fits: the prefetched read when it matches, else a read now."""
        started = time.perf_counter()
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == self._key(batch):
            pose, betas, error, written_at = prefetched[1].result()
            self.prefetch_hits += 1
        else:
            # A batch that lost rows (NaN keypoints) or was never announced: read it now.
            pose, betas, error, written_at = self._read(batch)
            self.prefetch_misses += 1
        self.read_wait_s += time.perf_counter() - started
        # Fits written by the loop (step > 0; static fits are step 0) that now supervise this batch,
        # and how many steps old the predictions behind them are.
        loop = written_at > 0
        self.loop_fits_used += int(loop.sum())
        self.loop_fit_age_sum += float((step - written_at[loop]).sum())
        self._step = step
        counts = self._pool_counts()
        return targets_from_canonical(batch, pose, betas, error, self.fitting.valid_error_threshold, counts)

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """Hand the step's predictions to the fit queue (never waits under busy_policy drop)."""
        if not self.lookahead_steps:
            self.pool.submit_predictions(step_predictions(batch, pred, step, self.camera))

    def lookahead(self, batch: Batch, predict: Callable[[Batch], HMROutput]) -> None:
        """Fit a batch that trains lookahead_steps from now, from the current weights' predictions."""
        pred = predict(batch)
        self.pool.submit_predictions(step_predictions(batch, pred, self._step, self.camera))

    def _pool_counts(self) -> dict[str, float]:
        """Fits the pool finished since the last step, for the step's metrics."""
        reports = self.pool.poll()
        return {
            "fitted": float(sum(r.fitted for r in reports)),
            "improved": float(sum(r.written for r in reports)),
        }

    def read_stats(self) -> dict[str, float]:
        """Prefetch hit rate, time the steps spent waiting on reads, and how many loop fits supervised."""
        total = self.prefetch_hits + self.prefetch_misses
        return {
            "prefetch_hit_rate": self.prefetch_hits / total if total else float("nan"),
            "read_wait_s": self.read_wait_s,
            "reads": float(total),
            "loop_fits_used": float(self.loop_fits_used),
            "mean_loop_fit_age_steps": (self.loop_fit_age_sum / self.loop_fits_used
                                        if self.loop_fits_used else float("nan")),
            "mean_read_wait_ms": 1000.0 * self.read_wait_s / total if total else float("nan"),
        }

    def close(self) -> None:
        """Stop the reader; the pool and store belong to whoever made them."""
        self._reader.shutdown(wait=True, cancel_futures=True)
