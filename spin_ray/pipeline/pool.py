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
The actors themselves (start, retire, replace) are pipeline/fitter_slots.py's; the pool's numbers
(PoolMetrics, the outcome counts, Ray's gauges) are pipeline/pool_metrics.py's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError, StoreFullError
from spin_ray.fitting.canonical_fits import SampleStarts
from spin_ray.pipeline.fitter_protocol import fitter_actor_class, import_fitter_class
from spin_ray.pipeline.fitter_slots import FitterSlots, Slot
from spin_ray.pipeline.pool_metrics import PoolCounts, PoolMetrics, RayMetrics
from spin_ray.pipeline.ray_errors import cause_line as _cause
from spin_ray.pipeline.ray_errors import remote_spin_error
from spin_ray.pipeline.requests import FitReport, FitRequest
from spin_ray.pipeline.resources import check_placeable, fitter_request
from spin_ray.store.records import FitStoreAddress

log = logging.getLogger(__name__)

# Reports kept between two polls; older ones are only in the metrics' counts.
REPORTS_KEPT = 4096
# Longest single ray.wait while blocking or draining, so restarts and deadlines are checked often.
WAIT_SLICE_S = 1.0


@dataclass
class _Sent:
    requests: list[FitRequest]  # one fitter call: `fit` of one request or `fit_many` of several
    slot: Slot
    sent_at: float


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
        fitter_class = fitter_class or import_fitter_class(self._pipeline.fitter_class)
        # Queued requests go to a fitter together only where its class can fit several in one call.
        self._batch_limit = self._pipeline.fitter_batch_size if hasattr(fitter_class, "fit_many") else None
        if self._pipeline.fitter_batch_size is not None and self._batch_limit is None:
            log.info("pool %s: %s has no fit_many, so pipeline.fitter_batch_size is unused: one request a call",
                     name, fitter_class.__name__)
        self._fitters = FitterSlots(fitter_actor_class(self._pipeline, fitter_class), config, store, name)
        self._target = 0
        self._sent: dict[ray.ObjectRef, _Sent] = {}
        self._pending: deque[FitRequest] = deque()
        self._live_ids: set[int] = set()
        self._resent_ids: set[int] = set()
        self._counts = PoolCounts()
        # Reports gathered by submit and drain too, handed out by the next poll (bounded: logging only).
        self._reports: deque[FitReport] = deque(maxlen=REPORTS_KEPT)
        self._step = 0
        self._started = time.monotonic()
        self._last_error: str | None = None
        # A full store refuses every write that follows: no retry can help, so the pool's user hears it.
        self._store_full: StoreFullError | None = None
        self._closed = False
        self._ray_metrics = RayMetrics(name)
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

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every fitter answers a ping; raise PipelineError with the cause if one cannot start."""
        self._fitters.wait_ready(timeout_s)

    def fitter_handles(self) -> dict[str, ActorHandle]:
        """Actor handles by fitter id (for health checks and fault tests; the pool still owns them)."""
        return self._fitters.handles()

    def resize(self, num_fitters: int) -> None:
        """Grow or shrink to num_fitters; shrinking retires fitters once their in-flight requests finish."""
        self._check_open()
        if num_fitters < 0:
            raise PipelineError(f"pool {self.name}: cannot resize to {num_fitters} fitters; use 0 or more")
        self._target = num_fitters
        self._fitters.resize(num_fitters)
        self._dispatch()

    # -- requests -----------------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Tell the pool the trainer's current step (results older than staleness_steps count stale)."""
        self._step = max(self._step, int(step))

    def submit_predictions(self, predictions: SampleStarts) -> bool:
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
            starting = bool(self._fitters.starting_pings())
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
                    f"({self._requests_in_flight()} requests in flight); fitters may be stuck. Raise "
                    "pipeline.block_timeout_s, add fitters, or use busy_policy: drop"
                )
            self._collect(timeout_s=min(remaining, WAIT_SLICE_S), at_least_one=True)

    def _collect(self, timeout_s: float, at_least_one: bool = False) -> None:
        """Gather finished requests (waiting up to timeout_s for one if at_least_one), then repair and refill."""
        # A replacement answering its first ping is an event too: queued work may go to it.
        refs = list(self._sent) + self._fitters.starting_pings()
        if refs:
            num_returns = 1 if at_least_one else len(refs)
            ready, _ = ray.wait(refs, num_returns=num_returns, timeout=timeout_s)
            if at_least_one and ready:
                # One is done: take every other one that is done too, without waiting.
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                sent = self._sent.pop(ref, None)
                if sent is None:  # a starting ping (FitterSlots.check_starting), or already lost with its fitter
                    continue
                sent.slot.in_flight -= 1
                try:
                    reports = ray.get(ref)
                except RayActorError as err:
                    self._fitter_died(sent, err)
                except RayError as err:
                    ids = ", ".join(str(r.request_id) for r in sent.requests)
                    self._counts.failed += len(sent.requests)
                    self._last_error = f"{sent.slot.actor_id}: request {ids}: {_cause(err)}"
                    log.warning("pool %s: %s", self.name, self._last_error)
                    for request in sent.requests:
                        self._finish(request.request_id)
                    if isinstance(remote := remote_spin_error(err), StoreFullError):
                        self._store_full = self._store_full or remote
                else:
                    for report in reports if isinstance(reports, list) else [reports]:
                        self._record(report)
        self._last_error = self._fitters.check_starting() or self._last_error
        restarted, self._last_error = self._fitters.replace_dead(self._last_error)
        self._counts.restarts += restarted
        self._fitters.retire_idle()
        self._dispatch()

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
        for request in reversed([r for lost in held for r in lost.requests]):  # appendleft: keep the queue's order
            if request.request_id in self._resent_ids:
                self._counts.lost += 1
                self._finish(request.request_id)
            else:
                self._resent_ids.add(request.request_id)
                self._counts.resubmitted += 1
                self._pending.appendleft(request)

    def _record(self, report: FitReport) -> None:
        self._counts.record(report, stale=report.step < self._step - self._pipeline.staleness_steps)
        self._reports.append(report)
        self._finish(report.request_id)

    def _finish(self, request_id: int) -> None:
        self._live_ids.discard(request_id)
        self._resent_ids.discard(request_id)

    def _dispatch(self) -> None:
        """Send queued requests, oldest first, to the least busy fitters while limits allow; requests queued
        together go in one call up to pipeline.fitter_batch_size samples (to a fitter class with `fit_many`)."""
        while self._pending and self._free_capacity() > 0:
            slot = min(self._fitters.active(), key=lambda s: s.in_flight)
            requests = [self._pending.popleft()]
            limit, size = self._batch_limit, requests[0].batch_size
            if limit is not None:
                while self._pending and size + self._pending[0].batch_size <= limit:
                    requests.append(self._pending.popleft())
                    size += requests[-1].batch_size
            ref = slot.actor.fit.remote(requests[0]) if len(requests) == 1 else slot.actor.fit_many.remote(requests)
            self._sent[ref] = _Sent(requests, slot, time.monotonic())
            slot.in_flight += 1
            self._counts.fitter_calls += 1
            self._counts.peak_in_flight = max(self._counts.peak_in_flight, self._requests_in_flight())

    def _requests_in_flight(self, slot: Slot | None = None) -> int:
        """Requests sent and not yet collected (of one fitter's slot, or of all); a call may carry several."""
        return sum(len(s.requests) for s in self._sent.values() if slot is None or s.slot is slot)

    # -- limits -------------------------------------------------------------------------------------

    def max_in_flight(self) -> int:
        """The current bound on requests in flight over the whole pool."""
        if self._pipeline.max_in_flight is not None:
            return self._pipeline.max_in_flight
        return self._target * self._pipeline.max_in_flight_per_fitter

    def _max_pending(self) -> int:
        return self.max_in_flight() if self._pipeline.max_pending is None else self._pipeline.max_pending

    def _free_capacity(self) -> int:
        per_fitter = sum(max(0, self._pipeline.max_in_flight_per_fitter - s.in_flight) for s in self._fitters.active())
        return max(0, min(per_fitter, self.max_in_flight() - len(self._sent)))

    def _require_store_room(self) -> None:
        """Raise the store's StoreFullError once a fitter met it: every later write would be refused too."""
        if self._store_full is not None:
            raise self._store_full

    def _require_fitters(self) -> None:
        if self._target > 0 and not self._fitters.any_left():
            raise PipelineError(
                f"pool {self.name}: no fitter is left (each slot died more than pipeline.max_restarts="
                f"{self._pipeline.max_restarts} times). Last failure: {self._last_error}"
            )

    # -- metrics and shutdown -----------------------------------------------------------------------

    def metrics(self) -> PoolMetrics:
        """A snapshot of sizes, outcomes and recent throughput."""
        return self._counts.snapshot(
            self.name, self._pipeline.metrics_window_s, self._started, num_fitters=len(self._fitters.active()),
            in_flight=self._requests_in_flight(),
            in_flight_samples=sum(r.batch_size for s in self._sent.values() for r in s.requests),
            in_flight_per_fitter={s.actor_id: self._requests_in_flight(s) for s in self._fitters.slots},
            pending=len(self._pending), current_step=self._step, last_error=self._last_error)

    @property
    def exports_ray_metrics(self) -> bool:
        """True when the pool's metrics also go to ray.util.metrics (Prometheus, Ray dashboard)."""
        return self._ray_metrics.exporting

    def _publish(self) -> None:
        if self.exports_ray_metrics:
            self._ray_metrics.publish(self.metrics())

    def shutdown(self, drain_timeout_s: float = 0.0) -> PoolMetrics:
        """Optionally drain, then kill every fitter; what is still queued or in flight counts abandoned."""
        if self._closed:
            return self.metrics()
        if drain_timeout_s > 0:
            self.drain(drain_timeout_s)
        self._counts.abandoned += self._requests_in_flight() + len(self._pending)
        self._sent.clear()
        self._pending.clear()
        self._live_ids.clear()
        self._resent_ids.clear()
        self._fitters.stop()
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
