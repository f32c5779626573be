"""FitStore against a real redis-server: keep-best semantics, concurrency, bad input, file round trips."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time

import numpy as np
import pytest

from spin_ray.errors import FitStoreError
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import EmbeddedRedis, free_port

from conftest import TEST_BODY_HASH
from store_writer import concurrent_writer


@pytest.fixture
def fit_store(any_fit_store):
    """Every test here runs on one Redis node and on a 3-master Redis Cluster (tests/conftest.py)."""
    return any_fit_store


def _rows(n: int, seed: int = 0, low: float = 1.0, high: float = 200.0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 72)).astype(np.float32),
        rng.normal(size=(n, 10)).astype(np.float32),
        rng.uniform(low, high, size=n),
    )


def _namespace_keys(store: FitStore) -> list[bytes]:
    # SCAN may return a key twice (while Redis rehashes): compare sets.
    return sorted(set(store.client.scan_iter(match=f"spinray:{store.namespace}:*")))


def test_keep_best_writes_only_strictly_lower_errors(fit_store):
    pose, betas, err = _rows(64)
    assert fit_store.keep_best("coco", np.arange(64), pose, betas, err, step=1, source="static").all()
    # Half lower, a quarter equal, a quarter higher: only the lower half may replace.
    new_err = err.copy()
    new_err[:32] -= 0.5
    new_err[48:] += 0.5
    new_pose = pose + 1
    written = fit_store.keep_best("coco", np.arange(64), new_pose, betas, new_err, step=7, source="loop")
    np.testing.assert_array_equal(written, np.arange(64) < 32)

    got = fit_store.read("coco", np.arange(64))
    assert got.found.all()
    np.testing.assert_array_equal(got.error, np.where(written, new_err, err))
    np.testing.assert_array_equal(got.pose, np.where(written[:, None], new_pose, pose))
    np.testing.assert_array_equal(got.betas, betas)
    np.testing.assert_array_equal(got.step, np.where(written, 7, 1))
    np.testing.assert_array_equal(got.updates, np.where(written, 2, 1))
    assert list(got.source[:32]) == ["loop"] * 32 and list(got.source[32:]) == ["static"] * 32
    assert (np.abs(got.time - time.time()) < 60).all()

    stats = fit_store.stats(threshold=100.0).datasets[0]
    assert stats.count == 64 and stats.by_source == {"loop": 32, "static": 32}
    assert stats.above_threshold == int((got.error > 100).sum())
    assert [(s, n) for s, n, _ in stats.improvements_by_step] == [(1, 64), (7, 32)]
    assert stats.improvements_by_step[1][2] == pytest.approx(new_err[:32].mean())


def test_error_compare_is_numeric_and_exact(fit_store):
    pose, betas, _ = _rows(1)
    # As strings "9.5" > "10.0"; as float64 text these two differ only in the last bit.
    for err, expect in [(10.0, True), (9.5, True), (0.30000000000000004, True), (0.3, True), (0.3, False)]:
        assert fit_store.keep_best("h36m", [5], pose, betas, [err], 0, "loop")[0] == expect
    assert fit_store.read("h36m", [5]).error[0] == 0.3
    assert fit_store.client.zscore(fit_store.index_key("h36m", 5), "5") == 0.3


def test_read_reports_missing_samples(fit_store):
    pose, betas, err = _rows(3)
    fit_store.keep_best("lsp", [0, 2, 4], pose, betas, err, 3, "gt")
    got = fit_store.read("lsp", [4, 1, 0, 99])
    np.testing.assert_array_equal(got.found, [True, False, True, False])
    np.testing.assert_array_equal(got.pose[1], np.zeros(72, np.float32))
    assert np.isnan(got.error[[1, 3]]).all() and (got.step[[1, 3]] == -1).all()
    np.testing.assert_array_equal(got.pose[0], pose[2])
    assert fit_store.read("never-written", [0]).found.tolist() == [False]


def test_curation_queries_match_numpy(fit_store):
    pose, betas, err = _rows(200, seed=3)
    fit_store.keep_best("mpii", np.arange(200), pose, betas, err, 0, "loop")
    order = np.argsort(err)
    idx, e = fit_store.worst("mpii", 5)
    np.testing.assert_array_equal(idx, order[::-1][:5])
    np.testing.assert_array_equal(e, err[order[::-1][:5]])
    idx, _ = fit_store.best("mpii", 3)
    np.testing.assert_array_equal(idx, order[:3])
    idx, e = fit_store.filter("mpii", 50.0)
    np.testing.assert_array_equal(idx, np.flatnonzero(err <= 50.0))
    assert fit_store.datasets() == ["mpii"]
    q = fit_store.stats().datasets[0].error_quantiles
    assert q["p0"] == err.min() and q["p100"] == err.max()


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_writers_keep_the_minimum(fit_store):
    n_samples, workers, rounds = 1000, 8, 2
    # forkserver: writers start clean even if other tests left threads (torch, Ray) in this process; the
    # writer lives in a module without torch, so that each of them starts in ~0.5 s (2.7 s through conftest).
    ctx = mp.get_context("forkserver")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=concurrent_writer, args=(fit_store, w, n_samples, rounds, barrier, queue))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    errors = np.concatenate([r[1] for r in results])  # (workers * rounds, n_samples), by worker
    total_written = sum(r[2] for r in results)
    minimum = errors.min(axis=0)

    got = fit_store.read("coco", np.arange(n_samples))
    assert got.found.all()
    np.testing.assert_array_equal(got.error, minimum)
    np.testing.assert_array_equal(got.pose[:, 0], minimum.astype(np.float32))
    winner = np.argmin(errors, axis=0) // rounds
    np.testing.assert_array_equal(got.betas[:, 0], winner.astype(np.float32))
    # The index agrees with the records, and every reported write is counted exactly once.
    idx, idx_err = fit_store.all_errors("coco")
    assert idx.size == n_samples
    np.testing.assert_array_equal(idx_err, minimum[idx])
    assert got.updates.sum() == total_written
    assert sum(n for _, n, _ in fit_store.progress("coco")) == total_written
    assert fit_store.stats().datasets[0].by_source == {"loop": n_samples}


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(errors=np.where(np.arange(64) == 5, np.nan, a["errors"])), "errors[5]"),
        (lambda a: a.update(errors=np.where(np.arange(64) == 9, np.inf, a["errors"])), "errors[9]"),
        (lambda a: a.update(poses=a["poses"][:, :69]), "poses has shape (64, 69)"),
        (lambda a: a.update(betas=np.zeros((64, 11))), "betas has shape (64, 11)"),
        (lambda a: a.update(errors=a["errors"][:63]), "errors has 63 values"),
        (lambda a: a.update(source="fitter"), "unknown fit source 'fitter'"),
        (lambda a: a.update(dataset="coco:train"), "':' separates key parts"),
        (lambda a: a.update(dataset=""), "dataset name ''"),
        (lambda a: a.update(indices=np.arange(64) - 1), "indices[0] is -1"),
        (lambda a: a.update(poses=np.where(np.arange(64)[:, None] == 3, np.nan, a["poses"])), "poses[3]"),
    ],
)
def test_bad_batches_write_nothing(fit_store, mutate, message):
    pose, betas, err = _rows(64)
    args = dict(dataset="coco", indices=np.arange(64), poses=pose, betas=betas, errors=err, step=0, source="loop")
    mutate(args)
    with pytest.raises(FitStoreError) as info:
        fit_store.keep_best(**args)
    assert message in str(info.value)
    assert _namespace_keys(fit_store) == [f"spinray:{fit_store.namespace}:meta".encode()]


def test_corrupt_record_bytes_name_the_key(fit_store):
    pose, betas, err = _rows(2)
    fit_store.keep_best("coco", [17, 18], pose, betas, err, 0, "loop")
    key = fit_store.record_key("coco", 17)
    fit_store.client.hset(key, "pose", b"\0" * 300)
    with pytest.raises(FitStoreError, match=rf"{key} \(pose: wrong length: 300 bytes, expected 288\)") as caught:
        fit_store.read("coco", [18, 17])
    assert "schema" not in str(caught.value)  # say what was found, do not guess why
    fit_store.client.hset(key, mapping={"pose": pose[0].tobytes(), "error": b"not-a-number"})
    with pytest.raises(FitStoreError, match=rf"{key} \(error: not a number: b'not-a-number'\)"):
        fit_store.read("coco", [17])
    fit_store.client.hset(key, mapping={"error": b"1.5", "source": b"oracle"})
    with pytest.raises(FitStoreError, match=rf"{key} \(source: unknown: 'oracle'"):
        fit_store.read("coco", [17])


def test_other_body_model_or_schema_is_refused(fit_store, store_url):
    with pytest.raises(FitStoreError, match="holds fits of body model 0123456789abcdef, but this store was opened for body model ffff0000"):
        FitStore.open(store_url, fit_store.namespace, body_model_hash="ffff0000")
    reader = FitStore.open(store_url, fit_store.namespace)  # no hash: read-only, allowed
    pose, betas, err = _rows(1)
    with pytest.raises(FitStoreError, match="read-only"):
        reader.keep_best("coco", [0], pose, betas, err, 0, "loop")
    fit_store.keep_best("coco", [4], pose, betas, err, 0, "loop")  # group 0 is stamped with the metadata
    meta = f"spinray:{fit_store.namespace}:meta"
    fit_store.client.hset(meta, "schema_version", 99)
    with pytest.raises(FitStoreError, match="schema 99, this code reads schema 2"):
        FitStore.open(store_url, fit_store.namespace, body_model_hash=TEST_BODY_HASH)
    fit_store.client.hset(meta, "schema_version", 1)
    with pytest.raises(FitStoreError, match="key layout of fit-store schema 1 .*`spin-ray store migrate --namespace"):
        FitStore.open(store_url, fit_store.namespace, body_model_hash=TEST_BODY_HASH)
    # A writer already open notices inside the script (each group's stats carry a stamp of the metadata),
    # and writes nothing: the namespace dropped and re-created for another body model under it...
    reader.drop()
    FitStore.open(store_url, fit_store.namespace, body_model_hash="ffff0000").close()
    two = dict(poses=np.repeat(pose, 2, 0), betas=np.repeat(betas, 2, 0), errors=[1.0, 2.0], step=0, source="loop")
    with pytest.raises(FitStoreError, match="changed under this writer \\(namespace metadata is schema 2, body model ffff0000"):
        fit_store.keep_best("coco", [0, 1], **two)
    assert reader.read("coco", [0, 1]).found.tolist() == [False, False]
    # ... or a group stamped for another body model (the script's own check).
    fit_store.client.hset(fit_store.stats_key("coco", 2), mapping={"schema_version": 2, "body_model_hash": "ffff0000"})
    with pytest.raises(FitStoreError, match="changed under this writer \\(namespace metadata is schema 2, body model ffff0000"):
        fit_store.keep_best("coco", [2, 6], **two)
    reader.drop()
    with pytest.raises(FitStoreError, match="namespace metadata is missing"):
        fit_store.keep_best("coco", [0], pose, betas, err, 0, "loop")
    assert fit_store.count("coco") == 0


def test_unknown_dataset_in_queries(fit_store):
    pose, betas, err = _rows(1)
    fit_store.keep_best("coco", [0], pose, betas, err, 0, "loop")
    with pytest.raises(FitStoreError, match="unknown dataset 'lspet'.*datasets with fits: coco"):
        fit_store.worst("lspet", 3)


def test_redis_down_is_a_clear_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(FitStoreError, match="cannot reach Redis at redis://u:\\*\\*\\*@127.0.0.1"):
        FitStore.open(f"redis://u:hunter2secret@127.0.0.1:{free_port()}/0", "x", connect_timeout_s=0.5)
    assert time.monotonic() - start < 5
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = FitStore.open(server.url, "x", body_model_hash=TEST_BODY_HASH, connect_timeout_s=1)
    # The server is gone now: reads and writes fail with the operation named.
    pose, betas, err = _rows(1)
    with pytest.raises(FitStoreError, match="lost Redis at redis://127.0.0.1.* while writing 1 fits of coco"):
        store.keep_best("coco", [0], pose, betas, err, 0, "loop")
    with pytest.raises(FitStoreError, match="while reading 2 fits of coco"):
        store.read("coco", [0, 1])


def test_store_pickles_to_its_address(fit_store):
    clone = pickle.loads(pickle.dumps(fit_store))
    assert clone.namespace == fit_store.namespace and clone is not fit_store
    pose, betas, err = _rows(1)
    clone.keep_best("coco", [3], pose, betas, err, 0, "loop")
    assert fit_store.read("coco", [3]).found[0]
    clone.close()


# -- files ----------------------------------------------------------------------------------------


def test_npy_round_trip_is_lossless(fit_store, tmp_path):
    rng = np.random.default_rng(5)
    fits = rng.normal(size=(120, 82)).astype(np.float32)
    errors = rng.uniform(0, 300, size=120)
    errors[[3, 50]] = np.nan  # rows without a fit
    fits[[3, 50]] = 0
    np.save(tmp_path / "coco_fits.npy", fits)
    np.save(tmp_path / "coco_errors.npy", errors)
    written = fit_store.import_npy("coco", tmp_path / "coco_fits.npy", tmp_path / "coco_errors.npy")
    assert written.sum() == 118 and not written[[3, 50]].any()
    assert fit_store.read("coco", [0]).source[0] == "static"

    out = fit_store.export_npy("coco", tmp_path / "out" / "coco_fits.npy", size=120)
    np.testing.assert_array_equal(np.load(out), fits)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "coco_fits.errors.npy"), errors)
    with pytest.raises(FitStoreError, match="no errors for"):
        fit_store.import_npy("coco", tmp_path / "coco_fits.npy")
    np.save(tmp_path / "bad.npy", fits[:, :80])
    with pytest.raises(FitStoreError, match=r"shape \(120, 80\), expected \(N, 82\)"):
        fit_store.import_npy("coco", tmp_path / "bad.npy", 1.0)


def test_parquet_round_trip_is_lossless(fit_store, store_url, tmp_path):
    import pyarrow.parquet as pq

    for step, (source, dataset) in enumerate([("static", "coco"), ("loop", "coco"), ("gt", "h36m")]):
        pose, betas, err = _rows(40, seed=step)
        fit_store.keep_best(dataset, np.arange(0, 80, 2), pose, betas, err, step * 10, source)
    first = fit_store.export_parquet(tmp_path / "a.parquet")
    other = FitStore.open(store_url, fit_store.namespace + "-copy", body_model_hash=TEST_BODY_HASH)
    try:
        assert other.import_parquet(first) == 80
        second = other.export_parquet(tmp_path / "b.parquet")
        a, b = pq.read_table(first), pq.read_table(second)
        assert a.num_rows == 80 and a.drop_columns([]).equals(b)
        assert set(a.column("source").to_pylist()) == {"static", "loop", "gt"}
        stranger = FitStore.open(store_url, fit_store.namespace + "-other", body_model_hash="ffff0000")
        with pytest.raises(FitStoreError, match="holds fits of body model 0123456789abcdef"):
            stranger.import_parquet(first)
        stranger.drop()
    finally:
        other.drop()


def test_script_cache_flush_is_survived(fit_store):
    pose, betas, err = _rows(4)
    fit_store.client.script_flush()
    assert fit_store.keep_best("coco", np.arange(4), pose, betas, err, 0, "loop").all()
    fit_store.client.script_flush()
    got = fit_store.read("coco", np.arange(4))
    np.testing.assert_array_equal(got.pose, pose)
    assert got.updates.tolist() == [1, 1, 1, 1]  # rows refused with NOSCRIPT were sent once more, not twice


def test_from_config_resolves_url_and_env(redis_server, monkeypatch):
    from spin_ray.config import StoreConfig

    monkeypatch.setenv("FIT_STORE_TEST_URL", redis_server.url)
    store = FitStore.from_config(StoreConfig(url_env="FIT_STORE_TEST_URL", namespace="cfg"), TEST_BODY_HASH)
    assert store.namespace == "cfg" and store.meta.body_model_hash == TEST_BODY_HASH
    store.drop()
    monkeypatch.delenv("FIT_STORE_TEST_URL")
    with pytest.raises(FitStoreError, match="FIT_STORE_TEST_URL, but that environment variable is empty"):
        FitStore.from_config(StoreConfig(url_env="FIT_STORE_TEST_URL"), TEST_BODY_HASH)
    with pytest.raises(FitStoreError, match="names no Redis"):
        FitStore.from_config(StoreConfig(), TEST_BODY_HASH)


def test_keep_best_samples_groups_mixed_datasets_and_skips_bad_rows(fit_store, monkeypatch):
    pose, betas, _ = _rows(6, seed=3)
    fit_store.keep_best("lsp", [7], pose[4:5], betas[4:5], [5.0], 0, "static")  # row 4 below will not beat it
    datasets = ["coco", "lsp", "coco", "lsp", "lsp", "coco"]
    indices = [0, 3, 1, 4, 7, 2]
    error = np.array([10.0, 20.0, np.nan, 30.0, 6.0, 40.0])
    pose[5, 3] = np.inf  # a non-finite pose is skipped like a NaN error
    calls = []
    real_keep_best = fit_store.keep_best

    def spy(dataset, idx, *rest):
        calls.append((dataset, np.asarray(idx).tolist()))
        return real_keep_best(dataset, idx, *rest)

    monkeypatch.setattr(fit_store, "keep_best", spy)
    written = fit_store.keep_best_samples(datasets, indices, pose, betas, error, 9, "loop")
    assert written.dtype == bool and written.tolist() == [True, True, False, True, False, False]
    # One keep_best per dataset, first-seen order; skipped rows are never sent.
    assert calls == [("coco", [0]), ("lsp", [3, 4, 7])]

    coco = fit_store.read("coco", [0, 1, 2])
    assert coco.found.tolist() == [True, False, False] and coco.error[0] == 10.0 and coco.step[0] == 9
    lsp = fit_store.read("lsp", [3, 4, 7])
    assert lsp.error.tolist() == [20.0, 30.0, 5.0] and lsp.source.tolist() == ["loop", "loop", "static"]
    np.testing.assert_array_equal(lsp.pose[:2], pose[[1, 3]])

    # One name for every row; an all-skipped or empty batch sends nothing.
    assert fit_store.keep_best_samples("mpii", [0, 1], pose[:2], betas[:2], [1.0, np.nan], 0, "gt").tolist() == [
        True, False,
    ]  # fmt: skip
    assert fit_store.keep_best_samples("mpii", [], np.zeros((0, 72)), np.zeros((0, 10)), [], 0, "gt").size == 0
    assert calls[-1] == ("mpii", [0])
    with pytest.raises(FitStoreError, match="one name or one per row"):
        fit_store.keep_best_samples(["coco"], [0, 1], pose[:2], betas[:2], [1.0, 2.0], 0, "loop")


def test_index_groups_of_an_existing_namespace_are_kept_and_the_unused_setting_named(fit_store, store_url, caplog):
    """`store.index_groups` is fixed when a namespace is created: another value later is named, not silently dropped."""
    pose, betas, err = _rows(3)
    fit_store.keep_best("coco", [0, 1, 2], pose, betas, err, 0, "loop")
    created = fit_store.layout.groups
    other = created + 3
    later = FitStore.open(store_url, fit_store.namespace, TEST_BODY_HASH, index_groups=other)
    with caplog.at_level("WARNING", logger="spin_ray.store.fit_store"):
        later.keep_best("coco", [3], *_rows(1, seed=1)[:2], [5.0], 1, "loop")
    assert later.layout.groups == created
    assert f"store.index_groups {other} is not used" in caplog.text and f"created with {created}" in caplog.text
    assert later.count("coco") == 4 and fit_store.count("coco") == 4


def test_an_embedded_servers_records_are_compact_hashes_and_read_back_the_same(fit_store):
    if fit_store.is_cluster:
        pytest.skip("the cluster's servers are configured by whoever runs them (tests/cluster_fixture.py here)")
    pose, betas, err = _rows(3)
    assert fit_store.keep_best("coco", [0, 1, 2], pose, betas, err, 4, "loop").all()
    for i in range(3):  # one allocation a record, not a hash table (store/embedded.py: hash-max-ziplist-value)
        assert fit_store.client.object("encoding", fit_store.record_key("coco", i)) in (b"ziplist", b"listpack")
    got = fit_store.read("coco", [0, 1, 2])
    assert np.array_equal(got.pose, pose) and np.array_equal(got.betas, betas) and got.error.tolist() == err.tolist()
    assert fit_store.client.hstrlen(fit_store.record_key("coco", 1), "pose") == 288
