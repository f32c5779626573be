"""The batched keep-best script's edges: duplicates in a call, a refused fit, mixed sources, stats, old records (real Redis)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from spin_ray.errors import FitStoreError
from spin_ray.store.queries import merge_stats
from spin_ray.store.records import SCHEMA_VERSION
from spin_ray.store.writes import script_error

from conftest import TEST_BODY_HASH

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_store import PER_FIT_LUA  # noqa: E402  (the former per-fit script lives on in the benchmark only)


@pytest.fixture
def fit_store(any_fit_store):
    """Every test here runs on one Redis node and on a 3-master Redis Cluster, with 4 index groups (tests/conftest.py)."""
    return any_fit_store


def _stats(store, dataset: str) -> dict[bytes, bytes]:
    """The dataset's statistics merged over its index groups."""
    return merge_stats([store.client.hgetall(key) for key in store.layout.stats_keys(dataset)])


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 72)).astype(np.float32), rng.normal(size=(n, 10)).astype(np.float32)


def _call(store, dataset: str, fits: list[tuple]) -> object:
    """Call the batched script directly with (index, error, pose bytes, betas bytes) of one index group, as a client
    that skips validation."""
    group = store.layout.group_of(fits[0][0])
    assert all(store.layout.group_of(i) == group for i, *_ in fits)
    store._stamp_groups(dataset, [group])
    keys = [store.record_key(dataset, i) for i, *_ in fits]
    keys += [store.layout.index(dataset, group), store.layout.stats(dataset, group)]
    args: list = []
    for index, error, pose, betas in fits:
        args += [error, pose, betas, 1, "loop", 1.7e9, index]
    args += [SCHEMA_VERSION, TEST_BODY_HASH] + [""] * len(fits)
    return store.client.evalsha(store._keep_best.sha, len(keys), *keys, *args)


def test_duplicates_of_one_sample_in_a_batch_the_lowest_wins_and_equal_does_not_replace(fit_store):
    pose, betas = _rows(5)
    written = fit_store.keep_best("coco", [7, 7, 7, 7, 8], pose, betas, [5.0, 3.0, 3.0, 4.0, 9.0], 2, "loop")
    assert written.tolist() == [True, True, False, False, True]
    got = fit_store.read("coco", [7])
    assert got.error[0] == 3.0 and got.updates[0] == 2 and np.array_equal(got.pose[0], pose[1])
    assert fit_store.all_errors("coco")[1].tolist() == [3.0, 9.0]  # the index holds the record's error
    assert fit_store.progress("coco") == [(2, 3, pytest.approx((5.0 + 3.0 + 9.0) / 3))]
    assert fit_store.client.hget(fit_store.stats_key("coco", 7), "src:loop") == b"1"
    assert _stats(fit_store, "coco")[b"src:loop"] == b"2"


def test_a_refused_fit_in_the_middle_of_a_call_writes_nothing_and_is_named(fit_store):
    pose, betas = _rows(3)
    nan_betas = betas[1].copy()
    nan_betas[9] = np.nan
    fits = [(0, "1.0", pose[0].tobytes(), betas[0].tobytes()), (4, "2.0", pose[1].tobytes(), nan_betas.tobytes()),
            (8, "3.0", pose[2].tobytes(), betas[2].tobytes())]  # fmt: skip  (one index group of 4)
    with pytest.raises(redis.exceptions.ResponseError) as refused:
        _call(fit_store, "coco", fits)
    text = str(refused.value)
    assert f"SPINRAY_BAD {fit_store.record_key('coco', 4)}: pose or betas hold NaN or inf (fit 2 of 3 in the call)" in text
    assert fit_store.client.exists(fit_store.record_key("coco", 0)) == 0 and fit_store.count("coco") == 0
    # The client names the row of its own batch: the call's fits are rows 64..66 of a larger batch.
    err = script_error(refused.value, "redis://x", "ns", TEST_BODY_HASH, "writing", 0, np.array([64, 65, 66]))
    assert isinstance(err, FitStoreError) and str(err).endswith("pose or betas hold NaN or inf (row 65 of the batch)")


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, np.float32(np.frombuffer(b"\x01\x00\xc0\xff", "<f4")[0])],
                         ids=["inf", "-inf", "nan", "nan-payload"])
def test_the_script_finds_every_non_finite_float_and_passes_the_largest_finite_ones(fit_store, value):
    pose, betas = _rows(1)
    pose[0, 71] = value
    with pytest.raises(redis.exceptions.ResponseError, match="hold NaN or inf"):
        _call(fit_store, "coco", [(0, "1.0", pose[0].tobytes(), betas[0].tobytes())])
    extreme = np.array([3.4028235e38, -3.4028235e38, 1.4e-45, -0.0] * 18, "<f4")  # 0x7F7FFFFF etc.: finite
    assert np.isfinite(extreme).all()
    assert _call(fit_store, "coco", [(0, "1.0", extreme.tobytes(), betas[0].tobytes())]) == b"1"


def test_mixed_sources_in_one_batch_keep_the_source_counts(fit_store):
    pose, betas = _rows(4)
    fit_store.keep_best("coco", [0, 1, 2], pose[:3], betas[:3], [10.0, 10.0, 10.0], 0, "static")
    written = fit_store.keep_best("coco", [0, 1, 3, 2], pose, betas, [5.0, 11.0, 5.0, 1.0], 1, ["loop", "loop", "gt", "gt"])
    assert written.tolist() == [True, False, True, True]
    raw = _stats(fit_store, "coco")
    assert {k: int(v) for k, v in raw.items() if k.startswith(b"src:")} == {b"src:static": 1, b"src:loop": 1, b"src:gt": 2}
    assert fit_store.read("coco", [0, 1, 2, 3]).source.tolist() == ["loop", "static", "gt", "gt"]


def test_stats_of_one_batch_equal_those_of_one_fit_a_call(fit_store):
    rng = np.random.default_rng(5)
    n = 200
    pose, betas = _rows(n, seed=5)
    idx = rng.integers(0, 60, n)  # many duplicates: improvements, ties and losers
    errors = np.round(rng.uniform(0, 50, n), 1) + rng.uniform(0, 1e-3, n)
    steps = rng.integers(0, 3, n)
    sources = rng.choice(["static", "loop", "gt"], n).tolist()
    batched = fit_store.keep_best("batched", idx, pose, betas, errors, steps, sources)
    one_by_one = np.array([
        fit_store.keep_best("single", idx[i : i + 1], pose[i : i + 1], betas[i : i + 1], errors[i : i + 1], steps[i],
                            sources[i])[0]
        for i in range(n)
    ])  # fmt: skip
    assert np.array_equal(batched, one_by_one) and 0 < batched.sum() < n
    raw_b, raw_s = _stats(fit_store, "batched"), _stats(fit_store, "single")
    assert raw_b.keys() == raw_s.keys()
    for key in raw_b:
        assert float(raw_b[key]) == pytest.approx(float(raw_s[key]), rel=1e-12), key
    assert np.array_equal(fit_store.all_errors("batched")[1], fit_store.all_errors("single")[1])


def test_records_of_the_former_per_fit_script_are_read_and_replaced_alike(fit_store):
    if fit_store.is_cluster:
        pytest.skip("the former per-fit script reads the namespace metadata, in another slot: one node only")
    pose, betas = _rows(3)
    sha = fit_store.client.script_load(PER_FIT_LUA)
    lay = fit_store.layout
    for i in range(3):
        g = lay.group_of(i)
        fit_store.client.evalsha(
            sha, 4, lay.record("coco", i), lay.index("coco", g), lay.stats("coco", g), lay.meta, repr(10.0 + i), pose[i].tobytes(),
            betas[i].tobytes(), 0, "static", 1.7e9, i, SCHEMA_VERSION, TEST_BODY_HASH, "",
        )  # fmt: skip
    old = fit_store.read("coco", [0, 1, 2])
    assert old.found.all() and np.array_equal(old.pose, pose) and old.error.tolist() == [10.0, 11.0, 12.0]
    new_pose, new_betas = _rows(3, seed=1)
    written = fit_store.keep_best("coco", [0, 1, 2], new_pose, new_betas, [9.0, 11.0, 20.0], 1, "loop")
    assert written.tolist() == [True, False, False]  # lower replaces, equal and higher do not
    got = fit_store.read("coco", [0, 1, 2])
    assert got.error.tolist() == [9.0, 11.0, 12.0] and got.updates.tolist() == [2, 1, 1]
    assert np.array_equal(got.pose[0], new_pose[0]) and got.source.tolist() == ["loop", "static", "static"]
    stats = fit_store.stats(datasets=["coco"]).datasets[0]
    assert fit_store.progress("coco") == [(0, 3, 11.0), (1, 1, 9.0)]
    assert stats is not None
