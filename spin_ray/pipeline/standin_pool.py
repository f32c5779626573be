"""StandinPool: the real FitterPool (bounds, back-pressure, restarts) driving cost-model stand-in fitters.

Only the actor class differs: dispatch, in-flight bounds, replacement of a dead fitter (which gets
work only once it has answered its first ping) and re-submission are the pool's own code.
"""

from __future__ import annotations

import ray

from spin_ray.config import RunConfig
from spin_ray.pipeline.pool import FitterPool
from spin_ray.pipeline.requests import FitRequest
from spin_ray.pipeline.standin import StandinFitter, request_from_wire, request_to_wire
from spin_ray.store.records import FitStoreAddress


def register_wire_format() -> None:
    """Ship FitRequests from this process in the torch-free wire form (real fitters still get FitRequests)."""
    ray.util.register_serializer(FitRequest, serializer=request_to_wire, deserializer=request_from_wire)


class StandinPool(FitterPool):
    """A FitterPool whose fitters are StandinFitter actors with the config's CPU and GPU requests."""

    def __init__(self, config: RunConfig, store: FitStoreAddress, name: str = "standins", wait_ready: bool = True):
        register_wire_format()
        super().__init__(config, store, name=name, wait_ready=wait_ready, fitter_class=StandinFitter)
