"""The driver's Ray session: join or start Ray, keep our signal handling, and reap what Ray leaves running.

Used by every command that drives Ray (`python -m spin_ray.launch`, `spin-ray train`, `spin-ray fit`):
SIGINT and SIGTERM raise `Stopped` so the run unwinds (actors, Ray, the embedded Redis stop), and the
processes ray.init started are stopped after ray.shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError
from spin_ray.pipeline.ray_connect import live_recorded_head

# Seconds Ray's processes get to exit after ray.shutdown before they are terminated (then killed).
REAP_GRACE_S = 3.0


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
