"""Slow real fitters for tests and benchmarks: SMPLify as FitterActor runs it, after a fixed sleep per request.

Name one in `pipeline.fitter_class` ("spin_ray_sim.fitters:BusyFitter") where the pool is built from
config (inside a trainer actor), or pass `slow_fitter_class(delay_s)` to `FitterPool(..., fitter_class=)`.
"""

from __future__ import annotations

import time

from spin_ray.errors import PipelineError
from spin_ray.pipeline.fitter import FitterActor
from spin_ray.pipeline.requests import FitReport, FitRequest


class SlowFitter(FitterActor):
    """A FitterActor that sleeps delay_s before each fit: holds requests in flight long enough to observe."""

    delay_s: float = 0.0

    def fit_many(self, requests: list[FitRequest]) -> list[FitReport]:
        """Sleep delay_s (once a call: `fit` comes here too), then fit as FitterActor does."""
        time.sleep(self.delay_s)
        return super().fit_many(requests)


class BusyFitter(SlowFitter):
    """Ten seconds a request: far slower than a trainer step, so a trainer that waited for it would crawl."""

    delay_s = 10.0


class StalledFitter(SlowFitter):
    """Ten minutes a request: a fitter that never finishes while a benchmark runs, so the pool stays full."""

    delay_s = 600.0


def slow_fitter_class(delay_s: float) -> type[SlowFitter]:
    """A SlowFitter subclass that sleeps delay_s seconds before each fit."""
    if not delay_s >= 0:
        raise PipelineError(f"slow fitter: delay_s must be >= 0 seconds, got {delay_s}")
    # Made here, so Ray ships it by value; its base is imported by name in the fitter processes.
    return type(f"SlowFitter{round(delay_s * 1000)}ms", (SlowFitter,), {"delay_s": float(delay_s)})
