"""A fitter stand-in whose compute is a cost model: it sleeps for the GPU time SMPLify would take, then writes.

`StandinFitter` answers the same calls as `FitterActor` (`fit`, `ping`, `pid`) and writes one
keep-best record per sample, so a pool of them loads Ray, the request stream and the Redis fit
store exactly as real fitters would, without a GPU or a body model. Its "fit" of a sample is the
trainer's prediction, ranked by an error that falls with the trainer step, so a revisit at a later
step always improves the stored record: every sample fitted is a store write (the store's worst case).

This module must not import torch (directly or through `spin_ray.pipeline.requests`): a stand-in
process then costs ~70 MB of private memory instead of ~300 MB, which is what lets 64 of them run on one
small machine.
Requests reach it in a wire form (`request_to_wire`/`request_from_wire`, registered as Ray's
serializer for `FitRequest` by `StandinPool`); a process that has imported the real request module
(a real fitter) still gets a real `FitRequest` from the same bytes.
The cost model's GPU time per batch is the stand-in's own setting (`StandinFitter.gpu_s_per_batch`,
changed with `standin_fitter_class`), not product config.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import ray

from spin_ray.config import PipelineConfig, RunConfig
from spin_ray.errors import PipelineError
from spin_ray.pipeline.fitter_protocol import HEALTH_GROUP, FitterHealth, report_fields
from spin_ray.store.fit_store import FitStore
from spin_ray.store.records import FitStoreAddress

REQUESTS_MODULE = "spin_ray.pipeline.requests"
# GPU-seconds one SMPLify batch of fitting.batch_size takes on a whole GPU: an assumption
# (~100 Adam steps at ~2.5 ms each), see benchmarks/SCALING.md.
DEFAULT_GPU_S_PER_BATCH = 0.25
# Error of a stand-in fit made at trainer step s: ERROR_START / (1 + s), strictly falling with s.
ERROR_START = 100.0
REQUEST_FIELDS = ("request_id", "step", "datasets", "dataset_code", "indices", "pose", "betas", "camera_t",
                  "keypoints", "aug")


def standin_seconds_per_request(pipeline: PipelineConfig, batch_size: int, fit_batch_size: int,
                                gpu_s_per_batch: float = DEFAULT_GPU_S_PER_BATCH) -> float:
    """Wall seconds a stand-in takes for a request: GPU time of the batch over the fitter's GPU share."""
    # Processes sharing a GPU without MPS are time-sliced: a 0.25-GPU fitter gets a quarter of its time.
    share = min(pipeline.fitter_num_gpus, 1.0) if pipeline.fitter_num_gpus > 0 else 1.0
    return gpu_s_per_batch * (batch_size / fit_batch_size) / share


def standin_error(step: int) -> float:
    """The ranking error a stand-in gives the fits it makes at trainer step `step`."""
    return ERROR_START / (1.0 + step)


@dataclass(frozen=True, eq=False)
class WireRequest:
    """A FitRequest's fields as a stand-in receives them, without the torch-importing request module."""

    request_id: int
    step: int
    datasets: tuple[str, ...]
    dataset_code: np.ndarray
    indices: np.ndarray
    pose: np.ndarray
    betas: np.ndarray
    camera_t: np.ndarray
    keypoints: np.ndarray
    aug: np.ndarray

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return int(self.indices.shape[0])

    @property
    def row_datasets(self) -> np.ndarray:
        """(B,) the dataset name of each row."""
        return np.asarray(self.datasets, dtype=object)[self.dataset_code]


def request_to_wire(request: Any) -> dict[str, Any]:
    """The fields of a FitRequest as a dict of plain values and numpy arrays (Ray ships arrays zero-copy)."""
    return {name: getattr(request, name) for name in REQUEST_FIELDS}


def request_from_wire(wire: dict[str, Any]) -> Any:
    """A real FitRequest where its module is already imported (a real fitter), else a WireRequest."""
    module = sys.modules.get(REQUESTS_MODULE)
    if module is not None:
        return module.FitRequest(**wire)
    return WireRequest(**wire)


@dataclass(frozen=True)
class StandinReport:
    """A FitReport's fields; it unpickles as a real FitReport wherever the request module is imported."""

    request_id: int
    step: int
    batch_size: int
    fitted: int
    written: int
    failed: int
    mean_error: float
    elapsed_s: float
    actor_id: str
    cpu_s: float = float("nan")

    def __reduce__(self) -> tuple:
        return report_from_wire, (asdict(self),)


def report_from_wire(wire: dict[str, Any]) -> Any:
    """A real FitReport where its module is already imported (the pool's process), else a StandinReport."""
    module = sys.modules.get(REQUESTS_MODULE)
    if module is not None:
        known = {f.name for f in fields(module.FitReport)}
        return module.FitReport(**{k: v for k, v in wire.items() if k in known})
    return StandinReport(**wire)


class StandinFitter(FitterHealth):
    """One stand-in fitter process: sleeps for the cost model's time per request, then keep-best writes."""

    gpu_s_per_batch: float = DEFAULT_GPU_S_PER_BATCH

    def __init__(self, config: RunConfig, store: FitStoreAddress, actor_id: str) -> None:
        if store.body_model_hash is None:
            raise PipelineError(
                f"stand-in fitter {actor_id}: the fit-store address for namespace {store.namespace!r} has no "
                "body-model hash, so it is read-only; pass FitStoreAddress(..., body_model_hash=...)"
            )
        self.actor_id = actor_id
        self.pipeline = config.pipeline
        self.fit_batch_size = config.fitting.batch_size
        self.store = FitStore(store)

    def fit(self, request: WireRequest) -> StandinReport:
        """Wait the cost model's time, write the prediction of every sample as its fit, report."""
        start, cpu_start = time.perf_counter(), time.process_time()
        time.sleep(standin_seconds_per_request(self.pipeline, request.batch_size, self.fit_batch_size,
                                               self.gpu_s_per_batch))
        error = np.full(request.batch_size, standin_error(request.step))
        written = int(self.store.keep_best_samples(request.row_datasets, request.indices, request.pose,
                                                   request.betas, error, request.step, "loop").sum())
        return StandinReport(**report_fields(request, error, written, self.actor_id, start, cpu_start))

    @ray.method(concurrency_group=HEALTH_GROUP)
    def node_id(self) -> str:
        """The Ray node this fitter runs on (for node-failure tests)."""
        return ray.get_runtime_context().get_node_id()


def standin_fitter_class(gpu_s_per_batch: float = DEFAULT_GPU_S_PER_BATCH) -> type[StandinFitter]:
    """StandinFitter, or a subclass of it whose cost model takes gpu_s_per_batch GPU-seconds per batch."""
    if not gpu_s_per_batch > 0:
        raise PipelineError(f"stand-in cost model: gpu_s_per_batch must be > 0 GPU-seconds, got {gpu_s_per_batch}")
    if gpu_s_per_batch == StandinFitter.gpu_s_per_batch:
        return StandinFitter
    # Made here, so Ray ships it by value; its base is imported by name in the stand-in processes.
    return type("CostModelStandinFitter", (StandinFitter,), {"gpu_s_per_batch": gpu_s_per_batch})
