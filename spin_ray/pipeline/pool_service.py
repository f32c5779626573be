"""One fitter pool shared by every data-parallel trainer worker: the pool in an actor, a client per worker.

FitterPool is not thread-safe and has one owner, so with train.workers > 1 it lives in one Ray actor
(`PoolService`, one call at a time, named per run) and every worker holds a `PoolClient`, which has
the part of FitterPool's interface that `AsyncFits` uses (submit, poll, resize, metrics). Submits are
`.remote()` calls the worker does not wait for; the pool's in-flight and pending limits therefore
hold across all workers, and each worker keeps at most pipeline.submits_in_transit submits on their
way to the service, so a busy service cannot grow an unbounded queue of calls in front of it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError
from spin_ray.fitting.canonical_fits import SampleStarts
from spin_ray.pipeline.pool import REPORTS_KEPT, FitterPool, PoolMetrics
from spin_ray.pipeline.ray_errors import cause_line as _cause
from spin_ray.pipeline.ray_errors import spin_error
from spin_ray.pipeline.requests import FitReport, FitRequest

log = logging.getLogger(__name__)

# Request ids remembered to route reports back to the worker that submitted them. Dropped requests
# never report, so the map is bounded instead of cleaned: old entries only lose their routing.
OWNERS_KEPT = 16 * REPORTS_KEPT
# Seconds a worker waits for the service to answer a metrics call.
METRICS_TIMEOUT_S = 30.0


def pool_service_name(run: str) -> str:
    """The Ray name of a run's shared pool service (in namespace pipeline.ray_namespace), from its config name."""
    return f"fitter-pool:{run}"


class PoolService:
    """The run's FitterPool in an actor of its own; wrap with ray.remote(max_concurrency=1)."""

    def __init__(self, cfg: RunConfig) -> None:
        from spin_ray.body.body_model import BodyModel
        from spin_ray.store.fit_store import FitStore

        body = BodyModel.from_config(cfg.body)
        with FitStore.from_config(cfg.store, body.identity) as store:  # opens (or checks) the namespace
            address = store.address
        self._pool = FitterPool(cfg, address, name=f"fitters:{cfg.name}")
        self._owner: OrderedDict[int, int] = OrderedDict()
        self._reports: dict[int, deque[FitReport]] = {}
        self._submitted_by: dict[int, int] = {}
        self._fitted_by: dict[int, int] = {}

    def ping(self) -> int:
        """Fitters in the pool (the service is up once this answers)."""
        return self._pool.metrics().num_fitters

    def submit(self, request: FitRequest, rank: int) -> bool:
        """FitterPool.submit for worker `rank`; its reports go to that worker's poll."""
        self._owner[request.request_id] = rank
        while len(self._owner) > OWNERS_KEPT:
            self._owner.popitem(last=False)
        self._submitted_by[rank] = self._submitted_by.get(rank, 0) + 1
        accepted = self._pool.submit(request)
        self._route(self._pool.poll())
        return accepted

    def poll(self, rank: int) -> list[FitReport]:
        """Reports of worker rank's requests finished since its last poll."""
        self._route(self._pool.poll())
        mine = self._reports.get(rank)
        if not mine:
            return []
        out = list(mine)
        mine.clear()
        return out

    def _route(self, reports: list[FitReport]) -> None:
        for report in reports:
            rank = self._owner.pop(report.request_id, None)
            if rank is None:
                continue
            self._fitted_by[rank] = self._fitted_by.get(rank, 0) + report.fitted
            self._reports.setdefault(rank, deque(maxlen=REPORTS_KEPT)).append(report)

    def resize(self, num_fitters: int) -> None:
        """FitterPool.resize."""
        self._pool.resize(num_fitters)

    def metrics(self) -> PoolMetrics:
        """FitterPool.metrics."""
        self._route(self._pool.poll())
        return self._pool.metrics()

    def by_worker(self) -> dict[str, dict[int, int]]:
        """Requests submitted and samples fitted, by worker rank."""
        self._route(self._pool.poll())
        return {"submitted": dict(self._submitted_by), "samples_fitted": dict(self._fitted_by)}

    def shutdown(self, drain_timeout_s: float) -> dict[str, Any]:
        """Let in-flight fits land (up to drain_timeout_s), stop the fitters; final metrics and per-worker counts."""
        self._pool.drain(drain_timeout_s)
        self._route(self._pool.poll())
        fitters = self._pool.metrics().num_fitters
        pool = self._pool.shutdown().model_dump()
        return {"pool": pool, "fitters_at_end": fitters,
                "by_worker": {"submitted": dict(self._submitted_by), "samples_fitted": dict(self._fitted_by)}}


def start_pool_service(cfg: RunConfig) -> ActorHandle:
    """Start the run's named pool service and wait until its fitters answer (inside a Ray session)."""
    actor_class = ray.remote(PoolService).options(
        name=pool_service_name(cfg.name), namespace=cfg.pipeline.ray_namespace,
        # Bookkeeping only: the fitters it starts reserve the CPUs and GPUs.
        num_cpus=0, max_concurrency=1, max_restarts=0,
    )
    service = actor_class.remote(cfg)
    try:
        ray.get(service.ping.remote(), timeout=cfg.pipeline.startup_timeout_s + 60.0)
    except GetTimeoutError:
        ray.kill(service, no_restart=True)
        raise PipelineError(f"the shared fitter pool of run {cfg.name} did not start within "
                            f"{cfg.pipeline.startup_timeout_s + 60:.0f} s (see `ray status`)") from None
    except RayError as err:
        ray.kill(service, no_restart=True)
        raise spin_error(err, f"the shared fitter pool of run {cfg.name} failed to start") from None
    return service


def stop_pool_service(service: ActorHandle, drain_timeout_s: float) -> dict[str, Any]:
    """Drain and stop the service's fitters, then the service; its final metrics ({} if it was already gone)."""
    try:
        return ray.get(service.shutdown.remote(drain_timeout_s), timeout=drain_timeout_s + 60.0)
    except RayError as err:
        log.warning("the shared fitter pool could not be drained and stopped cleanly: %s", _cause(err))
        return {}
    finally:
        ray.kill(service, no_restart=True)


class PoolClient:
    """A trainer worker's handle on the shared pool, with the FitterPool methods AsyncFits calls.

    Nothing here waits on the service except `metrics`, and `submit` under busy_policy block when
    pipeline.submits_in_transit submits are still on their way.
    """

    def __init__(self, service: ActorHandle, rank: int, cfg: RunConfig) -> None:
        self._service = service
        self.rank = rank
        self._pipeline = cfg.pipeline
        self._in_transit: list[ray.ObjectRef] = []
        self._poll_ref: ray.ObjectRef | None = None
        self.dropped_in_transit = 0  # submits not sent because submits_in_transit were still on their way
        self.lost_in_transit = 0  # submits the service never took (it was restarting or gone)

    @classmethod
    def connect(cls, cfg: RunConfig, rank: int) -> PoolClient:
        """The client for the run's named pool service (started by the driver)."""
        name = pool_service_name(cfg.name)
        try:
            service = ray.get_actor(name, namespace=cfg.pipeline.ray_namespace)
        except ValueError:
            raise PipelineError(f"trainer worker {rank}: no shared fitter pool named {name!r} in Ray namespace "
                                f"{cfg.pipeline.ray_namespace!r}; the launcher starts it before the workers") from None
        return cls(service, rank, cfg)

    def _settle(self) -> None:
        """Forget submits the service has taken; raise the first one it refused with an error."""
        if not self._in_transit:
            return
        done, self._in_transit = ray.wait(self._in_transit, num_returns=len(self._in_transit), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except RayActorError as err:
                self.lost_in_transit += 1
                log.warning("worker %d: a fit request was lost on its way to the pool: %s", self.rank, _cause(err))
            except RayError as err:
                raise PipelineError(f"the shared fitter pool refused a request from worker {self.rank}: "
                                    f"{_cause(err)}") from None

    def submit_predictions(self, predictions: SampleStarts) -> bool:
        """A step's predictions as a request to the shared pool (train's `FitQueue` call)."""
        return self.submit(FitRequest.from_predictions(predictions))

    def submit(self, request: FitRequest) -> bool:
        """Send a request to the shared pool without waiting for it; False if it was dropped here."""
        self._settle()
        if len(self._in_transit) >= self._pipeline.submits_in_transit:
            if self._pipeline.busy_policy == "drop":
                self.dropped_in_transit += 1
                return False
            started = time.monotonic()
            ready, _ = ray.wait(self._in_transit, num_returns=1, timeout=self._pipeline.block_timeout_s)
            if not ready:
                raise PipelineError(f"worker {self.rank}: the shared fitter pool took no request for "
                                    f"{time.monotonic() - started:.0f} s (pipeline.block_timeout_s)")
            self._settle()
        self._in_transit.append(self._service.submit.remote(request, self.rank))
        return True

    def poll(self) -> list[FitReport]:
        """Reports of this worker's requests that the last poll brought back; never waits."""
        reports: list[FitReport] = []
        if self._poll_ref is not None:
            ready, _ = ray.wait([self._poll_ref], timeout=0)
            if ready:
                ref, self._poll_ref = self._poll_ref, None
                try:
                    reports = ray.get(ref)
                except RayActorError as err:
                    log.warning("worker %d: polling the shared fitter pool failed: %s", self.rank, _cause(err))
        if self._poll_ref is None:
            self._poll_ref = self._service.poll.remote(self.rank)
        return reports

    def resize(self, num_fitters: int) -> None:
        """Resize the shared pool (rank 0 applies pipeline.fitter_schedule)."""
        self._in_transit.append(self._service.resize.remote(num_fitters))

    def metrics(self) -> PoolMetrics:
        """The shared pool's metrics (waits for the service)."""
        try:
            return ray.get(self._service.metrics.remote(), timeout=METRICS_TIMEOUT_S)
        except (GetTimeoutError, RayError) as err:
            raise PipelineError(f"worker {self.rank}: the shared fitter pool did not answer: {_cause(err)}") from None

    def flush(self, timeout_s: float) -> None:
        """Wait until the service has taken this worker's submits (at the end of training)."""
        if self._in_transit:
            ray.wait(self._in_transit, num_returns=len(self._in_transit), timeout=timeout_s)
        self._settle()

