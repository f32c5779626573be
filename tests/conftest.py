"""Shared pytest fixtures. Each block is self-contained; add new fixtures in their own block."""

from __future__ import annotations

import uuid

import pytest

# -- fit store: a real redis-server for the session, a fresh namespace per test ----------------------

TEST_BODY_HASH = "0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real embedded redis-server (127.0.0.1, free port, AOF) shared by the session."""
    from spin_ray.store.server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def fit_store(redis_server):
    """A writable FitStore in a namespace of its own on the session's server."""
    from spin_ray.store.fit_store import FitStore

    store = FitStore.open(redis_server.url, f"test-{uuid.uuid4().hex[:12]}", body_model_hash=TEST_BODY_HASH)
    yield store
    store.drop()
    store.close()
