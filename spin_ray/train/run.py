"""`run_training`: a whole single-process run from a RunConfig (data, store, trainer, evaluation, report)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import DatasetEntry, RunConfig
from spin_ray.data.dataset import MixedDataset, SpinImageDataset, build_dataset
from spin_ray.data.identity import dataset_fingerprint
from spin_ray.errors import ConfigError
from spin_ray.eval.evaluate import EvalResult, evaluate, evaluation_dataset, mean_params_predictor, model_predictor
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.static_fits import canonical_crop_keypoints, fit_static
from spin_ray.model.device import resolve_device
from spin_ray.model.mean_params import mean_pose_axis_angle
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import store_url
from spin_ray.train.async_fits import FitQueue
from spin_ray.train.checkpoint import check_resumable, initial_network
from spin_ray.train.modes import check_mode, make_supervisor
from spin_ray.train.sampling import make_train_loader
from spin_ray.train.trainer import StepMetrics, Trainer

if TYPE_CHECKING:
    from spin_ray.train.report import StartView

log = logging.getLogger(__name__)
StoreInit = Callable[[FitStore, BodyModel, list[SpinImageDataset]], None]


@dataclass
class RunSummary:
    """What a run did: steps, losses, store counts, held-out errors and where its files are."""

    mode: str
    steps: int
    first_loss: float
    final_loss: float  # mean over the last tenth of the steps
    nan_skipped: int
    checkpoint: str
    output_dir: str
    report: str | None = None
    start_evaluation: dict | None = None  # the starting network on the held-out set (train.evaluate_start)
    evaluation: dict | None = None
    baseline: dict | None = None
    store: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)  # async: the supervisor's read statistics (the pool adds its own)
    train_seconds: float = float("nan")  # wall time of the training loop of this invocation
    steps_run: int = 0  # steps this invocation ran (fewer than `steps` after a resume)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_data(cfg: RunConfig) -> tuple[MixedDataset, DatasetEntry | None]:
    """The configured training mix and held-out entry; the synthetic splits when data.datasets is empty."""
    if cfg.data.datasets:
        return build_dataset(cfg.data, train=True), cfg.train.heldout
    try:
        from spin_ray.data.synth import ensure_synthetic_data
    except ImportError:
        raise ConfigError("data.datasets is empty and the synthetic data generator is not available: "
                          "list SPIN-format datasets under data.datasets") from None
    paths = ensure_synthetic_data(cfg)
    train = [DatasetEntry(name=name, npz=paths[name], image_root=paths[name].parent)
             for name in ("synth-3d", "synth-itw") if name in paths]
    if not train:
        raise ConfigError("synth.sizes gives no training split (synth-3d or synth-itw)")
    data = cfg.data.model_copy(update={"datasets": train})
    heldout = cfg.train.heldout
    if heldout is None and "synth-test" in paths:
        heldout = DatasetEntry(name="synth-test", npz=paths["synth-test"], image_root=paths["synth-test"].parent)
    return build_dataset(data, train=True), heldout


@contextlib.contextmanager
def open_store(cfg: RunConfig, body: BodyModel, output_dir: Path) -> Iterator[FitStore]:
    """The run's fit store: by URL when the config names one, else an embedded Redis under output_dir/redis."""
    with store_url(cfg.store, output_dir / "redis") as url:
        store = FitStore.from_config(cfg.store, body.identity, url=url)
        try:
            yield store
        finally:
            store.close()


def bind_datasets(store: FitStore, datasets: list[SpinImageDataset]) -> None:
    """Bind each training dataset's name to its content in the store: another dataset under a taken name is refused."""
    for dataset in datasets:
        spin = dataset.spin
        store.bind_dataset(spin.name, dataset_fingerprint(spin), str(spin.source or spin.name))


def static_fits_init(cfg: RunConfig, progress: bool = True) -> StoreInit:
    """Store initialiser: static fits from the mean pose for each dataset with no stored fit yet (a bar if progress)."""
    def init(store: FitStore, body: BodyModel, datasets: list[SpinImageDataset]) -> None:
        prior = load_pose_prior(cfg.fitting)
        pose, betas = mean_pose_axis_angle(cfg)
        for dataset in datasets:
            spin = dataset.spin
            if store.count(spin.name) > 0:
                log.info("store already holds %d fits of %s: no static fits", store.count(spin.name), spin.name)
                continue
            keypoints = canonical_crop_keypoints(spin.keypoints49(), spin.center, spin.scale, cfg.camera.crop_size)
            fits = fit_static(body, prior, torch.from_numpy(keypoints), pose, betas, cfg.fitting, cfg.camera,
                              fit_rows=dataset.usable, progress=progress)  # rows with bad annotations get no fit
            written = store.keep_best_samples(spin.name, np.arange(len(fits.error)), fits.pose, fits.betas[:, :10],
                                              fits.error, 0, "static")
            log.info("static fits of %s: %d stored", spin.name, int(written.sum()))
    return init


def evaluate_heldout(trainer: Trainer, entry: DatasetEntry, batch_size: int) -> tuple[EvalResult, EvalResult]:
    """The trained network and the mean-parameter baseline on the held-out set."""
    dataset = evaluation_dataset(entry.npz, entry.image_root, trainer.cfg.data.img_res, name=entry.name,
                                 bad_samples=trainer.cfg.data.bad_samples)
    model = evaluate(model_predictor(trainer.model), trainer.body, dataset, batch_size, name="model")
    baseline = evaluate(mean_params_predictor(trainer.model), trainer.body, dataset, batch_size, name="mean-pose")
    trainer.model.train()
    return model, baseline


def view_start(trainer: Trainer, entry: DatasetEntry, overlays: bool) -> StartView:
    """Evaluate the network as it starts (and draw its overlays if the run writes a report)."""
    from spin_ray.train.report import StartView, mesh_overlays

    dataset = evaluation_dataset(entry.npz, entry.image_root, trainer.cfg.data.img_res, name=entry.name,
                                 bad_samples=trainer.cfg.data.bad_samples)
    result = evaluate(model_predictor(trainer.model), trainer.body, dataset, trainer.cfg.train.batch_size, name="start")
    trainer.model.train()
    count = trainer.cfg.train.report_images if overlays else 0
    log.info("held-out %s at the start: PA-MPJPE %.1f mm", entry.name, result.summary()["pa_mpjpe_mm"])
    return StartView(result, mesh_overlays(trainer, entry, count) if count else [])


def store_counts(store: FitStore | None, names: list[str]) -> dict:
    """Records and improvements per dataset, for the summary."""
    if store is None:
        return {}
    out = {}
    for name in names:
        progress = store.progress(name) if store.count(name) else []
        out[name] = {"records": store.count(name), "loop_writes": int(sum(n for step, n, _ in progress if step > 0))}
    return out


def summarise_run(
    trainer: Trainer, metrics: list[StepMetrics], train_seconds: float, store: FitStore | None, names: list[str],
    output_dir: Path,
) -> RunSummary:
    """The run's summary before evaluation: steps, first and final loss (mean of the last tenth), store counts."""
    history = trainer.history or metrics
    tail = history[-max(1, len(history) // 10):]
    read_stats = getattr(trainer.supervisor, "read_stats", None)  # async: prefetch hits, loop fits used
    return RunSummary(
        mode=trainer.cfg.train.mode, steps=trainer.step,
        first_loss=history[0].loss if history else float("nan"),
        final_loss=float(np.mean([m.loss for m in tail])) if history else float("nan"),
        nan_skipped=trainer.nan_skipped, checkpoint=str(trainer.checkpoint_path), output_dir=str(output_dir),
        store=store_counts(store, names), train_seconds=train_seconds, steps_run=len(metrics),
        pipeline={"reads": read_stats()} if read_stats is not None else {},
    )


def finish_run(
    trainer: Trainer, metrics: list[StepMetrics], train_seconds: float, store: FitStore | None, names: list[str],
    heldout: DatasetEntry | None, output_dir: Path, report: bool = True, start: StartView | None = None,
) -> RunSummary:
    """The run's summary, held-out evaluation and report: how every run ends (one trainer or rank 0 of many)."""
    summary = summarise_run(trainer, metrics, train_seconds, store, names, output_dir)
    evaluated = None
    if heldout is not None:
        evaluated = evaluate_heldout(trainer, heldout, trainer.cfg.train.batch_size)
        summary.evaluation, summary.baseline = evaluated[0].summary(), evaluated[1].summary()
    if start is not None:
        summary.start_evaluation = start.result.summary()
    if report:
        from spin_ray.train.report import write_report
        summary.report = str(write_report(trainer, output_dir / "report.png", heldout, evaluated, start))
    return summary


# Makes `async` mode's fit queue (the Ray pipeline's fitter pool) for the run's store, once it is open.
FitQueueFactory = Callable[[FitStore], FitQueue]


def run_training(
    cfg: RunConfig, resume: str | Path | None = None, init_store: StoreInit | None = None, progress: bool = True,
    report: bool = True, fit_queue: FitQueueFactory | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> RunSummary:
    """Train as the config says, evaluate on the held-out set, write a report.

    Single-process training supports sync, static and 2d; the Ray pipeline runs async by passing
    its fitter pool as fit_queue. on_step hears every step's metrics (progress in another process).
    """
    check_mode(cfg.train.mode, fit_queue is not None)
    resolve_device(cfg.device, "device")  # a device this process cannot use: one line, before the data are built
    if resume is not None:
        check_resumable(resume, cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed)
    body = BodyModel.from_config(cfg.body)
    train_set, heldout = training_data(cfg)
    names = [d.spin.name for d in train_set.datasets]
    needs_store = cfg.train.uses_store
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(open_store(cfg, body, output_dir)) if needs_store else None
        if store is not None:
            bind_datasets(store, train_set.datasets)
            initialiser = init_store or (
                static_fits_init(cfg, progress) if cfg.train.init_store_from_static_fits else None)
            if initialiser is not None:
                initialiser(store, body, train_set.datasets)
            if cfg.train.mode == "static" and not any(store.count(n) for n in names):
                log.warning("static mode with an empty fit store: nothing supervises the pose until fits exist "
                            "(set train.init_store_from_static_fits or import fits with `spin-ray store import`)")
        queue = fit_queue(store) if fit_queue is not None and cfg.train.uses_fitter_pool else None
        supervisor = make_supervisor(cfg, store, body, queue)
        stack.callback(supervisor.close)
        if resume is not None:
            trainer = Trainer.resume(resume, cfg, supervisor, body, output_dir)
        else:
            trainer = Trainer(cfg, initial_network(cfg, body), body, supervisor, output_dir)
        start = None
        if heldout is not None and trainer.step == 0 and cfg.train.evaluate_start:
            start = view_start(trainer, heldout, overlays=report)
        loader = make_train_loader(train_set, cfg.train.batch_size, cfg.seed, trainer.samples_consumed,
                                   cfg.data.num_workers)
        loop_started = time.monotonic()
        metrics = trainer.fit_loop(loader, max(0, cfg.train.steps - trainer.step), progress=progress,
                                   on_step=on_step)
        train_seconds = time.monotonic() - loop_started
        summary = finish_run(trainer, metrics, train_seconds, store, names, heldout, output_dir, report, start)
    (output_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
