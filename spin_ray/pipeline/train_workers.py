"""Data-parallel training on Ray Train: N trainer workers (DDP), one shared fitter pool, one fit store.

`python -m spin_ray.launch CONFIG` with train.workers > 1 comes here. The driver starts the run's
shared pool service (async mode) and a TorchTrainer of train.workers workers (gloo on CPU, NCCL on
GPU). Each worker runs the shared step (`Trainer.train_step` through DistributedDataParallel) on
its shard of the data stream (every N-th item, so the workers' batches of a step together are the
step's train.batch_size items a single trainer would take), reads the one store, and submits its
predictions to the one pool. Rank 0 writes the checkpoints and reports them to Ray Train, which
restarts all workers from the latest one when a worker fails (train.max_failures); rank 0 also
evaluates and writes the report. Checkpoints are the single trainer's, so either can resume the other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig, config_from_dict
from spin_ray.errors import ConfigError, PipelineError, SpinRayError
from spin_ray.model.hmr import HMROutput
from spin_ray.pipeline.ray_errors import cause_line, remote_spin_error
from spin_ray.pipeline.pool_service import (
    PoolClient,
    start_pool_service,
    stop_pool_service,
)
from spin_ray.store.fit_store import FitStore
from spin_ray.train.checkpoint import initial_network
from spin_ray.train.modes import make_supervisor
from spin_ray.train.run import (
    bind_datasets,
    finish_run,
    seed_everything,
    static_fits_init,
    training_data,
)
from spin_ray.train.sampling import make_train_loader
from spin_ray.train.supervision import Batch, FitSupervisor, FitTargets, batch_samples
from spin_ray.train.trainer import StepMetrics, Trainer

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
SUMMARY_FILE = "summary.json"
# Seconds a worker waits at the end for the pool service to take its last submits; and the pool
# gets to finish in-flight fits once training ends (their results still count).
FLUSH_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0


def worker_dir(output_dir: str | Path, rank: int) -> Path:
    """Folder of one worker's own files (worker.json, steps.jsonl) under the run's output_dir."""
    return Path(output_dir) / "workers" / f"rank-{rank}"


# -- one worker -------------------------------------------------------------------------------------


class LoggedSupervisor:
    """A FitSupervisor that also appends each step's samples, and those supervised by a stored fit, to a JSON-lines log."""

    def __init__(self, inner: FitSupervisor, log_path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a", buffering=1)

    def __getattr__(self, name: str) -> Any:  # lookahead, lookahead_steps, read_stats, pool, ...
        return getattr(self.inner, name)

    def prefetch(self, batch: Batch) -> None:
        """The inner supervisor's prefetch."""
        self.inner.prefetch(batch)

    def targets(self, batch: Batch, pred: HMROutput, step: int) -> FitTargets | None:
        """The inner supervisor's targets; logs which samples a stored (not ground-truth) fit supervised."""
        fits = self.inner.targets(batch, pred, step)
        datasets, indices = batch_samples(batch)
        stored = np.zeros(len(indices), dtype=bool)
        if fits is not None:
            stored = (torch.isfinite(fits.error) & ~fits.has_smpl.bool()).cpu().numpy()
        self._log.write(json.dumps({
            "step": step, "samples": [[d, int(i)] for d, i in zip(datasets, indices)],
            "stored_fit": [[d, int(i)] for d, i, s in zip(datasets, indices, stored) if s],
        }) + "\n")
        return fits

    def after_step(self, batch: Batch, pred: HMROutput, step: int) -> None:
        """The inner supervisor's after_step."""
        self.inner.after_step(batch, pred, step)

    def close(self) -> None:
        """Close the inner supervisor and the log."""
        self.inner.close()
        self._log.close()


@dataclass
class WorkerRun:
    """One worker's trainer (DDP-wrapped when world > 1), its data shard and the objects to close."""

    cfg: RunConfig
    rank: int
    world: int
    trainer: Trainer
    loader: Any
    store: FitStore | None
    heldout: Any
    names: list[str]
    supervisor: FitSupervisor
    pool: PoolClient | None = None
    resumed_from_step: int | None = None
    closed: list[Any] = field(default_factory=list)


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def worker_setup(cfg: RunConfig, rank: int, world: int, resume: str | Path | None = None,
                 log_steps: bool = True) -> WorkerRun:
    """Build worker rank's trainer and data shard (resumed from `resume` if given); DDP needs a process group when world > 1."""
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} does not split over {world} workers")
    torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    body = BodyModel.from_config(cfg.body)
    train_set, heldout = training_data(cfg)
    names = [d.spin.name for d in train_set.datasets]
    store = None
    if cfg.train.uses_store:
        store = FitStore.from_config(cfg.store, body.identity)  # the driver resolved the URL
        bind_datasets(store, train_set.datasets)
        if rank == 0 and cfg.train.init_store_from_static_fits:
            static_fits_init(cfg, progress=False)(store, body, train_set.datasets)  # skips datasets already in the store
    _barrier(world)  # nobody trains before the static fits are in
    pool = PoolClient.connect(cfg, rank) if cfg.train.uses_fitter_pool else None
    supervisor = make_supervisor(cfg, store, body, pool)
    if log_steps:
        supervisor = LoggedSupervisor(supervisor, worker_dir(cfg.output_dir, rank) / "steps.jsonl")
    # Rank 0 writes where a single trainer would; the others keep their TensorBoard-free state elsewhere.
    output_dir = Path(cfg.output_dir) if rank == 0 else worker_dir(cfg.output_dir, rank)
    if resume is not None:
        trainer = Trainer.resume(resume, cfg, supervisor, body, output_dir)
    else:
        trainer = Trainer(cfg, initial_network(cfg, body), body, supervisor, output_dir)
    if rank:
        torch.manual_seed(_seed(cfg.seed, rank, trainer.step))  # dropout masks differ between workers
    if world > 1:
        _wrap_for_data_parallel(trainer, rank)
    trainer.stream_stride = world
    loader = make_train_loader(train_set, cfg.train.batch_size // world, cfg.seed, trainer.samples_consumed,
                               cfg.data.num_workers, rank, world)
    return WorkerRun(cfg, rank, world, trainer, loader, store, heldout, names, supervisor, pool,
                     resumed_from_step=trainer.step if resume is not None else None)


def _wrap_for_data_parallel(trainer: Trainer, rank: int) -> None:
    """SyncBatchNorm on GPUs (if configured), then DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in trainer.model.modules())
    if has_batchnorm and trainer.device.type == "cuda" and trainer.cfg.train.sync_batchnorm:
        trainer.wrap_model(torch.nn.SyncBatchNorm.convert_sync_batchnorm)
    elif has_batchnorm and rank == 0:
        log.info("BatchNorm statistics are per worker (batch %d each): %s", trainer.cfg.train.batch_size //
                 torch.distributed.get_world_size(), "CPU has no SyncBatchNorm" if trainer.device.type != "cuda"
                 else "train.sync_batchnorm is off")
    device_ids = [trainer.device.index if trainer.device.index is not None else torch.cuda.current_device()] \
        if trainer.device.type == "cuda" else None
    trainer.wrap_model(lambda model: DistributedDataParallel(model, device_ids=device_ids))
    trainer.data_parallel = True


def _close(run: WorkerRun) -> None:
    if run.pool is not None:
        run.pool.flush(FLUSH_TIMEOUT_S)
    run.supervisor.close()
    if run.store is not None:
        run.store.close()


def _run_summary(run: WorkerRun, metrics: list[StepMetrics], train_seconds: float) -> dict[str, Any]:
    """Rank 0's summary, as a single trainer writes it (run_training), evaluation and report included."""
    return asdict(finish_run(run.trainer, metrics, train_seconds, run.store, run.names, run.heldout,
                             Path(run.cfg.output_dir)))


def _worker_stats(run: WorkerRun, metrics: list[StepMetrics], train_seconds: float) -> dict[str, Any]:
    """What one worker did, gathered into rank 0's summary."""
    stats: dict[str, Any] = {
        "rank": run.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": str(run.trainer.device),
        "steps_run": len(metrics), "samples": int(sum(m.batch for m in metrics)), "train_seconds": train_seconds,
        "resumed_from_step": run.resumed_from_step,
    }
    read_stats = getattr(run.supervisor, "read_stats", None)
    if read_stats is not None:
        stats["reads"] = read_stats()
    if run.pool is not None:
        stats["dropped_in_transit"] = run.pool.dropped_in_transit
        stats["lost_in_transit"] = run.pool.lost_in_transit
    return stats


def _report(run: WorkerRun, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """ray.train.report from every worker; rank 0 attaches the checkpoint (and the summary, at the end)."""
    import ray.train

    checkpoint = None
    if run.rank == 0:
        path = run.trainer.save()  # output_dir/checkpoints/last.pt, as a single trainer writes it
        if extra is not None:
            (path.parent / SUMMARY_FILE).write_text(json.dumps(extra, indent=2, default=str))
        else:
            (path.parent / SUMMARY_FILE).unlink(missing_ok=True)
        checkpoint = ray.train.Checkpoint.from_directory(str(path.parent))
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: set up, train to train.steps with checkpoints, rank 0 evaluates and reports."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = config_from_dict(config["cfg"])
    if cfg.device.startswith("cuda"):
        cfg = cfg.model_copy(update={"device": str(ray.train.torch.get_device())})
    info = worker_dir(cfg.output_dir, rank)
    info.mkdir(parents=True, exist_ok=True)
    (info / "worker.json").write_text(json.dumps({"rank": rank, "world": world, "pid": os.getpid(),
                                                  "host": socket.gethostname(), "device": cfg.device}))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run = worker_setup(cfg, rank, world, config.get("resume"))
    else:  # a restart after a failure: Ray Train's latest checkpoint wins over --resume
        with checkpoint.as_directory() as folder:
            run = worker_setup(cfg, rank, world, Path(folder) / CHECKPOINT_FILE)
    trainer = run.trainer
    schedule = cfg.pipeline.fitter_schedule
    reported: set[int] = set()

    def on_step(metrics: StepMetrics) -> None:
        if rank == 0 and run.pool is not None and metrics.step in schedule:
            run.pool.resize(schedule[metrics.step])

    def checkpoint_hook(t: Trainer) -> None:
        # The last step's checkpoint goes out with the summary, after the evaluation.
        if t.step >= cfg.train.steps or t.step in reported:
            return
        reported.add(t.step)
        _report(run, {"step": t.step, "loss": t.history[-1].loss if t.history else float("nan")})

    trainer.checkpoint_hook = checkpoint_hook
    try:
        started = time.monotonic()
        metrics = trainer.fit_loop(run.loader, max(0, cfg.train.steps - trainer.step),
                                   progress=bool(config.get("progress")) and rank == 0, tensorboard=rank == 0,
                                   on_step=on_step)
        train_seconds = time.monotonic() - started
        trainer.model = trainer.network  # training is over: rank 0 evaluates alone, without DDP's collectives
        stats = _worker_stats(run, metrics, train_seconds)
        gathered: list[Any] = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(gathered, stats)
        else:
            gathered = [stats]
        summary = None
        if rank == 0:
            summary = _run_summary(run, metrics, train_seconds)
            summary["workers"] = gathered
        _report(run, {"step": trainer.step, "final": True, "summary": summary}, extra=summary)
    finally:
        _close(run)


# -- the driver -------------------------------------------------------------------------------------


@contextlib.contextmanager
def shared_pool(cfg: RunConfig) -> Iterator[dict[str, Any]]:
    """The run's pool service while the workers train (async mode); yields a dict filled with its final metrics."""
    out: dict[str, Any] = {}
    if not cfg.train.uses_fitter_pool:
        yield out
        return
    service = start_pool_service(cfg)
    try:
        yield out
    finally:
        out.update(stop_pool_service(service, DRAIN_TIMEOUT_S))


def run_train_workers(cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train with train.workers Ray Train workers (inside a Ray session, store URL resolved); the run summary."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.device.startswith("cuda")
    if use_gpu and cfg.pipeline.trainer_num_gpus < 1:
        raise ConfigError(f"device {cfg.device} with train.workers {cfg.train.workers}: each trainer worker needs "
                          f"a whole GPU; set pipeline.trainer_num_gpus: 1 (got {cfg.pipeline.trainer_num_gpus})")
    resources = {"CPU": cfg.pipeline.trainer_num_cpus}
    if use_gpu:
        resources["GPU"] = cfg.pipeline.trainer_num_gpus
    output_dir = Path(cfg.output_dir).resolve()
    cfg = cfg.model_copy(update={"output_dir": output_dir})
    shutil.rmtree(output_dir / "workers", ignore_errors=True)  # per-worker logs of an earlier run
    # A fresh Ray Train run folder per launch: Ray Train would otherwise pick up an older run's
    # checkpoints under the same name. Resuming is explicit (--resume).
    run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "resume": str(resume) if resume else None,
                           "progress": progress},
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=TrainRunConfig(
            name=run_name, storage_path=str(output_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    with shared_pool(cfg) as pipeline:
        try:
            result = trainer.fit()
        except SpinRayError:
            raise
        except Exception as err:  # Ray Train raises TrainingFailedError with the workers' tracebacks
            remote = remote_spin_error(err)
            if remote is not None:
                raise remote from None
            raise PipelineError(f"data-parallel training failed: {cause_line(err)}; resume from the last "
                                f"checkpoint with --resume {output_dir / 'checkpoints' / CHECKPOINT_FILE}") from None
    summary = _final_summary(result)
    summary["pipeline"] = {**pipeline, "workers": cfg.train.workers, "ray_train_run": str(output_dir / "ray_train" / run_name)}
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _final_summary(result: Any) -> dict[str, Any]:
    """Rank 0's summary from Ray Train's result: its last checkpoint's metrics, or the file saved beside it."""
    summary = (result.metrics or {}).get("summary")
    if summary is None and result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            path = Path(folder) / SUMMARY_FILE
            if path.is_file():
                summary = json.loads(path.read_text())
    if summary is None:
        raise PipelineError("data-parallel training ended without rank 0's summary (did it report its final checkpoint?)")
    return dict(summary)

