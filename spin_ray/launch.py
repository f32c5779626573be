"""`python -m spin_ray.launch CONFIG.yaml`: a whole run on Ray, locally or on a cluster.

Validates the config, starts or joins Ray (`RAY_ADDRESS` / pipeline.ray_address, or a local Ray),
starts the embedded Redis unless the config names one, checks that the run's actors can ever be
placed, builds the synthetic data on first use, runs the trainer actor (which in `async` mode owns
the fitter pool), shows progress, and prints what the run did. Exits non-zero with a one-line
message on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spin_ray.config import MODES, RunConfig, load_config, with_overrides, with_store_url
from spin_ray.errors import PipelineError, SpinRayError
from spin_ray.pipeline.ray_connect import live_recorded_head
from spin_ray.pipeline.ray_errors import spin_error
from spin_ray.pipeline.resources import check_run_resources
from spin_ray.store.server import store_url

log = logging.getLogger("spin_ray.launch")
STATUS_PERIOD_S = 1.0
# Seconds Ray's processes get to exit after ray.shutdown before they are terminated (then killed).
REAP_GRACE_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options."""
    parser.add_argument("config", type=Path, help="run config YAML (see configs/)")
    parser.add_argument("--mode", choices=MODES, default=None, help="override train.mode")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the run unwinds (actors, Ray, Redis stop) and exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise Stopped, also where a shell started us in the background with SIGINT ignored.

    Yields the signals received: Ray's blocking calls turn the exception into a plain KeyboardInterrupt.
    """
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in stops}
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        for other in stops:  # a second signal must not cut the clean-up short and leave processes behind
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    for signum in stops:
        signal.signal(signum, stop)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _init_ray(**options: Any) -> None:
    """ray.init, keeping our SIGTERM handler: Ray's driver replaces it with a bare sys.exit."""
    import ray

    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(**options)
    finally:
        if main_thread and handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def ray_session(cfg: RunConfig) -> Iterator[bool]:
    """Join the configured Ray cluster or a live local head, else start a local Ray; shut down what we started.

    Without a configured address a head named by Ray's address file is joined only if it is alive
    (checked in a second); a dead one is ignored and a local Ray started (`address="local"`). Yields
    whether Ray is a local one this block started (no autoscaler can add nodes to it).
    """
    import ray

    address = cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        yield False
        return
    if address in (None, "auto"):
        address = live_recorded_head()
    before = _children()
    try:  # a signal may come during ray.init, which has started processes by then
        try:
            if address and address != "local":
                _init_ray(address=address, namespace=cfg.pipeline.ray_namespace, log_to_driver=True)
            else:
                _init_ray(address="local", namespace=cfg.pipeline.ray_namespace, include_dashboard=False,
                          configure_logging=False)
        except Exception as err:  # Ray raises ConnectionError, RuntimeError, ... with long texts
            joining = address and address != "local"
            where = f"the Ray cluster at {address}" if joining else "a local Ray"
            hint = (" (Ray 2.60 uses token auth: set RAY_AUTH_MODE=token with the cluster's token, "
                    "see deploy/README.md)" if joining else "")
            raise PipelineError(f"could not start or join {where}: {str(err).splitlines()[0]}{hint}") from None
        yield not (address and address != "local")
    finally:
        started = _children() - before
        ray.shutdown()
        _reap(started)


def _children() -> set[Any]:
    """Our child processes, except redis-server: an embedded store restarted during the run is stopped by its owner."""
    import psutil  # Ray's own dependency

    children = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() != "redis-server":
                children.add(child)
    return children


def _reap(processes: set[Any], grace_s: float = REAP_GRACE_S) -> None:
    """Stop what ray.init started and ray.shutdown left running (its agents outlive the raylet for a while)."""
    import psutil

    _, alive = psutil.wait_procs(list(processes), timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


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


if __name__ == "__main__":
    sys.exit(main())
