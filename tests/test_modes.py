"""make_supervisor is the one place a mode becomes a supervisor: each mode gets its own, and what a mode lacks is named."""

from __future__ import annotations

import pytest

from spin_ray.body.body_model import BodyModel
from spin_ray.config import STORE_MODES, RunConfig
from spin_ray.errors import ConfigError
from spin_ray.store.fit_store import FitStore
from spin_ray.train.async_fits import AsyncFits
from spin_ray.train.modes import make_supervisor
from spin_ray.train.supervision import FitSupervisor, NoFits, StoreFits, SyncFits


class RecordingQueue:
    """A FitQueue that keeps what it is given (the real pool needs Ray; its own tests cover it)."""

    def __init__(self) -> None:
        self.submitted = []

    def submit_predictions(self, predictions) -> bool:
        self.submitted.append(predictions)
        return True

    def poll(self) -> list:
        return []


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture
def store(redis_server, body, fit_store):
    s = FitStore.open(redis_server.url, fit_store.namespace + "-modes", body_model_hash=body.identity)
    yield s
    s.drop()
    s.close()


def _cfg(mode: str, lookahead: int = 0) -> RunConfig:
    return RunConfig.model_validate({"train": {"mode": mode}, "pipeline": {"lookahead_steps": lookahead}})


@pytest.mark.parametrize("mode, kind", [("2d", NoFits), ("static", StoreFits), ("sync", SyncFits)])
def test_each_in_process_mode_gets_its_supervisor(mode, kind, body, store):
    supervisor = make_supervisor(_cfg(mode), store if mode in STORE_MODES else None, body)
    assert type(supervisor) is kind and supervisor.name == mode
    assert isinstance(supervisor, FitSupervisor)


def test_async_gets_the_queue_it_is_given(body, store):
    queue = RecordingQueue()
    supervisor = make_supervisor(_cfg("async", lookahead=3), store, body, queue)
    try:
        assert isinstance(supervisor, AsyncFits) and supervisor.pool is queue and supervisor.lookahead_steps == 3
    finally:
        supervisor.close()


def test_async_without_a_fit_queue_names_the_launcher(body, store):
    with pytest.raises(ConfigError, match="python -m spin_ray.launch"):
        make_supervisor(_cfg("async"), store, body)
    with pytest.raises(ConfigError, match="python -m spin_ray.launch"):
        make_supervisor(_cfg("async"), None, body)  # said before the missing store


@pytest.mark.parametrize("mode", ["static", "sync"])
def test_store_modes_without_a_store_are_refused(mode, body):
    with pytest.raises(ConfigError, match=f"train.mode {mode} needs a fit store"):
        make_supervisor(_cfg(mode), None, body)
