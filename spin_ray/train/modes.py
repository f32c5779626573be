"""The one place that turns `train.mode` into the step's fit supervisor."""

from __future__ import annotations

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig
from spin_ray.errors import ConfigError
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.store.fit_store import FitStore
from spin_ray.train.async_fits import AsyncFits, FitQueue
from spin_ray.train.supervision import FitSupervisor, NoFits, StoreFits, SyncFits

# Modes whose supervisor reads or writes the fit store.
STORE_MODES = ("sync", "static", "async")


def make_supervisor(
    cfg: RunConfig, store: FitStore | None, body: BodyModel, fit_queue: FitQueue | None = None,
) -> FitSupervisor:
    """The fit supervisor of cfg.train.mode; `async` needs a fit queue (the Ray pipeline's fitter pool)."""
    mode = cfg.train.mode
    if mode == "2d":
        return NoFits()
    if mode == "async" and fit_queue is None:
        raise ConfigError("train.mode async needs the Ray pipeline's fitter pool: run `python -m spin_ray.launch "
                          "CONFIG` (or `spin-ray train CONFIG`); in-process training supports sync, static and 2d")
    if store is None:
        raise ConfigError(f"train.mode {mode} needs a fit store")
    if mode == "static":
        return StoreFits(store, cfg.fitting, body.num_betas)
    if mode == "sync":
        return SyncFits(store, body, load_pose_prior(cfg.fitting), cfg.fitting, cfg.camera)
    return AsyncFits(store, fit_queue, cfg.fitting, cfg.camera, body.num_betas, cfg.store.outage_timeout_s,
                     cfg.pipeline.lookahead_steps)
