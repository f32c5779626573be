"""StandinPool: the real FitterPool (bounds, back-pressure, restarts) driving cost-model stand-in fitters.

Only the actor class differs: dispatch, in-flight bounds, replacement of a dead fitter (which gets
work only once it has answered its first ping) and re-submission are the pool's own code. What this
adds is the torch-free wire form of requests and the stand-in's cost model (GPU-seconds per batch).
"""

from __future__ import annotations

import ray

from spin_ray.config import RunConfig
from spin_ray.pipeline.pool import FitterPool
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.records import FitStoreAddress
from spin_ray_sim.standin import DEFAULT_GPU_S_PER_BATCH, request_from_wire, request_to_wire, standin_fitter_class


def register_wire_format() -> None:
    """Ship FitRequests from this process in the torch-free wire form (real fitters still get FitRequests)."""
    ray.util.register_serializer(FitRequest, serializer=request_to_wire, deserializer=request_from_wire)


class StandinPool(FitterPool):
    """A FitterPool whose fitters are StandinFitter actors with the config's CPU and GPU requests."""

    def __init__(self, config: RunConfig, store: FitStoreAddress, name: str = "standins", wait_ready: bool = True,
                 gpu_s_per_batch: float = DEFAULT_GPU_S_PER_BATCH):
        """Start the config's fitters as stand-ins whose cost model takes gpu_s_per_batch GPU-seconds a batch."""
        register_wire_format()
        self.gpu_s_per_batch = gpu_s_per_batch
        super().__init__(config, store, name=name, wait_ready=wait_ready,
                         fitter_class=standin_fitter_class(gpu_s_per_batch))
