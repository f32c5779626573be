"""What the pool expects of a fitter actor class (pipeline.fitter_class): fit, ping and pid, and the report.

Optionally `fit_many(requests) -> reports`, one report a request: the pool then sends a fitter the requests
that queued for it as one call, up to pipeline.fitter_batch_size samples (FitterActor's `fit` is its
`fit_many` of one, so a subclass changes `fit_many`); a class without it gets one request a call.

Torch-free on purpose: any fitter class may build on it without paying for torch in its process.
`FitterHealth` gives a class the pool's ping and pid (in their own Ray concurrency group, so they
answer while a fit runs); `report_fields` is the one place a fitter's report is computed from a
request and its errors.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import numpy as np
import ray

from spin_ray.config import PipelineConfig
from spin_ray.errors import ConfigError

# Ray concurrency group of ping and pid: they answer while a fit runs (fits stay one at a time).
HEALTH_GROUP = "health"


class FitterHealth:
    """ping and pid of a fitter actor with an `actor_id`; the pool calls them to see it is up and whose it is."""

    actor_id: str

    @ray.method(concurrency_group=HEALTH_GROUP)
    def ping(self) -> str:
        """This fitter's id, once it is ready to fit."""
        return self.actor_id

    @ray.method(concurrency_group=HEALTH_GROUP)
    def pid(self) -> int:
        """The process id of this fitter (for fault tests and operators)."""
        return os.getpid()


def report_fields(request: Any, error: np.ndarray, written: int, actor_id: str, start: float,
                  cpu_start: float) -> dict[str, Any]:
    """A FitReport's fields for `request` fitted with per-sample `error` (inf: failed) since perf_counter `start`."""
    finite = np.isfinite(error)
    fitted = int(finite.sum())
    return {
        "request_id": request.request_id,
        "step": request.step,
        "batch_size": request.batch_size,
        "fitted": fitted,
        "written": int(written),
        "failed": request.batch_size - fitted,
        "mean_error": float(error[finite].mean()) if fitted else float("nan"),
        "elapsed_s": time.perf_counter() - start,
        "actor_id": actor_id,
        "cpu_s": time.process_time() - cpu_start,
    }


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


def fitter_actor_class(pipeline: PipelineConfig, fitter_class: type | None = None) -> Any:
    """The Ray actor class of fitter_class (default: pipeline.fitter_class) with the pool's resources and groups."""
    # Concurrency groups can only be declared in ray.remote, not in .options().
    fitter_class = fitter_class or import_fitter_class(pipeline.fitter_class)
    return ray.remote(concurrency_groups={HEALTH_GROUP: 1})(fitter_class).options(
        num_cpus=pipeline.fitter_num_cpus,
        num_gpus=pipeline.fitter_num_gpus,
        # Restarts are the pool's: Ray-level restarts would replay tasks behind its back.
        max_restarts=0,
        max_task_retries=0,
    )
