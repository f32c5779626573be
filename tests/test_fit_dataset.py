"""`spin-ray fit` through the fitter pool into the store (spin_ray/pipeline/dataset_fit.py, spin_ray/cli/fit.py).

Real parts: the session's redis-server, a local Ray, the fitter actors, the tiny rendered datasets.
The pool's fits must equal the single-process path's (`--local`) from the same start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

from spin_ray.cli import main
from spin_ray.body.frames import NO_AUG, augment_keypoints
from spin_ray.data.augment import IDENTITY_AUG, AugParams
from spin_ray.geometry import axis_angle_to_matrix
from spin_ray.pipeline.dataset_fit import rows_to_fit
from spin_ray.store.fit_store import FitStore
from spin_ray.store.files import errors_path_for

ITERATIONS = "8"  # SMPLify iterations per stage: enough to move every fit, cheap on 2 cores
SUMMARY = re.compile(r"(\d+) of (\d+) usable rows had a fit already; fitted (\d+) of (\d+) sent")


def _same_rotations(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of the rotation matrices of two (N, 72) axis-angle poses (2 pi apart is the same)."""
    to_matrix = lambda p: axis_angle_to_matrix(torch.from_numpy(p).double().reshape(-1, 3))  # noqa: E731
    return float((to_matrix(a) - to_matrix(b)).abs().max())


def _sent_and_fitted(text: str) -> tuple[int, int, int]:
    found = SUMMARY.search(text)
    assert found, text
    before, _, fitted, sent = (int(g) for g in found.groups())
    return before, sent, fitted


def test_the_no_augmentation_record_changes_nothing():
    assert np.array_equal(AugParams().as_array(), np.array(NO_AUG, np.float32))
    assert IDENTITY_AUG == AugParams()
    keypoints = torch.rand(2, 49, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(augment_keypoints(keypoints, torch.tensor([NO_AUG, NO_AUG])), keypoints)


def test_the_dataset_fit_compiles_where_it_pays_or_when_asked(tiny_spin_data, tmp_path, capsys, compiling):
    # fitting.compiled auto: 16 rows are far below compile_min_samples, so the default fits eagerly; --compiled
    # compiles anyway, equal to the eager fit to rounding; --no-compiled is eager.
    npz = tiny_spin_data["tiny-itw"]
    out = {}
    for flag, stages in (("--compiled", "compiled"), ("--no-compiled", "eager"), (None, "eager")):
        out[flag] = tmp_path / f"{flag or 'auto'}.npy"
        assert main(["fit", str(npz), "--local", "--iterations", "3", "--limit", "16", "--out", str(out[flag]),
                     "--no-progress"] + ([flag] if flag else [])) == 0
        assert f"(multistart recipe, {stages} stages)" in capsys.readouterr().out
    compiled, eager = (np.load(errors_path_for(out[f])) for f in ("--compiled", "--no-compiled"))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.load(out["--compiled"]), np.load(out["--no-compiled"]), atol=2e-3)


def test_fit_sends_only_missing_rows_and_equals_the_local_fit(tiny_spin_data, redis_server, ray_local, tmp_path,
                                                               capsys):
    npz = tiny_spin_data["tiny-itw"]
    local = tmp_path / "local.npy"
    assert main(["fit", str(npz), "--local", "--iterations", ITERATIONS, "--out", str(local), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "(multistart recipe, eager stages)" in said and re.search(r"\d+ valid \(< 100\), \d+ rejected", said), said
    table, errors = np.load(local), np.load(errors_path_for(local))
    n = len(errors)
    paper = tmp_path / "paper.npy"  # --recipe spin: the paper's SMPLify, another fit of the same rows
    assert main(["fit", str(npz), "--local", "--iterations", ITERATIONS, "--out", str(paper), "--no-progress",
                 "--recipe", "spin", "--limit", "8"]) == 0
    assert "(spin recipe, eager stages)" in capsys.readouterr().out
    assert not np.allclose(np.load(errors_path_for(paper)), errors[:8])
    namespace = f"fit-{uuid.uuid4().hex[:8]}"
    # A store a killed run left half full: the first 40 rows hold the local fits.
    with FitStore.open(redis_server.url, namespace, body_model_hash=_body_hash()) as store:
        store.keep_best("tiny-itw", np.arange(40), table[:40, :72], table[:40, 72:], errors[:40], 0, "static")
    capsys.readouterr()
    flags = ["--store", redis_server.url, "--namespace", namespace, "--fitters", "2", "--iterations", ITERATIONS,
             "--no-progress"]
    assert main(["fit", str(npz), *flags]) == 0
    before, sent, fitted = _sent_and_fitted(capsys.readouterr().out)
    assert (before, sent, fitted) == (40, n - 40, n - 40)

    exported = tmp_path / "pool.npy"
    assert main(["store", "export", str(exported), "--url", redis_server.url, "--namespace", namespace,
                 "--dataset", "tiny-itw", "--size", str(n)]) == 0
    pool_table, pool_errors = np.load(exported), np.load(errors_path_for(exported))
    assert np.isfinite(pool_errors).all()
    np.testing.assert_allclose(pool_errors, errors, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pool_table[:, 72:], table[:, 72:], rtol=0, atol=1e-3)
    assert _same_rotations(pool_table[:, :72], table[:, :72]) < 1e-3
    with FitStore.open(redis_server.url, namespace) as store:
        assert set(store.read("tiny-itw", np.arange(40, n)).source) == {"static"}

    # Nothing is worse than the worst: a rerun with --refit-above sends nothing and starts no fitter.
    capsys.readouterr()
    assert main(["fit", str(npz), *flags, "--refit-above", f"{pool_errors.max()}"]) == 0
    assert _sent_and_fitted(capsys.readouterr().out) == (n, 0, 0)
    with FitStore.open(redis_server.url, namespace) as store:
        bound = float(np.median(pool_errors))
        assert np.array_equal(rows_to_fit(store, "tiny-itw", np.ones(n, bool), bound, chunk=7),
                              np.flatnonzero(pool_errors > bound))
        usable = np.arange(n) % 3 > 0
        assert np.array_equal(rows_to_fit(store, "tiny-itw", usable, bound),
                              np.flatnonzero(usable & (pool_errors > bound)))
        store.drop()


def _body_hash() -> str:
    from spin_ray.body.body_model import BodyModel

    return BodyModel.embedded().identity


def test_fit_refuses_pool_flags_with_local(tiny_spin_data, tmp_path, capsys):
    out = tmp_path / "x.npy"
    assert main(["fit", str(tiny_spin_data["tiny-itw"]), "--local", "--fitters", "2", "--out", str(out)]) == 1
    assert "--fitters" in capsys.readouterr().err and not out.exists()
    # An option given but unused is refused: a local fit has no store to name the dataset in.
    assert main(["fit", str(tiny_spin_data["tiny-itw"]), "--dataset-name", "mine", "--out", str(out)]) == 1
    assert "--dataset-name names the dataset in the fit store" in capsys.readouterr().err and not out.exists()
    # A name the store cannot hold is refused before any store is reached (this URL answers nobody).
    assert main(["fit", str(tiny_spin_data["tiny-itw"]), "--store", "redis://127.0.0.1:1", "--dataset-name",
                 "bad:name"]) == 1
    err = capsys.readouterr().err
    assert "dataset name 'bad:name' is not allowed" in err and "cannot reach" not in err
    assert main(["fit", str(tiny_spin_data["tiny-itw"]), "--local"]) == 1
    assert "--out" in capsys.readouterr().err


def _tiled(npz, times: int, path):
    """The tiny split repeated `times` times: enough rows that a kill lands halfway."""
    from spin_ray.data.spin_format import load_spin_npz, write_spin_npz

    data = load_spin_npz(npz, npz.parent)
    kp = data.keypoints49()
    tile = lambda a: np.concatenate([a] * times)  # noqa: E731
    return write_spin_npz(path, imgname=tile(data.imgname), center=tile(data.center), scale=tile(data.scale),
                          part=tile(kp[:, 25:]), openpose=tile(kp[:, :25]))


def _coco_file(npz, times: int, path):
    """A COCO keypoint file of the tiny split's people, each image annotated `times` times (several people per image)."""
    from test_data_import import COCO_FROM_PART, _tight_box

    data = np.load(npz)
    images = [{"id": i, "file_name": str(name), "width": 224, "height": 224} for i, name in enumerate(data["imgname"])]
    annotations = []
    for copy in range(times):
        for i, part in enumerate(data["part"]):
            coco = np.concatenate([part[COCO_FROM_PART, :2], 2.0 * (part[COCO_FROM_PART, 2:] > 0)], axis=1)
            annotations.append({"id": copy * len(images) + i, "image_id": i, "iscrowd": 0, "category_id": 1,
                                "bbox": _tight_box(coco[coco[:, 2] > 0]), "keypoints": coco.reshape(-1).tolist()})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


@pytest.mark.slow
def test_killed_fit_finishes_the_rest_when_run_again(tiny_spin_data, tmp_path, capsys):
    """The issue's path: a COCO file, `data import`, `fit` with 2 fitters killed a quarter in, `fit` again, export."""
    coco = _coco_file(tiny_spin_data["tiny-itw"], 8, tmp_path / "people.json")
    npz = tmp_path / "tiled.npz"
    assert main(["data", "import", str(coco), "--format", "coco", "--images", str(tiny_spin_data["tiny-itw"].parent),
                 "--out", str(npz)]) == 0, capsys.readouterr()
    from spin_ray.data.spin_format import load_spin_npz

    n = len(load_spin_npz(npz, tiny_spin_data["tiny-itw"].parent))
    assert n > 600  # nearly all of the 768 people pass the import's filters
    out_dir = tmp_path / "fit"
    command = [sys.executable, "-m", "spin_ray.cli", "fit", str(npz), "--fitters", "2", "--output-dir", str(out_dir),
               "--namespace", "killed", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in first.stderr:  # the embedded store says where it listens before the pool starts
            found = re.match(r"fit store: embedded Redis at (\S+),", line)
            if found:
                url = found.group(1)
                break
        assert url is not None
        with FitStore.open(url, "killed") as store:
            deadline = time.monotonic() + 300
            while store.count("tiled") < n // 4:
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.05)
            first.send_signal(signal.SIGTERM)
            _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "run the same command again" in err
    assert not (out_dir / "redis" / "redis.pid").exists()  # the embedded Redis stopped with the run

    second = subprocess.run([*command, "--out", str(tmp_path / "pool.npy")], capture_output=True, text=True,
                            env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    before, sent, fitted = _sent_and_fitted(second.stdout)
    assert n // 4 <= before < n and sent == fitted == n - before  # only the rest was fitted the second time

    local = tmp_path / "local.npy"
    assert main(["fit", str(npz), "--local", "--out", str(local), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(errors_path_for(tmp_path / "pool.npy")), np.load(errors_path_for(local)),
                               rtol=0, atol=1e-4)
    assert _same_rotations(np.load(tmp_path / "pool.npy")[:, :72], np.load(local)[:, :72]) < 1e-3


def test_checkpoint_starts_are_the_networks_predictions_on_canonical_crops(tiny_spin_data, tmp_path, capsys):
    from spin_ray.config import RunConfig
    from spin_ray.eval.evaluate import evaluation_dataset
    from spin_ray.geometry import matrix_to_axis_angle
    from spin_ray.model.hmr import HMR
    from spin_ray.cli.fit import network_starts
    from spin_ray.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = RunConfig.model_validate({"data": {"img_res": 64}})
    model = HMR.from_config(cfg.network, cfg.body.num_betas).eval()
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "step": 7,
                                                         "config": cfg.model_dump(mode="json")})
    npz = tiny_spin_data["tiny-itw"]
    rows = np.array([0, 5, 9])
    pose, betas, step, missed = network_starts(checkpoint, rows, npz, npz.parent, "tiny-itw", _body_hash(), 2)
    assert step == 7 and missed == 0
    assert np.isnan(pose[1]).all() and np.isfinite(pose[rows]).all()  # rows not asked for are left to the caller
    crops = evaluation_dataset(npz, npz.parent, 64)
    with torch.no_grad():
        out = model(torch.stack([crops[int(r)]["img"] for r in rows]))
    np.testing.assert_allclose(pose[rows], matrix_to_axis_angle(out.rotmat).reshape(3, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(betas[rows], out.betas.numpy(), atol=1e-5)

    out_file = tmp_path / "net.npy"
    assert main(["fit", str(npz), "--local", "--checkpoint", str(checkpoint), "--limit", "8", "--iterations", "2",
                 "--out", str(out_file), "--no-progress"]) == 0
    assert np.isfinite(np.load(errors_path_for(out_file))).all()


def test_two_datasets_with_one_file_name_never_share_fits(tiny_spin_data, redis_server, ray_local, tmp_path, capsys):
    # Once, b/data.npz "had a fit already" for every row: a/data.npz's, exported as b's with exit 0.
    from tests.test_dataset_names import _rows

    src = tiny_spin_data["tiny-itw"]
    a = _rows(src, np.arange(4), tmp_path / "a" / "data.npz")
    b = _rows(src, np.arange(4, 8), tmp_path / "b" / "data.npz")
    flags = ["--store", redis_server.url, "--namespace", f"names-{uuid.uuid4().hex[:8]}", "--iterations", "1",
             "--fitters", "1", "--no-progress", "--image-root", str(src.parent)]
    assert main(["fit", str(a), *flags, "--out", str(tmp_path / "a" / "fits.npy")]) == 0
    capsys.readouterr()
    b_out = tmp_path / "b" / "fits.npy"
    assert main(["fit", str(b), *flags, "--out", str(b_out)]) == 1
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "--dataset-name" in err and len(err.strip().splitlines()) == 1, err
    assert not b_out.exists()
    # Under its own name b is fitted from scratch; a's rows are still a's.
    assert main(["fit", str(b), *flags, "--dataset-name", "data-b", "--out", str(b_out)]) == 0
    assert _sent_and_fitted(capsys.readouterr().out)[:2] == (0, 4)
    a_fits = np.load(tmp_path / "a" / "fits.npy")
    assert not np.allclose(np.load(b_out)[:, 72:], a_fits[:, 72:])


def test_fit_checks_the_output_folder_before_fitting(tiny_spin_data, tmp_path, capsys):
    # Once, a bad --out folder failed with a traceback after the whole fit, losing it.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    npz = str(tiny_spin_data["tiny-itw"])
    assert main(["fit", npz, "--local", "--out", str(blocker / "fits.npy"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"--out {blocker / 'fits.npy'}: cannot write into {blocker}" in err and "Traceback" not in err
    assert "fitted" not in capsys.readouterr().out
    nested = tmp_path / "new" / "deeper" / "fits.npy"  # a missing folder is made, as before
    assert main(["fit", npz, "--local", "--out", str(nested), "--limit", "2", "--iterations", "0",
                 "--no-progress"]) == 0
    assert nested.exists()


def test_iterations_change_the_default_recipes_fit(tiny_spin_data, tmp_path, capsys):
    npz = str(tiny_spin_data["tiny-itw"])
    errors = {}
    for n in ("0", "2"):
        out = tmp_path / f"fits{n}.npy"
        assert main(["fit", npz, "--local", "--out", str(out), "--limit", "3", "--iterations", n,
                     "--no-progress"]) == 0
        assert "(multistart recipe, eager stages)" in capsys.readouterr().out
        errors[n] = np.load(errors_path_for(out))
    assert not np.allclose(errors["0"], errors["2"])


def test_the_image_root_note_says_check_when_it_was_given(tiny_spin_data, tmp_path, capsys):
    npz = str(tiny_spin_data["tiny-itw"])
    args = ["fit", npz, "--local", "--out", str(tmp_path / "f.npy"), "--limit", "1", "--iterations", "0",
            "--no-progress"]
    assert main(args) == 0  # the images lie beside the npz: no note
    assert "image-root" not in capsys.readouterr().err
    assert main([*args, "--image-root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "check --image-root" in err and "give --image-root" not in err


def test_a_full_store_stops_the_fit_with_one_line_and_exit_1(tiny_spin_data, ray_local, tmp_path, capsys):
    # Once: exit 0, "512 unfinished ... run again to retry" (it cannot help) and counts that disagreed.
    import redis

    from spin_ray.store.server import EmbeddedRedis

    npz = str(tiny_spin_data["tiny-itw"])
    with EmbeddedRedis(tmp_path / "redis") as server:
        flags = ["--store", server.url, "--namespace", "full", "--iterations", "1", "--fitters", "1",
                 "--no-progress"]
        assert main(["fit", npz, *flags, "--limit", "3"]) == 0
        capsys.readouterr()
        redis.Redis.from_url(server.url).config_set("maxmemory", 1)  # every write from now on is refused
        assert main(["fit", npz, *flags]) == 1
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "StoreFullError" in err[0] and "maxmemory" in err[0], captured.err
        assert "tiny-itw: 3 of " in err[0] and "usable rows have a fit" in err[0]
        assert "run again to retry" not in captured.out + captured.err


def test_fit_local_says_it_fits_on_the_cpu_when_the_config_names_a_gpu(tiny_spin_data, tmp_path, capsys):
    # Once, `fit --local` with device: cuda ran on the CPU without a word.
    config = tmp_path / "gpu.yaml"
    config.write_text("device: cuda\n")
    out = tmp_path / "f.npy"
    assert main(["fit", str(tiny_spin_data["tiny-itw"]), "--local", "--config", str(config), "--out", str(out),
                 "--limit", "1", "--iterations", "0", "--no-progress"]) == 0
    assert "--local fits on this process's CPU; the config's device: cuda" in capsys.readouterr().err
    assert out.exists()
