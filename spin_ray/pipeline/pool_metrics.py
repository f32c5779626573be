"""The fitter pool's numbers: request outcomes counted as they happen, a snapshot for people, Ray's gauges.

`PoolCounts` is what FitterPool adds to as requests end; `PoolCounts.snapshot` turns it and the
pool's live sizes into a `PoolMetrics`; `RayMetrics` exports snapshots through ray.util.metrics.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

log = logging.getLogger("spin_ray.pipeline.pool")


class PoolMetrics(BaseModel):
    """A snapshot of the pool: sizes, request outcomes (cumulative) and recent throughput."""

    name: str
    num_fitters: int = Field(description="live fitter actors taking new requests")
    in_flight: int = Field(description="requests sent to fitters and not yet collected")
    peak_in_flight: int = Field(description="largest in_flight seen since the pool started")
    in_flight_per_fitter: dict[str, int] = Field(description="in-flight requests by fitter actor id")
    in_flight_samples: int = Field(0, description="samples of the in-flight requests (a fitter call fits up to "
                                                  "pipeline.fitter_batch_size of them together)")
    fitter_calls: int = Field(0, description="fitter calls sent; fewer than the requests sent where queued requests "
                                             "were fitted together")
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
class PoolCounts:
    """Cumulative request outcomes of one pool, and the recent window of completed requests."""

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
    fitter_calls: int = 0
    recent: deque = field(default_factory=deque)  # (time, fitted, error sum) per completed request

    def record(self, report: Any, stale: bool) -> None:
        """A request came back with `report` (a FitReport); stale if older than staleness_steps."""
        self.completed += 1
        self.samples_fitted += report.fitted
        self.written += report.written
        self.stale += int(stale)
        error_sum = report.mean_error * report.fitted if report.fitted else 0.0
        self.recent.append((time.monotonic(), report.fitted, error_sum))

    def snapshot(self, name: str, window_s: float, started: float, **live: Any) -> PoolMetrics:
        """PoolMetrics of these counts over the last window_s seconds, with the pool's `live` sizes and state."""
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - window_s:
            self.recent.popleft()
        fitted = sum(r[1] for r in self.recent)
        error_sum = sum(r[2] for r in self.recent)
        span = max(min(window_s, now - started), 1e-9)
        counts = {k: getattr(self, k) for k in ("submitted", "completed", "failed", "dropped", "resubmitted", "lost",
                                                "abandoned", "restarts", "stale", "samples_fitted", "written",
                                                "peak_in_flight", "fitter_calls")}
        return PoolMetrics(name=name, **counts, **live, fits_per_s=fitted / span,
                           mean_error=error_sum / fitted if fitted else float("nan"))


class RayMetrics:
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

    @property
    def exporting(self) -> bool:
        """True while the metrics go to ray.util.metrics (Prometheus, Ray dashboard)."""
        return bool(self.gauges or self.counters)

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
