"""`python -m spin_ray.launch CONFIG.yaml`: a whole run on Ray, locally or on a cluster.

Validates the config, starts or joins Ray (`RAY_ADDRESS` / pipeline.ray_address, or a local Ray),
starts the embedded Redis unless the config names one, checks that the run's actors can ever be
placed, builds the synthetic data on first use, runs the trainer actor (which in `async` mode owns
the fitter pool), shows progress, and prints what the run did. Exits non-zero with a one-line
message on failure.
"""

# `spin-ray launch` is the same command; spin_ray/launch.py is only the `python -m` entry.
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spin_ray.config import MODES, RunConfig, load_config, with_overrides, with_store_url
from spin_ray.errors import PipelineError, SpinRayError
from spin_ray.pipeline.ray_errors import spin_error
from spin_ray.pipeline.resources import check_run_resources
from spin_ray.pipeline.session import ray_session, stop_on_signals
from spin_ray.store.server import store_url
from spin_ray.train.checkpoint import check_resumable

STATUS_PERIOD_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options."""
    parser.add_argument("config", type=Path, help="run config YAML (see configs/)")
    parser.add_argument("--mode", choices=MODES, default=None, help="override train.mode")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `launch` subcommand with the launcher's own options and entry point."""
    parser = subparsers.add_parser("launch", help="run training on Ray (every mode; async uses the fitter pool)",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run_from_args, prog="spin-ray launch")


def _describe(status: dict[str, Any]) -> dict[str, str]:
    """Progress-bar fields from a trainer status."""
    fields: dict[str, str] = {}
    latest = status.get("latest")
    if latest:
        fields["loss"] = f"{latest['loss']:.3f}"
        fields["valid"] = f"{latest['valid_fraction']:.2f}"
        if latest["stored_error"] == latest["stored_error"]:  # not NaN
            fields["store_err"] = f"{latest['stored_error']:.1f}"
    pool = status.get("pool")
    if pool:
        fields["fits/s"] = f"{pool['fits_per_s']:.0f}"
        fields["in_flight"] = str(pool["in_flight"])
        fields["dropped"] = str(pool["dropped"])
    return fields


def run_on_ray(cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the trainer actor to the end and return its summary (inside a Ray session and with a store URL)."""
    import ray

    from spin_ray.pipeline.trainer_actor import TrainerActor, trainer_actor_name

    # Named, so `spin-ray pool resize` can reach the run while it trains.
    actor_class = ray.remote(TrainerActor).options(
        num_cpus=cfg.pipeline.trainer_num_cpus, num_gpus=cfg.pipeline.trainer_num_gpus, max_concurrency=2,
        max_restarts=0, name=trainer_actor_name(cfg.name), namespace=cfg.pipeline.ray_namespace,
    )
    trainer = actor_class.remote(cfg)
    _wait_started(trainer, cfg)
    done_ref = trainer.run.remote(str(resume) if resume else None)
    bar = tqdm(total=cfg.train.steps, desc=f"train {cfg.train.mode}", unit="step", disable=not progress)
    shown = 0
    try:
        while True:
            ready, _ = ray.wait([done_ref], timeout=STATUS_PERIOD_S)
            with contextlib.suppress(Exception):  # a slow status must never stop the run
                status = ray.get(trainer.status.remote(), timeout=10)
                steps = status["steps_done"]
                bar.update(max(0, steps - shown))
                shown = max(shown, steps)
                bar.set_postfix(_describe(status), refresh=False)
            if ready:
                break
        return ray.get(done_ref)
    except ray.exceptions.RayTaskError as err:
        raise spin_error(err, "the trainer failed") from None
    except ray.exceptions.ActorDiedError as err:
        raise PipelineError(f"the trainer actor died ({str(err).splitlines()[0]}); resume from the last "
                            f"checkpoint with --resume {Path(cfg.output_dir) / 'checkpoints' / 'last.pt'}") from None
    finally:
        bar.close()


def _wait_started(trainer: Any, cfg: RunConfig) -> None:
    """Wait (at most pipeline.startup_timeout_s) until the trainer actor answers; its own failure as a one-line error."""
    import ray

    try:
        ray.get(trainer.status.remote(), timeout=cfg.pipeline.startup_timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.kill(trainer, no_restart=True)
        raise PipelineError(
            f"the trainer actor did not start within {cfg.pipeline.startup_timeout_s:.0f} s "
            f"(pipeline.startup_timeout_s); it asks for pipeline.trainer_num_cpus: {cfg.pipeline.trainer_num_cpus:g} "
            f"and pipeline.trainer_num_gpus: {cfg.pipeline.trainer_num_gpus:g} (see `ray status`)") from None
    except ray.exceptions.RayError as err:
        raise spin_error(err, "the trainer actor failed to start") from None


def prepare_data(cfg: RunConfig, progress: bool) -> None:
    """Build the synthetic datasets in the driver on first use (cached; the trainer then finds them)."""
    if cfg.data.datasets:
        return
    from spin_ray.data.synth import ensure_synthetic_data

    ensure_synthetic_data(cfg, progress=progress)


def launch(cfg: RunConfig, resume: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """A whole run: Redis, Ray, the resource check, data, the trainer actor; the summary (also written to output_dir)."""
    if resume is not None:
        check_resumable(resume, cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with store_url(cfg.store, output_dir / "redis") as url, ray_session(cfg) as own_local_ray:
        run_cfg = with_store_url(cfg, url)
        # Fail in seconds on what can never be placed, before anything waits or the data are built (a
        # minute on a new machine); a local Ray we started has no autoscaler to ask.
        check_run_resources(run_cfg, autoscaler=not own_local_ray)
        prepare_data(cfg, progress)
        started = time.monotonic()
        if run_cfg.train.workers > 1:  # data-parallel trainers on Ray Train, one shared fitter pool
            from spin_ray.pipeline.train_workers import run_train_workers

            summary = run_train_workers(run_cfg, resume, progress)
        else:
            summary = run_on_ray(run_cfg, resume, progress)
    summary["wall_s"] = time.monotonic() - started
    (output_dir / "launch_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """What a run did, for people (every way of training ends here)."""
    took = f" in {summary['wall_s']:.0f} s" if "wall_s" in summary else ""
    print(f"{summary['mode']}: {summary['steps']} steps{took}, loss {summary['first_loss']:.3f} -> "
          f"{summary['final_loss']:.3f}, {summary.get('nan_skipped', 0)} NaN samples skipped")
    results = (("start", summary.get("start_evaluation")), ("model", summary.get("evaluation")),
               ("mean pose", summary.get("baseline")))
    for label, result in results:
        if result:
            print(f"  {label:<9} on {result['dataset']}: MPJPE {result['mpjpe_mm']:.1f} mm, "
                  f"PA-MPJPE {result['pa_mpjpe_mm']:.1f} mm, PVE {result['pve_mm']:.1f} mm")
    for name, counts in summary.get("store", {}).items():
        print(f"  store {name}: {counts['records']} fits, {counts['loop_writes']} improvements from the loop")
    pool = summary.get("pipeline", {}).get("pool")
    if pool:
        print(f"  fitter pool: {pool['samples_fitted']} samples fitted, {pool['written']} improved the store, "
              f"{pool['dropped']} requests dropped, {pool['restarts']} restarts, peak in flight {pool['peak_in_flight']}")
    print(f"  checkpoint {summary['checkpoint']}" + (f", report {summary['report']}" if summary.get("report") else ""))


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point shared by `python -m spin_ray.launch` and `spin-ray launch`; SIGINT/SIGTERM exit 130/143."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = with_overrides(load_config(args.config), train={"mode": args.mode, "steps": args.steps})
    received: list[int] = []
    try:
        with stop_on_signals() as received:
            summary = launch(cfg, args.resume, progress=not args.no_progress)
    except KeyboardInterrupt as stopped:
        signum = received[0] if received else getattr(stopped, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"{getattr(args, 'prog', 'spin_ray.launch')}: stopped by {name}; actors, Ray and the embedded Redis "
              f"were shut down; resume with --resume {Path(cfg.output_dir) / 'checkpoints' / 'last.pt'}",
              file=sys.stderr)
        return 128 + signum
    print_summary(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m spin_ray.launch CONFIG.yaml [options]`."""
    parser = argparse.ArgumentParser(prog="python -m spin_ray.launch", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except SpinRayError as err:
        print(f"spin_ray.launch: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spin_ray.launch: interrupted; resume with --resume OUTPUT_DIR/checkpoints/last.pt", file=sys.stderr)
        return 130
