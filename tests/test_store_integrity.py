"""The fit store refuses poison at every write path and finds, skips or quarantines corrupt records (real Redis)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import redis
import torch

from spin_ray.cli import main
from spin_ray.errors import FitStoreError
from spin_ray.store import files, integrity
from spin_ray.store.records import SCHEMA_VERSION, StoredFits
from spin_ray.train.supervision import read_stored_fits_with_steps

from conftest import TEST_BODY_HASH

N = 8


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 72)).astype(np.float32), rng.normal(size=(n, 10)).astype(np.float32)


@pytest.fixture
def eight(fit_store):
    """A namespace with N coco fits, errors 10..17."""
    pose, betas = _rows(N)
    fit_store.keep_best("coco", np.arange(N), pose, betas, 10.0 + np.arange(N), 0, "static")
    return fit_store


def _cli(capsys, store, *argv):
    url = store.address.url.get_secret_value()
    code = main(["store", argv[0], "--url", url, "--namespace", store.namespace, *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def _keys(store, kind: str) -> set[str]:
    return {k.decode() for k in store.client.scan_iter(match=f"{store.key_prefix}{kind}:*")}


# -- writes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-5.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_keep_best_refuses_a_bad_error(fit_store, bad):
    pose, betas = _rows(3)
    with pytest.raises(FitStoreError, match=rf"errors\[1\] \(sample coco:11\) is {bad}: a fit error must be finite and >= 0"):
        fit_store.keep_best("coco", [10, 11, 12], pose, betas, [1.0, bad, 2.0], 0, "loop")
    assert fit_store.count("coco") == 0  # the whole batch is refused before anything is sent


def test_keep_best_refuses_a_non_finite_pose(fit_store):
    pose, betas = _rows(2)
    pose[1, 5] = np.inf
    with pytest.raises(FitStoreError, match=r"poses\[1\] \(sample coco:1\) holds NaN or inf"):
        fit_store.keep_best("coco", [0, 1], pose, betas, [1.0, 2.0], 0, "loop")


def test_import_refuses_a_negative_error(capsys, fit_store, tmp_path):
    pose, betas = _rows(4)
    np.save(tmp_path / "fits.npy", np.concatenate([pose, betas], axis=1))
    with pytest.raises(SystemExit) as refused:  # refused when parsed, before any connection
        _cli(capsys, fit_store, "import", str(tmp_path / "fits.npy"), "--dataset", "coco", "--error", "-5")
    assert refused.value.code == 2
    assert "argument --error: must be a finite number >= 0, got '-5'" in capsys.readouterr().err
    errors = np.array([1.0, np.nan, 3.0, -2.0])  # NaN: no fit (allowed); -2: refused, by row
    np.save(tmp_path / "errors.npy", errors)
    code, _, err = _cli(capsys, fit_store, "import", str(tmp_path / "fits.npy"), "--dataset", "coco",
                        "--errors", str(tmp_path / "errors.npy"))  # fmt: skip
    assert code == 1 and "row 3 is -2.0" in err
    assert fit_store.count("coco") == 0


def test_parquet_import_refuses_a_negative_error(fit_store, tmp_path):
    pose, betas = _rows(2)
    fits = StoredFits(
        np.array([0, 1]), np.ones(2, bool), pose, betas, np.array([1.0, -1.0]), np.zeros(2, np.int64),
        np.array(["loop", "loop"]), np.ones(2, np.int64), np.full(2, 1.7e9),
    )  # fmt: skip
    path = files.write_parquet(tmp_path / "bad.parquet", {"coco": fits}, fit_store.namespace, fit_store.meta)
    with pytest.raises(FitStoreError, match=r"errors\[1\] \(sample coco:1\) is -1.0"):
        fit_store.import_parquet(path)
    assert fit_store.count("coco") == 0


@pytest.mark.parametrize(
    "field,value",
    [("error", b"-5"), ("error", b"nan"), ("error", b"inf"), ("pose", b"abc"), ("pose", np.full(72, np.nan, "<f4").tobytes())],
    ids=["negative", "nan", "inf", "short-pose", "nan-pose"],
)
def test_keep_best_script_refuses_poison_on_its_own(fit_store, field, value):
    # Called directly, as a client that skips Python's validation would.
    pose, betas = _rows(1)
    args = {"error": b"1.0", "pose": pose[0].tobytes(), "betas": betas[0].tobytes()}
    args[field] = value
    keys = [fit_store.record_key("coco", 0), fit_store.index_key("coco", 0), fit_store.stats_key("coco", 0)]
    # A fit's pose and betas travel as one byte string (store/lua.py): a short pose is a short call.
    named = f"call of 1 fits to {keys[1]}: 43 bytes of pose and betas (expected 328)" if value == b"abc" else f"{keys[0]}: "
    with pytest.raises(redis.exceptions.ResponseError, match=re.escape(f"SPINRAY_BAD {named}")):
        fit_store.client.evalsha(
            fit_store._keep_best.sha, 3, *keys, SCHEMA_VERSION, TEST_BODY_HASH, args["pose"] + args["betas"],
            args["error"], 0, "loop", 1.7e9, 0, "",
        )  # fmt: skip
    assert fit_store.client.exists(keys[0]) == 0 and fit_store.client.zcard(keys[1]) == 0


def test_a_poisoned_record_from_an_older_store_is_reported_and_replaced(capsys, eight):
    # What `import --error -5` used to leave behind: a negative error in the record and its index.
    eight.client.hset(eight.record_key("coco", 2), "error", b"-5.0")
    eight.client.zadd(f"{eight.key_prefix}idx:{{coco:0}}", {"2": -5.0})
    code, out, _ = _cli(capsys, eight, "stats")
    assert code == 0 and "integrity: CORRUPT: 1 fit(s) have a negative or infinite error" in out
    pose, betas = _rows(1, seed=9)
    assert eight.keep_best("coco", [2], pose, betas, [50.0], 3, "loop").all()  # any sound fit replaces poison
    assert eight.read("coco", [2]).error[0] == 50.0
    assert "integrity: never checked" in _cli(capsys, eight, "stats")[1]


# -- reads -------------------------------------------------------------------------------------------


@pytest.fixture
def corrupt(eight):
    """`eight` with record 3's pose overwritten by 3 bytes."""
    eight.client.hset(eight.record_key("coco", 3), "pose", b"abc")
    return eight


def test_export_refuses_a_corrupt_record_naming_it(capsys, corrupt, tmp_path):
    key = corrupt.record_key("coco", 3)
    code, _, err = _cli(capsys, corrupt, "export", str(tmp_path / "all.parquet"))
    assert code == 1
    assert f"1 corrupt record(s): {key} (pose: wrong length: 3 bytes, expected 288)" in err
    assert "spin-ray store check --repair" in err and "--skip-corrupt" in err and "schema" not in err
    assert not (tmp_path / "all.parquet").exists()


def test_export_skip_corrupt_writes_the_sound_rows(capsys, corrupt, tmp_path):
    import pyarrow.parquet as pq

    code, _, err = _cli(capsys, corrupt, "export", str(tmp_path / "all.parquet"), "--skip-corrupt")
    assert code == 0 and "7 records written" in err and "skipped 1 corrupt record(s)" in err
    table = pq.read_table(tmp_path / "all.parquet")
    assert sorted(table.column("index").to_pylist()) == [0, 1, 2, 4, 5, 6, 7]


def test_training_read_skips_a_corrupt_record_with_a_count(corrupt, caplog):
    batch = {"dataset": "coco", "index": torch.arange(N)}
    with caplog.at_level(logging.WARNING, logger="spin_ray.train.supervision"):
        pose, _, error, step = read_stored_fits_with_steps(corrupt, batch, 10)
    assert torch.isinf(error[3]) and step[3] == -1 and not pose[3].any()  # "no fit"
    assert torch.isfinite(error[np.r_[0:3, 4:N]]).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 corrupt fit record(s) read as no fit" in warnings[0]
    assert corrupt.record_key("coco", 3) in warnings[0]


def test_worst_marks_corrupt_and_orphaned_entries(capsys, corrupt):
    corrupt.client.zadd(f"{corrupt.key_prefix}idx:{{coco:0}}", {"3": 99.0, "40": 98.0})  # 3 corrupt, 40 has no record
    code, out, _ = _cli(capsys, corrupt, "worst", "--k", "3")
    lines = [line for line in out.splitlines() if line.startswith("  coco")]
    assert code == 0
    assert lines[0].startswith("  coco 3 99 CORRUPT (pose: wrong length")
    assert lines[1] == "  coco 40 98 ORPHAN (index entry without a record)"
    assert lines[2] == "  coco 7 17"


def test_orphan_index_entry_is_never_exported(capsys, eight, tmp_path):
    import pyarrow.parquet as pq

    eight.client.zadd(f"{eight.key_prefix}idx:{{coco:0}}", {"99": 1.0})
    code, _, err = _cli(capsys, eight, "export", str(tmp_path / "all.parquet"))
    assert code == 0 and pq.read_table(tmp_path / "all.parquet").num_rows == N
    assert "left out 1 index entr(ies) without a record" in err
    assert _cli(capsys, eight, "export", str(tmp_path / "coco.npy"), "--dataset", "coco")[0] == 0
    assert np.load(tmp_path / "coco.npy").shape == (N, 82)  # not 100 rows


# -- check -------------------------------------------------------------------------------------------


def _damage(store) -> dict[str, str]:
    """One fault of each kind; their keys."""
    p, c = store.key_prefix, store.client
    keys = {"pose": store.record_key("coco", 3), "nan": store.record_key("coco", 4), "type": store.record_key("coco", 5),
            "orphan": store.record_key("coco", 99), "unindexed": store.record_key("coco", 6)}  # fmt: skip
    c.hset(keys["pose"], "pose", b"abc")
    c.hset(keys["nan"], "error", b"nan")
    c.delete(keys["type"])
    c.set(keys["type"], b"not a hash")
    c.zadd(f"{p}idx:{{coco:0}}", {"99": 1.0})
    c.zrem(f"{p}idx:{{coco:0}}", "6")
    c.hset(f"{p}fit:{{coco:0}}:x7", "error", b"1.0")  # a key no write makes
    return keys


def test_check_finds_repairs_and_quarantines(capsys, eight):
    keys = _damage(eight)
    code, out, err = _cli(capsys, eight, "check")
    assert code == 1
    assert "5 good, 4 corrupt, 1 orphaned index entries, 1 unindexed records" in out
    assert "pose: wrong length 1" in out and "error: not finite 1" in out and "not a hash 1" in out
    assert "key: malformed 1" in out
    assert all(key in out for key in keys.values()) and "check --repair" in err
    everywhere = _cli(capsys, eight, "check", "--all-namespaces")[1]  # other tests' namespaces may be there too
    assert f"namespace {eight.namespace}: 5 good, 4 corrupt" in everywhere
    stats = _cli(capsys, eight, "stats")[1]  # stats shows the last check without scanning
    assert "5 good, 4 corrupt, 1 orphaned, 1 unindexed; run `spin-ray store check --repair`" in stats

    code, out, _ = _cli(capsys, eight, "check", "--repair")
    assert code == 0 and "quarantined 4 record(s)" in out and "removed 1 orphaned" in out and "indexed 1" in out
    assert "4 corrupt, 1 orphaned, 1 unindexed (repaired)" in _cli(capsys, eight, "stats")[1]
    assert _cli(capsys, eight, "check")[:2] == (0, f"namespace {eight.namespace}: 5 good, 0 corrupt, "
                                                   "0 orphaned index entries, 0 unindexed records, 0 index scores unlike "
                                                   "their record's error\n")  # fmt: skip
    quarantined = f"{eight.key_prefix}quarantine:fit:{{coco:0}}:3"
    assert eight.client.hget(quarantined, "pose") == b"abc"  # kept whole, for a person to look at
    assert eight.client.get(f"{eight.key_prefix}quarantine:fit:{{coco:0}}:5") == b"not a hash"
    assert eight.count("coco") == 5 and eight.read("coco", [3, 4, 5]).found.tolist() == [False] * 3
    pose, betas = _rows(1, seed=4)
    assert eight.keep_best("coco", [3], pose, betas, [30.0], 1, "loop").all()  # the sample can get a fit again


def test_repair_leaves_a_record_rewritten_since_the_scan(eight):
    eight.client.hset(eight.record_key("coco", 3), "pose", b"abc")
    report = integrity.scan(eight.client, eight.namespace)
    assert [b.key for b in report.corrupt] == [eight.record_key("coco", 3)]
    pose, betas = _rows(1, seed=5)
    assert eight.keep_best("coco", [3], pose, betas, [99.0], 2, "loop").all()  # a corrupt record is replaceable
    integrity.repair(eight.client, report)
    assert report.quarantined == {} and not _keys(eight, "quarantine")
    np.testing.assert_array_equal(eight.read("coco", [3]).pose[0], pose[0])


# -- index scores, key types and metadata ---------------------------------------------------------------


def test_an_index_score_unlike_its_record_is_found_and_reindexed_from_the_record(capsys, eight):
    c, p = eight.client, eight.key_prefix
    assert eight.read("coco", [6]).error[0] == 16.0
    c.zadd(f"{p}idx:{{coco:0}}", {"6": 0.5})  # the index says 0.5, the record says 16.0
    assert 6 in eight.filter("coco", 1.0)[0].tolist()  # what the check is for: filter trusts the index
    code, out, err = _cli(capsys, eight, "check")
    assert code == 1 and "check --repair" in err
    assert "8 good, 0 corrupt, 0 orphaned index entries, 0 unindexed records, 1 index scores unlike" in out
    assert f"index score unlike the record's error: {eight.record_key('coco', 6)} (index 0.5, record 16.0)" in out
    assert "1 index scores unlike their record; run `spin-ray store check --repair`" in _cli(capsys, eight, "stats")[1]
    code, out, _ = _cli(capsys, eight, "check", "--repair")
    assert code == 0 and "re-indexed 1 record(s) from their error" in out
    assert eight.filter("coco", 1.0)[0].tolist() == [] and eight.all_errors("coco")[1].tolist() == [10.0 + i for i in range(N)]
    assert _cli(capsys, eight, "check")[0] == 0


def test_a_stats_key_of_the_wrong_type_is_reported_by_stats_worst_and_check(capsys, eight):
    c, p = eight.client, eight.key_prefix
    pose, betas = _rows(2)
    eight.keep_best("lsp", [0, 1], pose, betas, [3.0, 4.0], 0, "loop")
    c.delete(f"{p}stats:{{coco:0}}")
    c.set(f"{p}stats:{{coco:0}}", b"not a hash")
    code, out, _ = _cli(capsys, eight, "stats")
    assert code == 0 and "coco: 8 fits" in out and "lsp: 2 fits (loop 2)" in out  # the rest is still shown
    assert f"DAMAGED: {p}stats:{{coco:0}} is not a hash (WRONGTYPE), so it cannot be read; run `spin-ray store check --repair`" in out
    code, out, err = _cli(capsys, eight, "worst", "--k", "2")
    assert code == 0 and "coco 7 17" in out and "lsp 1 4" in out and f"coco: DAMAGED: {p}stats:{{coco:0}} is not a hash" in err
    code, out, _ = _cli(capsys, eight, "check")
    assert code == 1 and f"wrong Redis type: {p}stats:{{coco:0}} is a string, expected a hash" in out
    code, out, _ = _cli(capsys, eight, "check", "--repair")
    assert code == 0 and f"{p}stats:{{coco:0}} -> {p}quarantine:stats:{{coco:0}}" in out and "rebuilt 1 stats hash(es)" in out
    assert c.get(f"{p}quarantine:stats:{{coco:0}}") == b"not a hash"  # kept for a person to look at
    assert "coco: 8 fits (static 8)" in _cli(capsys, eight, "stats")[1]
    assert _cli(capsys, eight, "check")[0] == 0


def test_an_index_of_the_wrong_type_is_reported_and_rebuilt_from_the_records(capsys, eight):
    c, p = eight.client, eight.key_prefix
    c.delete(f"{p}idx:{{coco:0}}")
    c.hset(f"{p}idx:{{coco:0}}", "3", "13.0")
    code, out, err = _cli(capsys, eight, "worst", "--k", "2")
    assert code == 1 and "coco: cannot rank its fits" in err and "WRONGTYPE" in err and "Traceback" not in err
    code, out, _ = _cli(capsys, eight, "check")
    assert code == 1 and f"{p}idx:{{coco:0}} is a hash, expected a zset" in out and "8 unindexed records" in out
    code, out, _ = _cli(capsys, eight, "check", "--repair")
    assert code == 0 and "indexed 8 records" in out
    assert eight.all_errors("coco")[1].tolist() == [10.0 + i for i in range(N)]


def test_a_namespace_of_another_schema_is_named_by_its_schema_and_not_called_sound(capsys, eight):
    c = eight.client
    meta = f"{eight.key_prefix}meta"
    c.delete(meta)
    c.hset(meta, mapping={"schema_version": "0", "body_model_hash": TEST_BODY_HASH})  # schema 0 had no `created`
    with pytest.raises(FitStoreError, match=rf"written with fit-store schema 0, this code reads schema {SCHEMA_VERSION}"):
        eight.__class__.open(eight.address.url.get_secret_value(), eight.namespace)
    code, out, err = _cli(capsys, eight, "check", "--all-namespaces")
    assert code == 1
    assert (f"namespace {eight.namespace}: 8 good" in out
            and f"  metadata: namespace {eight.namespace!r} was written with fit-store schema 0" in out)
    code, out, _ = _cli(capsys, eight, "check", "--repair")
    assert code == 1 and "metadata is not repaired" in out
    assert c.hget(meta, "schema_version") == b"0"  # never rewritten


def test_metadata_that_lacks_a_field_is_reported(capsys, eight):
    c = eight.client
    c.hdel(f"{eight.key_prefix}meta", "created")
    code, out, _ = _cli(capsys, eight, "check")
    assert code == 1 and f"metadata: {eight.key_prefix}meta has field created=None, expected a float" in out
    c.delete(f"{eight.key_prefix}meta")
    code, out, _ = _cli(capsys, eight, "check")
    assert code == 1 and f"metadata: {eight.key_prefix}meta is missing though the namespace holds fits" in out
