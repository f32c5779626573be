"""The fitter: batched SMPLify on a trainer's predictions, canonical fits written with keep_best.

The fit itself is `fitting.fit_predictions`, which takes a request as it is (usable without Ray). `FitterActor`
is a plain class holding the state a fitter process needs (body model, pose prior, store
connection); `FitterPool` wraps it with `ray.remote` so its resources come from the config. The
body model is built inside the actor from the config: shipped, it would pickle to ~42 MB.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.joints import NUM_KEYPOINTS
from spin_ray.config import CameraConfig, FittingConfig, RunConfig
from spin_ray.data.augment import IDENTITY_AUG
from spin_ray.errors import ConfigError, PipelineError
from spin_ray.fitting.canonical_fits import CanonicalFits, fit_predictions
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.starts import typical_depth
from spin_ray.model.device import resolve_device
from spin_ray.pipeline.fitter_protocol import FitterHealth, report_fields
from spin_ray.pipeline.requests import FitReport, FitRequest
from spin_ray.store.fit_store import FitStore
from spin_ray.store.records import FitStoreAddress


def fitter_device(config: RunConfig) -> torch.device:
    """The fitters' torch device from the config, checked to exist in this process."""
    key = "pipeline.fitter_device" if config.pipeline.fitter_device else "device"
    try:
        return resolve_device(config.pipeline.fitter_device or config.device, key)
    except ConfigError as err:
        # A fitter sees a GPU only when Ray gave it one.
        raise ConfigError(f"{err} (fitter processes see a GPU only with pipeline.fitter_num_gpus > 0)") from None


WARM_UP_BATCH = 17


class FitterActor(FitterHealth):
    """One fitter process: builds its body model, prior and store connection once, then fits requests."""

    # The store's `source` of the fits this fitter writes; the offline dataset fit's subclass writes "static".
    source = "loop"

    def __init__(self, config: RunConfig, store: FitStoreAddress, actor_id: str) -> None:
        torch.set_num_threads(config.pipeline.fitter_threads)
        self.actor_id = actor_id
        self.device = fitter_device(config)
        self.fitting = config.fitting
        self.camera = config.camera
        self.body = BodyModel.from_config(config.body).to(self.device)
        self.prior = load_pose_prior(config.fitting).to(self.device)
        if store.body_model_hash is None:
            raise PipelineError(
                f"fitter {actor_id}: the fit-store address for namespace {store.namespace!r} has no body-model hash, "
                "so it is read-only; pass FitStoreAddress(..., body_model_hash=body.identity)"
            )
        if store.body_model_hash != self.body.identity:
            raise PipelineError(
                f"fitter {actor_id}: the fit store is for body model {store.body_model_hash}, but config.body builds "
                f"{self.body.identity}: fits of different body models cannot be mixed; "
                "give the fitters the run's config and open the store with body_model_hash=body.identity"
            )
        self.store = FitStore(store)
        self._warm_up()

    def _warm_up(self) -> None:
        """One short fit before readiness: lazy imports (torch's Adam pulls in torch._dynamo: seconds) and, with
        compiled stages, the compile itself, so the first request does not wait for it."""
        fitting = self.fitting.model_copy(update={"iterations_camera": 1, "iterations_body": 1})
        # 17 rows: a batch size no other dimension of the program has, so torch.compile makes the program for
        # every batch size at once (a batch of 1, 2 or 5 got a program of its own, and the first real request
        # then compiled again, 30-60 s during training).
        n = WARM_UP_BATCH
        keypoints = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
        keypoints[..., 2] = 1.0
        camera_t = np.tile(np.array([[0.0, 0.0, typical_depth(self.camera)]], np.float32), (n, 1))
        warm = FitRequest.build(0, "warm-up", np.arange(n), np.zeros((n, 72)), np.zeros((n, self.body.num_betas)),
                                camera_t, keypoints, np.tile(IDENTITY_AUG.as_array()[None], (n, 1)))
        fit_predictions(self.body, self.prior, warm, fitting, self.camera)

    def fit(self, request: FitRequest) -> FitReport:
        """Fit one request, write every improvement to the store (source `self.source`), report what happened."""
        return self.fit_many([request])[0]

    def fit_many(self, requests: list[FitRequest]) -> list[FitReport]:
        """Fit several requests as one SMPLify batch; write and report each as `fit` would (its own step), with
        the call's wall and CPU time shared out by samples."""
        start, cpu_start = time.perf_counter(), time.process_time()
        together = requests[0] if len(requests) == 1 else FitRequest.joined(requests)
        fits = fit_predictions(self.body, self.prior, together, self.fitting, self.camera)
        pose, betas = fits.pose.cpu().numpy(), fits.betas.cpu().numpy()
        errors = fits.error.cpu().numpy().astype(np.float64)
        bounds = np.cumsum([0] + [r.batch_size for r in requests])
        reports = []
        for request, a, b in zip(requests, bounds[:-1], bounds[1:]):
            written = self.store.keep_best_samples(request.row_datasets, request.indices, pose[a:b], betas[a:b],
                                                   errors[a:b], request.step, self.source)
            reports.append(report_fields(request, errors[a:b], int(written.sum()), self.actor_id, start, cpu_start))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return [FitReport(**(fields | {"elapsed_s": wall * fields["batch_size"] / bounds[-1],
                                       "cpu_s": cpu * fields["batch_size"] / bounds[-1]}))
                for fields in reports]
