"""`spin-ray store ...` end to end against a real redis-server."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spin_ray.cli import main
from spin_ray.store.fit_store import FitStore

from conftest import TEST_BODY_HASH


@pytest.fixture
def filled(fit_store):
    """A namespace with 100 coco fits (errors 0..198 over steps 0..9) and 10 lsp fits."""
    rng = np.random.default_rng(1)
    errors = np.arange(100) * 2.0
    for step in range(10):
        rows = np.arange(step * 10, step * 10 + 10)
        fit_store.keep_best(
            "coco", rows, rng.normal(size=(10, 72)), rng.normal(size=(10, 10)), errors[rows], step, "loop"
        )
    fit_store.keep_best("lsp", np.arange(10), np.zeros((10, 72)), np.zeros((10, 10)), np.full(10, 5.0), 0, "static")
    return fit_store


def _run(capsys, store, *argv):
    code = main(["store", argv[0], "--url", store.address.url.get_secret_value(), "--namespace", store.namespace, *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_reports_counts_sources_quantiles(capsys, filled):
    code, out, _ = _run(capsys, filled, "stats", "--json")
    assert code == 0
    stats = {d["dataset"]: d for d in json.loads(out)["datasets"]}
    assert stats["coco"]["count"] == 100 and stats["coco"]["by_source"] == {"loop": 100}
    assert stats["coco"]["above_threshold"] == 49  # errors 102..198 exceed 100
    assert stats["coco"]["error_quantiles"]["p100"] == 198.0
    assert stats["lsp"]["by_source"] == {"static": 10}
    code, out, _ = _run(capsys, filled, "stats")
    assert "coco: 100 fits (loop 100)" in out and "above threshold 100: 49 (49.0 %)" in out


def test_worst_answers_which_fits_are_bad(capsys, filled):
    code, out, _ = _run(capsys, filled, "worst", "--k", "3", "--dataset", "coco")
    assert code == 0
    assert "coco: 49 of 100 fits above 100; worst 3:" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  coco")]
    assert [(int(i), float(e)) for _, i, e in lines] == [(99, 198.0), (98, 196.0), (97, 194.0)]
    assert "spin-ray store filter --max-error 100" in out


def test_filter_writes_ids_to_keep(capsys, filled, tmp_path):
    out_path = tmp_path / "keep.csv"
    code, _, err = _run(capsys, filled, "filter", "--max-error", "10", "--out", str(out_path))
    assert code == 0
    rows = list(csv.DictReader(out_path.open()))
    coco = [int(r["index"]) for r in rows if r["dataset"] == "coco"]
    assert coco == [0, 1, 2, 3, 4, 5] and sum(r["dataset"] == "lsp" for r in rows) == 10
    assert "coco: keep 6 of 100" in err


def test_export_import_round_trip_through_cli(capsys, filled, redis_server, tmp_path):
    assert _run(capsys, filled, "export", str(tmp_path / "all.parquet"))[0] == 0
    assert _run(capsys, filled, "export", str(tmp_path / "coco.npy"), "--dataset", "coco")[0] == 0
    copy = FitStore.open(redis_server.url, filled.namespace + "-cli")
    try:
        # No --body-model-hash: a Parquet import takes the file's.
        code, out, _ = _run(capsys, copy, "import", str(tmp_path / "all.parquet"))
        assert code == 0 and "wrote 110 records" in out
        assert copy.meta.body_model_hash == TEST_BODY_HASH
        code, out, _ = _run(capsys, copy, "import", str(tmp_path / "coco.npy"), "--dataset", "coco2")
        assert code == 0 and "coco2: wrote 100 of 100 rows" in out
        np.testing.assert_array_equal(copy.read("coco2", np.arange(100)).pose, filled.read("coco", np.arange(100)).pose)
        assert copy.read("coco2", [0]).source[0] == "static"
    finally:
        copy.drop()


def test_user_errors_are_one_line_messages(capsys, filled, monkeypatch, tmp_path):
    code, _, err = _run(capsys, filled, "worst", "--dataset", "nope")
    assert code == 1 and "FitStoreError: unknown dataset 'nope'" in err
    code, _, err = _run(capsys, filled, "stats", "--dataset", "coco", "--dataset", "nope")
    assert code == 1 and "unknown dataset 'nope'" in err and "datasets with fits: coco, lsp" in err
    code, _, err = _run(capsys, filled, "export", str(tmp_path / "x.npy"))
    assert code == 1 and "exactly one --dataset" in err
    fresh = f"{filled.namespace}-new"
    code, _, err = main(["store", "import", str(tmp_path / "x.npy"), "--url", filled.address.url.get_secret_value(),
                         "--namespace", fresh, "--dataset", "coco"]), *capsys.readouterr()  # fmt: skip
    assert code == 1 and "pass --body-model-hash" in err
    monkeypatch.delenv("SPIN_RAY_REDIS_URL", raising=False)
    assert main(["store", "stats"]) == 1
    assert "no Redis URL: pass --url or set SPIN_RAY_REDIS_URL" in capsys.readouterr().err


def test_plot_writes_a_png(capsys, filled, tmp_path):
    out_path = tmp_path / "errors.png"
    code, _, _ = _run(capsys, filled, "plot", "--out", str(out_path))
    assert code == 0
    data = out_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_serve_runs_until_ctrl_c(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "spin_ray.cli", "store", "serve", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()
        export = proc.stdout.readline()
        pid = int(first.split("pid ")[1].split(")")[0])
        url = export.strip().split("=", 1)[1]
        store = FitStore.open(url, "served", body_model_hash=TEST_BODY_HASH, connect_timeout_s=5)
        assert store.keep_best("coco", [0], np.zeros((1, 72)), np.zeros((1, 10)), [1.0], 0, "gt").all()
        store.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert "ready to exit" in (tmp_path / "redis.log").read_text().lower()


def test_serve_with_password_never_prints_it(tmp_path):
    env = {**os.environ, "SPIN_RAY_REDIS_PASSWORD": "s3rve-Pw/needs%quoting"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spin_ray.cli", "store", "serve", "--data-dir", str(tmp_path),
         "--password-env", "SPIN_RAY_REDIS_PASSWORD"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        proc.stdout.readline()
        export = proc.stdout.readline()
        assert "redis://:$SPIN_RAY_REDIS_PASSWORD@127.0.0.1:" in export
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for text in (export, out, err, (tmp_path / "redis.log").read_text()):
        assert "s3rve-Pw" not in text and "needs%25quoting" not in text


def test_import_of_a_file_that_is_not_parquet_is_one_line(capsys, fit_store, tmp_path):
    bad = tmp_path / "fits.parquet"
    bad.write_bytes(b"not parquet at all")
    code, out, err = _run(capsys, fit_store, "import", str(bad))
    assert code == 1 and "is not a readable Parquet file" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["stats"], ["worst", "--k", "3"], ["filter", "--max-error", "50"], ["check"]],
                         ids=lambda argv: argv[0])
def test_a_reader_that_goes_away_ends_the_command_quietly(filled, argv):
    """`spin-ray store stats | head -1`: the reader closes the pipe; the command stops as unix tools do."""
    url = filled.address.url.get_secret_value()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spin_ray.cli", "store", *argv, "--url", url, "--namespace", filled.namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()  # before the command has printed anything: every line it prints meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_export_creates_missing_folders_and_refuses_a_read_only_one_before_reading(capsys, filled, tmp_path):
    from test_store_owner import read_only_folder

    deep = tmp_path / "not" / "yet" / "coco.npy"
    code, _, err = _run(capsys, filled, "export", str(deep), "--dataset", "coco")
    assert code == 0 and np.load(deep).shape == (100, 82) and deep.with_name("coco.errors.npy").is_file()
    folder = read_only_folder(tmp_path)
    for out in (folder / "coco.npy", folder / "deeper" / "all.parquet"):
        code, _, err = _run(capsys, filled, "export", str(out), *(["--dataset", "coco"] if out.suffix == ".npy" else []))
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"InputError: store export {out}: cannot write into {out.parent} (" in err and "choose a writable folder" in err
        assert not out.exists()


def test_the_curation_road_is_two_commands_fit_then_store_data_dir(tiny_spin_data, ray_local, tmp_path, capsys):
    """`spin-ray fit` into its embedded store, then `store worst/stats/gallery --data-dir` with no server started by hand."""
    from spin_ray.store.embedded import EmbeddedRedis

    npz = tiny_spin_data["tiny-itw"]
    data_dir = tmp_path / "fit-mine" / "redis"
    assert main(["fit", str(npz), "--output-dir", str(data_dir.parent), "--fitters", "1", "--iterations", "1",
                 "--limit", "6", "--no-progress"]) == 0
    assert f"data in {data_dir}" in capsys.readouterr().err
    assert not (data_dir / "redis.pid").exists()  # the fit's server stopped with it

    assert main(["store", "worst", "--data-dir", str(data_dir), "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "tiny-itw: " in out and len([line for line in out.splitlines() if line.startswith("  tiny-itw ")]) == 3
    assert f"--data-dir {data_dir}" in out  # the filter hint names the same store
    assert main(["store", "stats", "--data-dir", str(data_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [(d["dataset"], d["count"]) for d in stats["datasets"]] == [("tiny-itw", 6)]
    gallery = tmp_path / "gallery"
    assert main(["store", "gallery", "--data-dir", str(data_dir), "--worst", "2", "--data", f"tiny-itw={npz}",
                 "--out", str(gallery)]) == 0
    assert (gallery / "index.html").is_file() and len(list((gallery / "images").iterdir())) >= 2
    capsys.readouterr()
    assert not (data_dir / "redis.pid").exists()  # each command stopped the server it started

    # A folder a live process serves is refused with the --url hint; --url with --data-dir is one line too.
    with EmbeddedRedis(data_dir) as server:
        assert main(["store", "stats", "--data-dir", str(data_dir)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "DataDirInUseError" in err and "with --url" in err, err
        assert main(["store", "stats", "--data-dir", str(data_dir), "--url", server.url]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give --url or --data-dir, not both" in err, err
    assert main(["store", "stats", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an embedded store's folder" in err, err
