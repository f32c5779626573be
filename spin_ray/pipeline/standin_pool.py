"""StandinPool: the real FitterPool (bounds, back-pressure, restarts) driving cost-model stand-in fitters.

Until FitterPool takes an actor class, this subclass swaps the actor that `_new_actor` creates;
everything else (dispatch, in-flight bounds, re-submission after a fitter dies) is the pool's own code.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from spin_ray.config import RunConfig
from spin_ray.pipeline.pool import FitterPool
from spin_ray.pipeline.requests import FitRequest
from spin_ray.pipeline.standin import HEALTH_GROUP, StandinFitter, request_from_wire, request_to_wire
from spin_ray.store.records import FitStoreAddress

log = logging.getLogger(__name__)


def register_wire_format() -> None:
    """Ship FitRequests from this process in the torch-free wire form (real fitters still get FitRequests)."""
    ray.util.register_serializer(FitRequest, serializer=request_to_wire, deserializer=request_from_wire)


class StandinPool(FitterPool):
    """A FitterPool whose fitters are StandinFitter actors with the config's CPU and GPU requests."""

    def __init__(self, config: RunConfig, store: FitStoreAddress, name: str = "standins", wait_ready: bool = True):
        # Set before the base class starts its first fitters through _new_actor.
        self._standin_class = ray.remote(concurrency_groups={HEALTH_GROUP: 1})(StandinFitter).options(
            num_cpus=config.pipeline.fitter_num_cpus,
            num_gpus=config.pipeline.fitter_num_gpus,
            max_restarts=0,
            max_task_retries=0,
        )
        register_wire_format()
        super().__init__(config, store, name=name, wait_ready=wait_ready)

    def _new_actor(self, number: int, generation: int) -> tuple[ActorHandle, str]:
        actor_id = f"{self.name}-{number}.{generation}"
        actor = self._standin_class.remote(self._config, self._store, actor_id)
        if generation > 0:
            actor = self._until_alive(actor, number, generation)
        return actor, actor_id

    def _until_alive(self, actor: ActorHandle, number: int, generation: int) -> ActorHandle:
        """Wait for a replacement fitter to answer; recreate it while it dies before answering.

        After a node dies, the scheduler can place the replacement on that node before the GCS marks it
        dead; the base pool would then send the dead fitter's re-submitted requests to a fitter that dies
        at once, and count them lost (it re-submits once). Waiting here, within startup_timeout_s, avoids
        that at the cost of blocking the caller while a fitter restarts.
        """
        deadline = time.monotonic() + self._pipeline.startup_timeout_s
        attempts = 0
        while True:
            try:
                ray.get(actor.ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return actor
            except GetTimeoutError:
                return actor  # the base pool's own restart and drain deadlines take over
            except RayActorError:
                attempts += 1
                if time.monotonic() > deadline:
                    return actor
                log.warning("pool %s: replacement %d.%d died before it started (attempt %d); recreating",
                            self.name, number, generation, attempts)
                actor = self._standin_class.remote(self._config, self._store, f"{self.name}-{number}.{generation}")
