"""A Redis at its maxmemory (noeviction) refuses writes: every write path says so in one StoreFullError (real Redis)."""

from __future__ import annotations

import numpy as np
import pytest

from spin_ray.cli import main
from spin_ray.errors import StoreFullError
from spin_ray.pipeline.ray_errors import remote_spin_error, spin_error
from spin_ray.store.embedded import EmbeddedRedis
from spin_ray.store.fit_store import FitStore

from conftest import TEST_BODY_HASH

ROWS = 4000  # about 2 MB of records: far more than the room left below


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 72)).astype(np.float32), rng.normal(size=(n, 10)).astype(np.float32)


def fill_up(client, room: int = 150_000) -> None:
    """Leave about `room` bytes below maxmemory, with the policy that refuses writes instead of evicting."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + room)


@pytest.fixture
def full_server(tmp_path):
    """A server of its own (the session's must stay roomy), with a namespace of 8 coco fits: (server, store)."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = FitStore.open(server.url, "full", body_model_hash=TEST_BODY_HASH)
        pose, betas = _rows(8)
        store.keep_best("coco", np.arange(8), pose, betas, 10.0 + np.arange(8), 0, "static")
        yield server, store
        store.close()


def _cli(capsys, url, *argv):
    code = main(["store", argv[0], "--url", url, "--namespace", "full", *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_keep_best_into_a_full_redis_is_one_error_naming_maxmemory_with_the_rows_that_went_in(full_server):
    _, store = full_server
    fill_up(store.client)
    pose, betas = _rows(ROWS, seed=1)
    with pytest.raises(StoreFullError) as caught:
        store.keep_best("coco", np.arange(100, 100 + ROWS), pose, betas, np.ones(ROWS), 1, "loop")
    message = str(caught.value)
    assert "\n" not in message and "is full: writing 4000 fits of coco stopped after" in message
    assert "maxmemory" in message and "raise maxmemory" in message and "running again cannot help" in message
    assert 0 < caught.value.written < ROWS
    assert store.count("coco") == 8 + caught.value.written  # the count it gives is the count in the store
    # Mixed datasets: the rows of the datasets written before the one that filled Redis are counted too.
    store.client.config_set("maxmemory", 0)
    fill_up(store.client, room=60_000)
    names = ["lsp"] * 50 + ["mpii"] * ROWS
    pose, betas = _rows(len(names), seed=2)
    with pytest.raises(StoreFullError) as caught:
        store.keep_best_samples(names, np.arange(len(names)), pose, betas, np.ones(len(names)), 2, "loop")
    assert caught.value.written == store.count("lsp") + store.count("mpii") and store.count("lsp") == 50


def test_a_new_namespace_on_a_full_redis_is_a_store_full_error(full_server):
    server, store = full_server
    fill_up(store.client, room=0)
    with pytest.raises(StoreFullError, match="opening the namespace stopped; it has reached its maxmemory"):
        FitStore.open(server.url, "another", body_model_hash=TEST_BODY_HASH)


def test_store_import_into_a_full_redis_says_how_many_rows_went_in(capsys, full_server, tmp_path):
    server, store = full_server
    pose, betas = _rows(ROWS, seed=3)
    fits = tmp_path / "fits.npy"
    np.save(fits, np.concatenate([pose, betas], axis=1))
    fill_up(store.client)
    code, out, err = _cli(capsys, server.url, "import", str(fits), "--dataset", "lsp", "--error", "5")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    went_in = store.count("lsp")
    assert 0 < went_in < ROWS
    assert f"StoreFullError: import stopped: {went_in} row(s) of {fits} went in before it filled and are kept" in err
    assert "maxmemory" in err


def test_check_on_a_full_redis_still_reports_and_a_repair_that_cannot_write_says_so(capsys, full_server):
    server, store = full_server
    c, p = store.client, store.key_prefix
    c.zrem(f"{p}idx:{{coco:0}}", "2")  # an unindexed record: its repair is a write (ZADD)
    c.zadd(f"{p}idx:{{coco:0}}", {"5": 0.5})  # a score unlike its record
    fill_up(c, room=0)
    code, out, err = _cli(capsys, server.url, "check")
    assert code == 1 and "Traceback" not in err
    assert "namespace full: 8 good, 0 corrupt, 0 orphaned index entries, 1 unindexed records, 1 index scores" in out
    assert "summary not kept for `store stats`: Redis is full" in out
    code, out, err = _cli(capsys, server.url, "check", "--repair")
    assert code == 1 and "Traceback" not in err
    assert "repair could not write: Redis at" in out and "is full: repairing namespace full stopped" in out
    assert "maxmemory" in out
    c.config_set("maxmemory", 0)  # room again: the same repair goes through
    assert _cli(capsys, server.url, "check", "--repair")[0] == 0


def test_a_store_full_error_raised_in_a_ray_actor_arrives_as_itself(full_server, ray_local):
    server, store = full_server
    fill_up(store.client)

    class Writer:  # defined here, so that Ray pickles it by value (a test module is not importable by workers)
        def __init__(self, url: str) -> None:
            self.store = FitStore.open(url, "full", body_model_hash=TEST_BODY_HASH)

        def write(self, n: int) -> None:  # as fitter actors write
            pose, betas = np.ones((n, 72), np.float32), np.zeros((n, 10), np.float32)
            self.store.keep_best("coco", np.arange(1000, 1000 + n), pose, betas, np.ones(n), 3, "loop")

    writer = ray_local.remote(Writer).remote(server.url)
    with pytest.raises(Exception) as caught:
        ray_local.get(writer.write.remote(ROWS), timeout=120)
    err = spin_error(caught.value, "writing fits")
    assert type(err) is StoreFullError and "maxmemory" in str(err) and "\n" not in str(err)
    assert err.written == store.count("coco") - 8 > 0
    # Where only the traceback's text comes back (an actor's __init__, Ray Train), the type is kept too.
    text = f"Traceback (most recent call last):\n  File \"x.py\", line 1\nspin_ray.errors.StoreFullError: {err}"
    again = remote_spin_error(RuntimeError(text))
    assert type(again) is StoreFullError and str(again) == str(err)
    ray_local.kill(writer)
