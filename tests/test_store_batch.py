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


def _script_args(store, dataset: str, fits: list[tuple], **columns: str) -> list:
    """Keys and arguments of one batched script call (store/lua.py) for (index, error, pose bytes, betas bytes) of
    one index group, step 1, source loop; `columns` replaces a list argument (steps, sources, times, indices,
    updates) or the pose-and-betas bytes (blob) as it is sent."""
    group = store.layout.group_of(fits[0][0])
    assert all(store.layout.group_of(i) == group for i, *_ in fits)
    keys = [store.record_key(dataset, i) for i, *_ in fits]
    keys += [store.layout.index(dataset, group), store.layout.stats(dataset, group)]
    args = {
        "blob": b"".join(pose + betas for _, _, pose, betas in fits),
        "errors": " ".join(str(error) for _, error, _, _ in fits),
        "steps": "1", "sources": "loop", "times": "1.7e9",
        "indices": " ".join(str(i) for i, *_ in fits), "updates": "",
    }  # fmt: skip
    args.update(columns)
    return [len(keys), *keys, SCHEMA_VERSION, TEST_BODY_HASH, *args.values()]


def _call(store, dataset: str, fits: list[tuple], **columns: str) -> object:
    """Call the batched script directly (as a client that skips validation) with `_script_args`."""
    store._stamp_groups(dataset, [store.layout.group_of(fits[0][0])])
    return store.client.evalsha(store._keep_best.sha, *_script_args(store, dataset, fits, **columns))


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


@pytest.mark.parametrize(
    "columns,refusal",
    [
        ({"blob": b"\0" * 655}, "call of 2 fits to {index}: 655 bytes of pose and betas (expected 656)"),
        ({"errors": "1.0"}, "call of 2 fits to {index}: 656 bytes of pose and betas (expected 656), 1 errors and 2 indices"),
        ({"indices": "0 4 8"}, "3 indices (expected 2)"),
        ({"steps": "1 1 1"}, "3 steps, 1 sources, 1 times and 0 updates (expected 1 or 2; updates may be none)"),
        ({"updates": "1 2 3"}, "3 updates (expected 1 or 2"),
        ({"steps": "1 1.5"}, "{key4}: step 1.5 is not an integer >= 0 (fit 2 of 2 in the call)"),
        ({"steps": "-1"}, "{key0}: step -1 is not an integer >= 0 (fit 1 of 2 in the call)"),
        ({"sources": "loop fitted"}, "{key4}: source fitted is not static, loop or gt (fit 2 of 2 in the call)"),
        ({"times": "soon"}, "{key0}: time soon is not a number (fit 1 of 2 in the call)"),
        ({"indices": "0 x4"}, "{key4}: index x4 is not an integer >= 0 (fit 2 of 2 in the call)"),
        ({"updates": "2 0"}, "{key4}: updates 0 is not an integer >= 1 (fit 2 of 2 in the call)"),
        ({"errors": "1.0 -0.5"}, "{key4}: error -0.5 is not a finite number >= 0 (fit 2 of 2 in the call)"),
    ],
    ids=["short-blob", "few-errors", "many-indices", "many-steps", "many-updates", "step-fraction", "step-negative",
         "source", "time", "index", "updates-0", "error-negative"],
)
def test_the_script_refuses_a_malformed_call_in_one_line_and_writes_nothing(fit_store, columns, refusal):
    pose, betas = _rows(2)
    fits = [(0, "1.0", pose[0].tobytes(), betas[0].tobytes()), (4, "2.0", pose[1].tobytes(), betas[1].tobytes())]
    with pytest.raises(redis.exceptions.ResponseError) as refused:
        _call(fit_store, "coco", fits, **columns)
    text = str(refused.value)
    named = refusal.format(index=fit_store.layout.index("coco", 0), key0=fit_store.record_key("coco", 0),
                           key4=fit_store.record_key("coco", 4))
    assert text.startswith("SPINRAY_BAD ") and named in text and "\n" not in text
    assert fit_store.client.exists(fit_store.record_key("coco", 0), fit_store.record_key("coco", 4)) == 0
    assert fit_store.count("coco") == 0
    assert _call(fit_store, "coco", fits) == b"11"  # the same fits, well formed, go in


def test_a_column_of_one_value_is_every_fits_and_of_n_values_each_fits_own(fit_store):
    pose, betas = _rows(3)
    fits = [(i, f"{i + 1}.5", pose[k].tobytes(), betas[k].tobytes()) for k, i in enumerate((0, 4, 8))]
    assert _call(fit_store, "coco", fits, steps="7", sources="gt", times="1700000000.25", updates="5") == b"111"
    got = fit_store.read("coco", [0, 4, 8])
    assert got.step.tolist() == [7, 7, 7] and got.source.tolist() == ["gt"] * 3 and got.updates.tolist() == [5] * 3
    assert got.time.tolist() == [1700000000.25] * 3 and got.error.tolist() == [1.5, 5.5, 9.5]
    assert np.array_equal(got.pose, pose) and np.array_equal(got.betas, betas)
    better = [(i, "0.5", pose[k].tobytes(), betas[k].tobytes()) for k, i in enumerate((0, 4, 8))]
    assert _call(fit_store, "coco", better, steps="1 2 3", sources="loop static loop", times="1 2 3") == b"111"
    got = fit_store.read("coco", [0, 4, 8])
    assert got.step.tolist() == [1, 2, 3] and got.source.tolist() == ["loop", "static", "loop"]
    assert got.time.tolist() == [1.0, 2.0, 3.0] and got.updates.tolist() == [6, 6, 6]  # none given: stored + 1
    assert fit_store.progress("coco") == [(1, 1, 0.5), (2, 1, 0.5), (3, 1, 0.5), (7, 3, pytest.approx(16.5 / 3))]


@pytest.mark.parametrize("field", ["pose", "betas"])
def test_a_stored_record_of_the_wrong_length_is_replaced_by_a_fit_of_higher_error(fit_store, field):
    pose, betas = _rows(2)
    assert fit_store.keep_best("coco", [0, 1], pose, betas, [5.0, 5.0], 1, "loop").all()
    fit_store.client.hset(fit_store.record_key("coco", 0), field, b"abc")  # corrupt, its error still sound
    new_pose, new_betas = _rows(2, seed=1)
    written = fit_store.keep_best("coco", [0, 1], new_pose, new_betas, [9.0, 9.0], 2, "loop")
    assert written.tolist() == [True, False]  # the sound record 1 keeps its lower error
    got = fit_store.read("coco", [0, 1])
    assert got.found.all() and got.error.tolist() == [9.0, 5.0] and got.updates.tolist() == [2, 1]
    assert np.array_equal(got.pose[0], new_pose[0]) and np.array_equal(got.betas[0], new_betas[0])
