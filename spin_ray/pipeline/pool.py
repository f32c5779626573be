"""FitterPool: the one object that owns fitter actors, in-flight limits, back-pressure and restarts.

The trainer only calls `submit`, `poll`, `set_step`, `metrics` (and `drain`/`shutdown` at the end);
it never sees an actor. Requests are sent with `ray.wait`-based bookkeeping, never through an
unbounded queue: at most `max_in_flight_per_fitter` per actor and `max_in_flight` in total are in
Ray, and at most `max_pending` more wait here. Under `busy_policy: drop` a full pool drops its oldest
queued request (the new one if nothing is queued) and `submit` never waits; under `block` it waits
for a slot. A fitter that dies is recreated (up to `max_restarts` per slot) and each request it held
is sent again once; a request lost a second time is counted lost. Every accepted request ends as
exactly one of completed, failed, dropped, lost or abandoned (at shutdown).

Not thread-safe: call it from one thread (the trainer's).

Long because the pool is one state machine (slots, requests in flight and queued, restarts, resends,
outcome counts) whose invariant, every request ends exactly once, must be readable in one place.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from pydantic import BaseModel, Field
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from spin_ray.config import RunConfig
from spin_ray.errors import ConfigError, PipelineError, StoreFullError
from spin_ray.fitting.canonical_fits import StepPredictions
from spin_ray.pipeline.fitter import HEALTH_GROUP
from spin_ray.pipeline.ray_errors import cause_line as _cause
from spin_ray.pipeline.ray_errors import remote_spin_error, spin_error
from spin_ray.pipeline.requests import FitReport, FitRequest
from spin_ray.pipeline.resources import check_placeable, fitter_request
from spin_ray.store.records import FitStoreAddress

log = logging.getLogger(__name__)

# Reports kept between two polls; older ones are only in the metrics' counts.
REPORTS_KEPT = 4096
# Longest single ray.wait while blocking or draining, so restarts and deadlines are checked often.
WAIT_SLICE_S = 1.0


class PoolMetrics(BaseModel):
    """A snapshot of the pool: sizes, request outcomes (cumulative) and recent throughput."""

    name: str
    num_fitters: int = Field(description="live fitter actors taking new requests")
    in_flight: int = Field(description="requests sent to fitters and not yet collected")
    peak_in_flight: int = Field(description="largest in_flight seen since the pool started")
    in_flight_per_fitter: dict[str, int] = Field(description="in-flight requests by fitter actor id")
    pending: int = Field(description="requests queued in the pool, waiting for a free fitter")
    submitted: int = Field(description="requests given to submit")
    completed: int = Field(description="requests whose fits came back (written or not)")
    failed: int = Field(description="requests whose fit raised (e.g. the store was unreachable)")
    dropped: int = Field(description="requests dropped by busy_policy drop")
    resubmitted: int = Field(description="requests sent again after their fitter died")
    lost: int = Field(description="requests whose fitter died twice (never sent a third time)")
    abandoned: int = Field(description="requests still queued or in flight at shutdown")
    restarts: int = Field(description="fitter actors recreated after dying")
    stale: int = Field(description="completed requests older than staleness_steps when they came back")
    current_step: int = Field(description="latest trainer step the pool knows of")
    samples_fitted: int = Field(description="samples with a finite fit, over completed requests")
    written: int = Field(description="fits that improved the store")
    fits_per_s: float = Field(description="samples fitted per second over the recent window")
    mean_error: float = Field(description="mean ranking error of fits over the recent window (NaN: none)")
    last_error: str | None = Field(None, description="the latest fitter failure, for people")


@dataclass
class _Slot:
    """A place in the pool for one fitter; it keeps its number and restart count across actor deaths."""

    number: int
    actor: ActorHandle
    actor_id: str
    generation: int = 0
    restarts: int = 0
    in_flight: int = 0
    retiring: bool = False
    dead: bool = False
    # A replacement's first ping: until it answers the slot gets no work. After a node dies, Ray can
    # place the replacement on that node before the GCS marks it dead; such a fitter dies at once, and
    # the requests re-sent to it would be counted lost although no fitter ever ran them.
    starting: ray.ObjectRef | None = None


@dataclass
class _Sent:
    request: FitRequest
    slot: _Slot
    sent_at: float


@dataclass
class _Counts:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    resubmitted: int = 0
    lost: int = 0
    abandoned: int = 0
    restarts: int = 0
    stale: int = 0
    samples_fitted: int = 0
    written: int = 0
    peak_in_flight: int = 0
    recent: deque = field(default_factory=deque)  # (time, fitted, error sum) per completed request


class _RayMetrics:
    """ray.util.metrics gauges and counters tagged by pool name; silently off where Ray cannot export them."""

    GAUGES = ("num_fitters", "in_flight", "pending", "fits_per_s", "mean_error")
    COUNTERS = ("submitted", "completed", "failed", "dropped", "resubmitted", "lost", "restarts", "stale",
                "samples_fitted", "written")

    def __init__(self, pool_name: str) -> None:
        self.tags = {"pool": pool_name}
        self.last: dict[str, int] = {}
        try:
            from ray.util import metrics

            self.gauges = {n: metrics.Gauge(f"spin_ray_fitter_pool_{n}", tag_keys=("pool",)) for n in self.GAUGES}
            self.counters = {
                n: metrics.Counter(f"spin_ray_fitter_pool_{n}_total", tag_keys=("pool",)) for n in self.COUNTERS
            }
        except Exception as err:  # noqa: BLE001 - metrics are optional; the pool must run without them
            log.debug("ray.util.metrics unavailable (%s); pool metrics only via FitterPool.metrics()", err)
            self.gauges, self.counters = {}, {}

    def publish(self, snapshot: PoolMetrics) -> None:
        """Set gauges to the snapshot and advance counters by what changed since the last publish."""
        try:
            for name, gauge in self.gauges.items():
                value = float(getattr(snapshot, name))
                if value == value:  # NaN gauges are skipped: Prometheus shows the last real value
                    gauge.set(value, tags=self.tags)
            for name, counter in self.counters.items():
                value = int(getattr(snapshot, name))
                delta = value - self.last.get(name, 0)
                if delta > 0:
                    counter.inc(delta, tags=self.tags)
                self.last[name] = value
        except Exception as err:  # noqa: BLE001
            log.debug("publishing pool metrics failed (%s); turning them off", err)
            self.gauges, self.counters = {}, {}


def import_fitter_class(path: str) -> type:
    """The fitter actor class named by pipeline.fitter_class ("module:Class")."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"pipeline.fitter_class must be 'module:Class', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"pipeline.fitter_class {path!r}: cannot import {module_name} ({err})") from None
    fitter_class = getattr(module, class_name, None)
    missing = [m for m in ("fit", "ping", "pid") if not callable(getattr(fitter_class, m, None))]
    if not isinstance(fitter_class, type) or missing:
        raise ConfigError(f"pipeline.fitter_class {path!r} is not a fitter actor class "
                          f"(needs the methods fit, ping and pid{'; missing ' + ', '.join(missing) if missing else ''})")
    return fitter_class


class FitterPool:
    """N fitter actors behind one bounded, fault-tolerant submit/poll interface."""

    def __init__(self, config: RunConfig, store: FitStoreAddress, name: str = "fitters", wait_ready: bool = True,
                 fitter_class: type | None = None):
        """Start config.pipeline.num_fitters actors of fitter_class (default: pipeline.fitter_class)."""
        if not ray.is_initialized():
            raise PipelineError("FitterPool needs a running Ray: call ray.init() (or launch the run) first")
        self.name = name
        self._config = config
        self._store = store
        self._pipeline = config.pipeline
        # Concurrency groups can only be declared in ray.remote, not in .options().
        fitter_class = fitter_class or import_fitter_class(self._pipeline.fitter_class)
        self._actor_class = ray.remote(concurrency_groups={HEALTH_GROUP: 1})(fitter_class).options(
            num_cpus=self._pipeline.fitter_num_cpus,
            num_gpus=self._pipeline.fitter_num_gpus,
            # Restarts are ours: Ray-level restarts would replay tasks behind the pool's back.
            max_restarts=0,
            max_task_retries=0,
        )
        self._slots: list[_Slot] = []
        self._next_number = 0
        self._target = 0
        self._sent: dict[ray.ObjectRef, _Sent] = {}
        self._pending: deque[FitRequest] = deque()
        self._live_ids: set[int] = set()
        self._resent_ids: set[int] = set()
        self._counts = _Counts()
        # Reports gathered by submit and drain too, handed out by the next poll (bounded: logging only).
        self._reports: deque[FitReport] = deque(maxlen=REPORTS_KEPT)
        self._step = 0
        self._started = time.monotonic()
        self._last_error: str | None = None
        # A full store refuses every write that follows: no retry can help, so the pool's user hears it.
        self._store_full: StoreFullError | None = None
        self._closed = False
        self._ray_metrics = _RayMetrics(name)
        # In seconds, before any fitter waits for what cannot come.
        check_placeable([fitter_request(config)], report_wait_s=self._pipeline.autoscaler_report_wait_s)
        self.resize(self._pipeline.num_fitters)
        if wait_ready:
            try:
                self.wait_ready(self._pipeline.startup_timeout_s)
            except PipelineError:
                self.shutdown()  # no fitter outlives a pool that failed to start
                raise

    # -- actors -------------------------------------------------------------------------------------

    def _new_actor(self, number: int, generation: int) -> tuple[ActorHandle, str]:
        actor_id = f"{self.name}-{number}.{generation}"
        return self._actor_class.remote(self._config, self._store, actor_id), actor_id

    def _add_slot(self) -> None:
        actor, actor_id = self._new_actor(self._next_number, 0)
        self._slots.append(_Slot(self._next_number, actor, actor_id))
        self._next_number += 1

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every fitter answers a ping; raise PipelineError with the cause if one cannot start."""
        slots = [s for s in self._slots if not s.dead]
        refs = [s.actor.ping.remote() for s in slots]
        try:
            ray.get(refs, timeout=timeout_s)
        except GetTimeoutError:
            raise PipelineError(
                f"pool {self.name}: fitters did not start within {timeout_s:.0f} s; the cluster may lack "
                f"{self._pipeline.fitter_num_cpus} CPU / {self._pipeline.fitter_num_gpus} GPU per fitter "
                "(see `ray status`), or raise pipeline.startup_timeout_s"
            ) from None
        except RayError as err:
            raise spin_error(err, f"pool {self.name}: a fitter failed to start") from None

    def fitter_handles(self) -> dict[str, ActorHandle]:
        """Actor handles by fitter id (for health checks and fault tests; the pool still owns them)."""
        return {s.actor_id: s.actor for s in self._slots if not s.dead}

    def resize(self, num_fitters: int) -> None:
        """Grow or shrink to num_fitters; shrinking retires fitters once their in-flight requests finish."""
        self._check_open()
        if num_fitters < 0:
            raise PipelineError(f"pool {self.name}: cannot resize to {num_fitters} fitters; use 0 or more")
        self._target = num_fitters
        active = [s for s in self._slots if not s.retiring]
        if num_fitters > len(active):
            # Cheapest growth first: take back fitters that were retiring but still hold work.
            for slot in [s for s in self._slots if s.retiring][: num_fitters - len(active)]:
                slot.retiring = False
            for _ in range(num_fitters - len([s for s in self._slots if not s.retiring])):
                self._add_slot()
        else:
            # Retire the least busy, newest fitters first so little in-flight work is waited on.
            for slot in sorted(active, key=lambda s: (s.in_flight, -s.number))[: len(active) - num_fitters]:
                slot.retiring = True
        self._retire_idle()
        self._dispatch()

    def _retire_idle(self) -> None:
        for slot in [s for s in self._slots if s.retiring and s.in_flight == 0]:
            _kill(slot.actor)
            self._slots.remove(slot)

    def _replace_dead(self) -> None:
        """Recreate each dead fitter in its slot, up to max_restarts per slot; a retiring one just goes."""
        for slot in [s for s in self._slots if s.dead]:
            _kill(slot.actor)
            if slot.retiring:
                self._slots.remove(slot)
            elif slot.restarts < self._pipeline.max_restarts:
                slot.restarts += 1
                slot.generation += 1
                slot.actor, slot.actor_id = self._new_actor(slot.number, slot.generation)
                slot.starting = slot.actor.ping.remote()
                slot.dead = False
                self._counts.restarts += 1
                log.warning("pool %s: fitter slot %d died; restarted as %s", self.name, slot.number, slot.actor_id)
            else:
                self._slots.remove(slot)
                self._last_error = (
                    f"fitter slot {slot.number} died after {slot.restarts} restarts (pipeline.max_restarts); "
                    f"the pool runs with {len(self._slots)} fitters. Last failure: {self._last_error}"
                )
                log.error("pool %s: %s", self.name, self._last_error)

    # -- requests -----------------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Tell the pool the trainer's current step (results older than staleness_steps count stale)."""
        self._step = max(self._step, int(step))

    def submit_predictions(self, predictions: StepPredictions) -> bool:
        """A step's predictions as a request (train's `FitQueue` call); False if dropped at once."""
        return self.submit(FitRequest.from_predictions(predictions))

    def submit(self, request: FitRequest) -> bool:
        """Hand a request to the pool; False if it was dropped at once (drop policy, full, no queue)."""
        self._check_open()
        if not isinstance(request, FitRequest):
            raise PipelineError(f"pool {self.name}: submit takes a FitRequest, got {type(request).__name__}")
        if request.request_id in self._live_ids:
            raise PipelineError(
                f"pool {self.name}: request {request.request_id} is already queued or in flight; "
                "give each request its own id (FitRequest.build draws one)"
            )
        self.set_step(request.step)
        self._collect(timeout_s=0.0)  # not poll(): its reports stay for the caller's next poll
        self._require_fitters()
        self._require_store_room()
        if self._pipeline.busy_policy == "block":
            self._wait_for_room()  # may raise: the request then was never taken, so it is not counted
        self._counts.submitted += 1
        self._live_ids.add(request.request_id)
        self._pending.append(request)
        self._dispatch()
        if self._pipeline.busy_policy == "block":
            self._publish()
            return True
        limit = self._max_pending()
        accepted = True
        while len(self._pending) > limit:
            dropped = self._pending.popleft()
            accepted = accepted and dropped is not request
            self._finish(dropped.request_id)
            self._counts.dropped += 1
        self._publish()
        return accepted

    def poll(self) -> list[FitReport]:
        """Collect finished requests without waiting, restart dead fitters, send queued requests.

        Returns the reports of every request finished since the last poll, including those that
        submit or drain collected.
        """
        self._check_open()
        self._collect(timeout_s=0.0)
        self._publish()
        self._require_store_room()
        reports = list(self._reports)
        self._reports.clear()
        return reports

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or in flight (True), or timeout_s passes (False)."""
        self._check_open()
        deadline = time.monotonic() + timeout_s
        self._collect(timeout_s=0.0)
        while self._sent or self._pending:
            remaining = deadline - time.monotonic()
            starting = any(slot.starting is not None for slot in self._slots)
            if remaining <= 0 or not (self._sent or starting):  # queued work but no fitter to take it
                self._publish()
                return False
            self._collect(timeout_s=min(remaining, WAIT_SLICE_S), at_least_one=True)
            self._require_store_room()
        self._publish()
        return True

    def _wait_for_room(self) -> None:
        """Block until a fitter can take one more request than is already queued (busy_policy block)."""
        deadline = time.monotonic() + self._pipeline.block_timeout_s
        while self._free_capacity() <= len(self._pending):
            self._require_fitters()
            self._require_store_room()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PipelineError(
                    f"pool {self.name}: waited {self._pipeline.block_timeout_s:.0f} s for a free fitter "
                    f"({len(self._sent)} requests in flight); fitters may be stuck. Raise "
                    "pipeline.block_timeout_s, add fitters, or use busy_policy: drop"
                )
            self._collect(timeout_s=min(remaining, WAIT_SLICE_S), at_least_one=True)

    def _collect(self, timeout_s: float, at_least_one: bool = False) -> None:
        """Gather finished requests (waiting up to timeout_s for one if at_least_one), then repair and refill."""
        # A replacement answering its first ping is an event too: queued work may go to it.
        refs = list(self._sent) + [s.starting for s in self._slots if s.starting is not None]
        if refs:
            num_returns = 1 if at_least_one else len(refs)
            ready, _ = ray.wait(refs, num_returns=num_returns, timeout=timeout_s)
            if at_least_one and ready:
                # One is done: take every other one that is done too, without waiting.
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                sent = self._sent.pop(ref, None)
                if sent is None:  # a starting ping (see _check_starting), or already lost with its fitter
                    continue
                sent.slot.in_flight -= 1
                try:
                    report = ray.get(ref)
                except RayActorError as err:
                    self._fitter_died(sent, err)
                except RayError as err:
                    self._counts.failed += 1
                    self._last_error = f"{sent.slot.actor_id}: request {sent.request.request_id}: {_cause(err)}"
                    log.warning("pool %s: %s", self.name, self._last_error)
                    self._finish(sent.request.request_id)
                    if isinstance(remote := remote_spin_error(err), StoreFullError):
                        self._store_full = self._store_full or remote
                else:
                    self._record(report)
        self._check_starting()
        self._replace_dead()
        self._retire_idle()
        self._dispatch()

    def _check_starting(self) -> None:
        """Let replacements that answered their first ping take work; one that died before answering is replaced."""
        for slot in [s for s in self._slots if s.starting is not None]:
            ready, _ = ray.wait([slot.starting], timeout=0)
            if not ready:
                continue
            try:
                ray.get(slot.starting)
            except RayError as err:
                slot.dead = True
                self._last_error = f"replacement fitter {slot.actor_id} died before it started: {_cause(err)}"
                log.warning("pool %s: %s", self.name, self._last_error)
            slot.starting = None

    def _fitter_died(self, sent: _Sent, err: RayActorError) -> None:
        """Mark the fitter dead and send each request it held again, once."""
        slot = sent.slot
        slot.dead = True
        self._last_error = f"fitter {slot.actor_id} died: {_cause(err)}"
        log.warning("pool %s: %s", self.name, self._last_error)
        # Everything else the dead actor held is lost too; take it now instead of waiting for each error.
        held = [sent]
        for ref in [r for r, s in self._sent.items() if s.slot is slot]:
            held.append(self._sent.pop(ref))
            slot.in_flight -= 1
        held.sort(key=lambda s: s.sent_at)
        for lost in reversed(held):  # appendleft: keep the original order at the queue's head
            request = lost.request
            if request.request_id in self._resent_ids:
                self._counts.lost += 1
                self._finish(request.request_id)
            else:
                self._resent_ids.add(request.request_id)
                self._counts.resubmitted += 1
                self._pending.appendleft(request)

    def _record(self, report: FitReport) -> None:
        counts = self._counts
        counts.completed += 1
        counts.samples_fitted += report.fitted
        counts.written += report.written
        if report.step < self._step - self._pipeline.staleness_steps:
            counts.stale += 1
        error_sum = report.mean_error * report.fitted if report.fitted else 0.0
        counts.recent.append((time.monotonic(), report.fitted, error_sum))
        self._reports.append(report)
        self._finish(report.request_id)

    def _finish(self, request_id: int) -> None:
        self._live_ids.discard(request_id)
        self._resent_ids.discard(request_id)

    def _dispatch(self) -> None:
        """Send queued requests, oldest first, to the least busy fitters while limits allow."""
        while self._pending and self._free_capacity() > 0:
            slot = min(self._active(), key=lambda s: s.in_flight)
            request = self._pending.popleft()
            ref = slot.actor.fit.remote(request)
            self._sent[ref] = _Sent(request, slot, time.monotonic())
            slot.in_flight += 1
            self._counts.peak_in_flight = max(self._counts.peak_in_flight, len(self._sent))

    # -- limits -------------------------------------------------------------------------------------

    def _active(self) -> list[_Slot]:
        """Fitters that take new work: alive, not retiring, and (replacements) answered once."""
        return [s for s in self._slots if not s.retiring and not s.dead and s.starting is None]

    def max_in_flight(self) -> int:
        """The current bound on requests in flight over the whole pool."""
        if self._pipeline.max_in_flight is not None:
            return self._pipeline.max_in_flight
        return self._target * self._pipeline.max_in_flight_per_fitter

    def _max_pending(self) -> int:
        return self.max_in_flight() if self._pipeline.max_pending is None else self._pipeline.max_pending

    def _free_capacity(self) -> int:
        per_fitter = sum(max(0, self._pipeline.max_in_flight_per_fitter - s.in_flight) for s in self._active())
        return max(0, min(per_fitter, self.max_in_flight() - len(self._sent)))

    def _require_store_room(self) -> None:
        """Raise the store's StoreFullError once a fitter met it: every later write would be refused too."""
        if self._store_full is not None:
            raise self._store_full

    def _require_fitters(self) -> None:
        if self._target > 0 and not any(not s.retiring and not s.dead for s in self._slots):
            raise PipelineError(
                f"pool {self.name}: no fitter is left (each slot died more than pipeline.max_restarts="
                f"{self._pipeline.max_restarts} times). Last failure: {self._last_error}"
            )

    # -- metrics and shutdown -----------------------------------------------------------------------

    def metrics(self) -> PoolMetrics:
        """A snapshot of sizes, outcomes and recent throughput."""
        counts = self._counts
        now = time.monotonic()
        window = self._pipeline.metrics_window_s
        while counts.recent and counts.recent[0][0] < now - window:
            counts.recent.popleft()
        fitted = sum(r[1] for r in counts.recent)
        error_sum = sum(r[2] for r in counts.recent)
        span = max(min(window, now - self._started), 1e-9)
        per_fitter = {s.actor_id: s.in_flight for s in self._slots}
        return PoolMetrics(
            name=self.name,
            num_fitters=len(self._active()),
            in_flight=len(self._sent),
            peak_in_flight=counts.peak_in_flight,
            in_flight_per_fitter=per_fitter,
            pending=len(self._pending),
            submitted=counts.submitted,
            completed=counts.completed,
            failed=counts.failed,
            dropped=counts.dropped,
            resubmitted=counts.resubmitted,
            lost=counts.lost,
            abandoned=counts.abandoned,
            restarts=counts.restarts,
            stale=counts.stale,
            current_step=self._step,
            samples_fitted=counts.samples_fitted,
            written=counts.written,
            fits_per_s=fitted / span,
            mean_error=error_sum / fitted if fitted else float("nan"),
            last_error=self._last_error,
        )

    @property
    def exports_ray_metrics(self) -> bool:
        """True when the pool's metrics also go to ray.util.metrics (Prometheus, Ray dashboard)."""
        return bool(self._ray_metrics.gauges or self._ray_metrics.counters)

    def _publish(self) -> None:
        if self.exports_ray_metrics:
            self._ray_metrics.publish(self.metrics())

    def shutdown(self, drain_timeout_s: float = 0.0) -> PoolMetrics:
        """Optionally drain, then kill every fitter; what is still queued or in flight counts abandoned."""
        if self._closed:
            return self.metrics()
        if drain_timeout_s > 0:
            self.drain(drain_timeout_s)
        self._counts.abandoned += len(self._sent) + len(self._pending)
        self._sent.clear()
        self._pending.clear()
        self._live_ids.clear()
        self._resent_ids.clear()
        for slot in self._slots:
            _kill(slot.actor)
        self._slots.clear()
        self._target = 0
        self._publish()
        self._closed = True
        return self.metrics()

    def _check_open(self) -> None:
        if self._closed:
            raise PipelineError(f"pool {self.name} was shut down; create a new FitterPool")

    def __enter__(self) -> FitterPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def _kill(actor: ActorHandle) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except (RayError, ValueError):  # already gone
        pass

