"""The trainer actor: the training run in a Ray process of its own (GPU on a cluster), and its status.

`run` trains with the shared training step (`run_training`); in `async` mode the actor makes the
fitter pool on the run's store and hands it to training as the fit queue. `status` answers while
`run` works (the actor has two threads), so the driver can show progress without the trainer ever
waiting for it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any

import torch

from spin_ray.config import RunConfig
from spin_ray.pipeline.pool import FitterPool
from spin_ray.store.fit_store import FitStore
from spin_ray.train.run import run_training
from spin_ray.train.trainer import StepMetrics

# Seconds the pool gets to finish in-flight fits once training ends (their results still count).
DRAIN_TIMEOUT_S = 60.0


def trainer_actor_name(run: str) -> str:
    """The Ray name of a run's trainer actor (in namespace pipeline.ray_namespace), from its config name."""
    return f"trainer:{run}"


class TrainerGauges:
    """The trainer's side of the run's metrics in Ray (dashboard / Prometheus): steps/s, store error, fits used."""

    def __init__(self, run: str) -> None:
        self._tags = {"run": run}
        self._started: float | None = None
        try:
            from ray.util import metrics

            self._steps = metrics.Gauge("spin_ray_trainer_steps_per_s", "trainer optimiser steps per second",
                                        tag_keys=("run",))
            self._error = metrics.Gauge("spin_ray_store_mean_error", "mean ranking error of the batch's stored fits",
                                        tag_keys=("run",))
            self._valid = metrics.Gauge("spin_ray_valid_fit_fraction", "share of the batch supervised by a valid fit",
                                        tag_keys=("run",))
        except Exception:  # outside a Ray worker (unit tests): no metrics, nothing else changes
            self._steps = self._error = self._valid = None

    def record(self, metrics: StepMetrics) -> None:
        """Publish one step's numbers."""
        if self._steps is None:
            return
        now = time.monotonic()
        if self._started is None:
            self._started, self._first_step = now, metrics.step
        elif now > self._started:
            self._steps.set((metrics.step - self._first_step) / (now - self._started), tags=self._tags)
        if metrics.stored_error == metrics.stored_error:
            self._error.set(metrics.stored_error, tags=self._tags)
        self._valid.set(metrics.valid_fraction, tags=self._tags)


class TrainerActor:
    """One training run; wrap with ray.remote(max_concurrency=2) so status() answers during run()."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._latest: StepMetrics | None = None
        self._steps_done = 0
        self._pool: FitterPool | None = None
        self._resize_to: int | None = None
        self._gauges = TrainerGauges(cfg.name)

    def _fit_queue(self, store: FitStore) -> FitterPool:
        """async mode's fit queue: a fitter pool writing to the run's store."""
        self._pool = FitterPool(self.cfg, store.address)
        return self._pool

    def _on_step(self, metrics: StepMetrics) -> None:
        """After each step, on the training thread (the pool is not thread-safe): progress, gauges, resizes."""
        with self._lock:
            self._latest = metrics
            self._steps_done += 1
            resize_to, self._resize_to = self._resize_to, None
        schedule = self.cfg.pipeline.fitter_schedule
        if metrics.step in schedule:
            resize_to = schedule[metrics.step]
        if self._pool is not None and resize_to is not None:
            self._pool.resize(resize_to)
        self._gauges.record(metrics)

    def resize_fitters(self, num_fitters: int) -> int:
        """Change the pool size during a run (from `spin-ray pool resize`); applied after the current step."""
        if num_fitters < 1:
            raise ValueError(f"a pool needs at least one fitter, got {num_fitters}")
        if not self.cfg.train.uses_fitter_pool:
            raise RuntimeError(f"this run (mode {self.cfg.train.mode}) has no fitter pool to resize")
        with self._lock:
            self._resize_to = num_fitters
        return num_fitters

    def run(self, resume: str | None = None) -> dict[str, Any]:
        """Train to cfg.train.steps, evaluate, write the report; the run summary plus pipeline metrics."""
        torch.set_num_threads(self.cfg.train.num_threads)
        try:
            summary = asdict(run_training(self.cfg, resume=resume, progress=False, fit_queue=self._fit_queue,
                                          on_step=self._on_step))
        finally:
            pool = self._shutdown_pool()
        summary["pipeline"].update(pool)
        return summary

    def _shutdown_pool(self) -> dict[str, Any]:
        """Let in-flight fits land, then stop the fitters; their final metrics."""
        out: dict[str, Any] = {}
        if self._pool is not None:
            self._pool.drain(DRAIN_TIMEOUT_S)
            out["fitters_at_end"] = self._pool.metrics().num_fitters
            out["pool"] = self._pool.shutdown().model_dump()
        return out

    def status(self) -> dict[str, Any]:
        """Steps done, the latest step's metrics and the pool's, for the driver's progress bar."""
        with self._lock:
            latest = asdict(self._latest) if self._latest is not None else None
            steps = self._steps_done
        pool = None
        if self._pool is not None:
            try:
                pool = self._pool.metrics().model_dump()
            except Exception:  # the pool may be closing; progress display must never fail the run
                pool = None
        return {"steps_done": steps, "latest": latest, "pool": pool}
