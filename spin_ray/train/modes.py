"""The one place that turns `train.mode` into the step's fit supervisor."""

from __future__ import annotations

from spin_ray.body.body_model import BodyModel
from spin_ray.config import MODES, POOL_MODES, RunConfig
from spin_ray.errors import ConfigError
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.store.fit_store import FitStore
from spin_ray.train.async_fits import AsyncFits, FitQueue
from spin_ray.train.supervision import FitSupervisor, NoFits, StoreFits, SyncFits



def check_mode(mode: str, has_fit_queue: bool) -> None:
    """Refuse in one line, before any work, a mode this process cannot train: async needs the fitter pool."""
    if mode not in MODES:
        raise ConfigError(f"train.mode {mode!r} is not one of {', '.join(MODES)}")
    if mode in POOL_MODES and not has_fit_queue:
        raise ConfigError("train.mode async needs the Ray pipeline's fitter pool: run `python -m spin_ray.launch "
                          "CONFIG` (or `spin-ray train CONFIG`); in-process training supports sync, static and 2d")


def make_supervisor(
    cfg: RunConfig, store: FitStore | None, body: BodyModel, fit_queue: FitQueue | None = None,
) -> FitSupervisor:
    """The fit supervisor of cfg.train.mode; `async` needs a fit queue (the Ray pipeline's fitter pool)."""
    mode = cfg.train.mode
    check_mode(mode, fit_queue is not None)
    if mode == "2d":
        return NoFits()
    if store is None:
        raise ConfigError(f"train.mode {mode} needs a fit store")
    if mode == "static":
        return StoreFits(store, cfg.fitting, body.num_betas)
    if mode == "sync":
        return SyncFits(store, body, load_pose_prior(cfg.fitting), cfg.fitting, cfg.camera)
    return AsyncFits(store, fit_queue, cfg.fitting, cfg.camera, body.num_betas, cfg.store.outage_timeout_s,
                     cfg.pipeline.lookahead_steps)
