"""The fitter pool's actors, one per slot: started, pinged, retired when the pool shrinks, replaced when they die.

A slot keeps its number and restart count across the deaths of its actors (at most
pipeline.max_restarts replacements each). A replacement takes no work until it has answered its
first ping: after a node dies, Ray can place it on that node before the GCS marks the node dead, and
such a fitter dies at once. FitterPool owns the requests; this class owns only the actors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayError

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError
from spin_ray.pipeline.ray_errors import cause_line, spin_error
from spin_ray.store.records import FitStoreAddress

log = logging.getLogger("spin_ray.pipeline.pool")


@dataclass
class Slot:
    """A place in the pool for one fitter; it keeps its number and restart count across actor deaths."""

    number: int
    actor: ActorHandle
    actor_id: str
    generation: int = 0
    restarts: int = 0
    in_flight: int = 0
    retiring: bool = False
    dead: bool = False
    starting: ray.ObjectRef | None = None  # a replacement's first ping; until it answers the slot gets no work


class FitterSlots:
    """The actors of one pool (named `name`), made from a Ray actor class with the run's config and store."""

    def __init__(self, actor_class: Any, config: RunConfig, store: FitStoreAddress, name: str) -> None:
        self.name = name
        self.slots: list[Slot] = []
        self._actor_class = actor_class
        self._config = config
        self._store = store
        self._next_number = 0

    def _new_actor(self, number: int, generation: int) -> tuple[ActorHandle, str]:
        actor_id = f"{self.name}-{number}.{generation}"
        return self._actor_class.remote(self._config, self._store, actor_id), actor_id

    def active(self) -> list[Slot]:
        """Fitters that take new work: alive, not retiring, and (replacements) answered once."""
        return [s for s in self.slots if not s.retiring and not s.dead and s.starting is None]

    def any_left(self) -> bool:
        """Whether a fitter that is not retiring is alive (replacements still starting included)."""
        return any(not s.retiring and not s.dead for s in self.slots)

    def handles(self) -> dict[str, ActorHandle]:
        """Actor handles by fitter id, of the live fitters."""
        return {s.actor_id: s.actor for s in self.slots if not s.dead}

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every fitter answers a ping; raise PipelineError with the cause if one cannot start."""
        refs = [s.actor.ping.remote() for s in self.slots if not s.dead]
        try:
            ray.get(refs, timeout=timeout_s)
        except GetTimeoutError:
            pipeline = self._config.pipeline
            raise PipelineError(
                f"pool {self.name}: fitters did not start within {timeout_s:.0f} s; the cluster may lack "
                f"{pipeline.fitter_num_cpus} CPU / {pipeline.fitter_num_gpus} GPU per fitter "
                "(see `ray status`), or raise pipeline.startup_timeout_s"
            ) from None
        except RayError as err:
            raise spin_error(err, f"pool {self.name}: a fitter failed to start") from None

    def resize(self, num_fitters: int) -> None:
        """Grow or shrink to num_fitters; shrinking marks fitters retiring (they go once their work is done)."""
        active = [s for s in self.slots if not s.retiring]
        if num_fitters > len(active):
            # Cheapest growth first: take back fitters that were retiring but still hold work.
            for slot in [s for s in self.slots if s.retiring][: num_fitters - len(active)]:
                slot.retiring = False
            for _ in range(num_fitters - len([s for s in self.slots if not s.retiring])):
                actor, actor_id = self._new_actor(self._next_number, 0)
                self.slots.append(Slot(self._next_number, actor, actor_id))
                self._next_number += 1
        else:
            # Retire the least busy, newest fitters first so little in-flight work is waited on.
            for slot in sorted(active, key=lambda s: (s.in_flight, -s.number))[: len(active) - num_fitters]:
                slot.retiring = True
        self.retire_idle()

    def retire_idle(self) -> None:
        """Stop the retiring fitters that hold no work."""
        for slot in [s for s in self.slots if s.retiring and s.in_flight == 0]:
            kill(slot.actor)
            self.slots.remove(slot)

    def replace_dead(self, last_error: str | None) -> tuple[int, str | None]:
        """Recreate each dead fitter in its slot, up to max_restarts per slot; a retiring one just goes.

        Returns the number of fitters restarted and the pool's last error (a new one if a slot was given up).
        """
        restarted = 0
        for slot in [s for s in self.slots if s.dead]:
            kill(slot.actor)
            if slot.retiring:
                self.slots.remove(slot)
            elif slot.restarts < self._config.pipeline.max_restarts:
                slot.restarts += 1
                slot.generation += 1
                slot.actor, slot.actor_id = self._new_actor(slot.number, slot.generation)
                slot.starting = slot.actor.ping.remote()
                slot.dead = False
                restarted += 1
                log.warning("pool %s: fitter slot %d died; restarted as %s", self.name, slot.number, slot.actor_id)
            else:
                self.slots.remove(slot)
                last_error = (
                    f"fitter slot {slot.number} died after {slot.restarts} restarts (pipeline.max_restarts); "
                    f"the pool runs with {len(self.slots)} fitters. Last failure: {last_error}"
                )
                log.error("pool %s: %s", self.name, last_error)
        return restarted, last_error

    def starting_pings(self) -> list[ray.ObjectRef]:
        """The first pings of replacements that have not answered yet."""
        return [s.starting for s in self.slots if s.starting is not None]

    def check_starting(self) -> str | None:
        """Let replacements that answered their first ping take work; one that died is marked dead (its error returned)."""
        error = None
        for slot in [s for s in self.slots if s.starting is not None]:
            ready, _ = ray.wait([slot.starting], timeout=0)
            if not ready:
                continue
            try:
                ray.get(slot.starting)
            except RayError as err:
                slot.dead = True
                error = f"replacement fitter {slot.actor_id} died before it started: {cause_line(err)}"
                log.warning("pool %s: %s", self.name, error)
            slot.starting = None
        return error

    def stop(self) -> None:
        """Kill every fitter."""
        for slot in self.slots:
            kill(slot.actor)
        self.slots.clear()


def kill(actor: ActorHandle) -> None:
    """Stop an actor for good; one already gone is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except (RayError, ValueError):  # already gone
        pass
