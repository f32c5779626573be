"""The whole loop on Ray: async training end to end, resume, back-pressure, and a Redis outage."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import yaml

from spin_ray.config import config_from_dict
from spin_ray.cli.launch import launch, main as launch_main
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import EmbeddedRedis


def tiny_config(tmp_path, data, url, **overrides):
    """A run config on the tiny rendered datasets, small enough to train in seconds."""
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "store": {"url": url, "namespace": f"launch-{uuid.uuid4().hex[:8]}"},
        "fitting": {"iterations_camera": 20, "iterations_body": 20},
        "data": {"img_res": 64, "datasets": [
            {"name": "tiny-3d", "npz": str(data["tiny-3d"]), "image_root": str(data["tiny-3d"].parent)},
            {"name": "tiny-itw", "npz": str(data["tiny-itw"]), "image_root": str(data["tiny-itw"].parent)},
        ]},
        "network": {"backbone": "resnet18"},
        "train": {"mode": "async", "steps": 24, "batch_size": 16, "log_every": 4, "checkpoint_every": 12,
                  "init_store_from_static_fits": True, "report_images": 2,
                  "heldout": {"name": "tiny-test", "npz": str(data["tiny-test"]),
                              "image_root": str(data["tiny-test"].parent)}},
        "pipeline": {"num_fitters": 1, "startup_timeout_s": 120},
    }
    for section, values in overrides.items():
        cfg[section].update(values)
    return config_from_dict(cfg)


def test_async_run_end_to_end_then_resume(tmp_path, tiny_spin_data, redis_server, ray_local):
    cfg = tiny_config(tmp_path, tiny_spin_data, redis_server.url)
    summary = launch(cfg, progress=False)
    assert summary["steps"] == 24
    pool = summary["pipeline"]["pool"]
    assert pool["completed"] > 0 and pool["samples_fitted"] > 0 and pool["written"] > 0
    assert pool["in_flight"] == 0 and pool["lost"] == 0
    # 24 steps x 16 samples over 192 samples: later visits read fits the pool wrote.
    assert summary["pipeline"]["reads"]["loop_fits_used"] > 0
    store = FitStore.open(redis_server.url, cfg.store.namespace)
    loop = [store.read(name, np.arange(96)) for name in ("tiny-3d", "tiny-itw")]
    assert sum(int((fits.source == "loop").sum()) for fits in loop) > 0
    assert all(fits.found.all() for fits in loop)  # static fits first, loop fits replace the worse ones
    assert (tmp_path / "out" / "report.png").is_file()

    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 30})})
    resumed = launch(more, resume=tmp_path / "out" / "checkpoints" / "last.pt", progress=False)
    assert resumed["steps"] == 30
    store.drop()


def test_slow_fitters_never_hold_back_the_trainer(tmp_path, tiny_spin_data, redis_server, ray_local):
    cfg = tiny_config(tmp_path, tiny_spin_data, redis_server.url,
                      train={"steps": 12, "init_store_from_static_fits": False, "report_images": 0},
                      pipeline={"fitter_class": "spin_ray_sim.fitters:BusyFitter", "max_in_flight_per_fitter": 1,
                                "busy_policy": "drop"})
    summary = launch(cfg, progress=False)
    pool = summary["pipeline"]["pool"]
    assert summary["steps"] == 12
    assert pool["peak_in_flight"] <= 1
    assert pool["dropped"] > 0
    # Waiting for each request would make the training loop take at least 12 x 10 s.
    assert summary["train_seconds"] < 60.0


def test_bad_config_exits_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {mode: asink}\n")
    assert launch_main([str(bad)]) == 1
    assert "train.mode" in capsys.readouterr().err


def test_resources_that_can_never_come_are_refused_before_any_synthetic_data_is_built(tmp_path, redis_server,
                                                                                      ray_local, capsys):
    """Issue 26 item 12: trainer_num_gpus: 4 on a machine without GPUs spent ~60 s building data first."""
    cfg = config_from_dict({
        "name": "no-gpu", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "store": {"url": redis_server.url, "namespace": f"launch-{uuid.uuid4().hex[:8]}"},
        "synth": {"sizes": {"synth-3d": 4, "synth-itw": 0, "synth-test": 4}, "image_size": 64, "workers": 1},
        "train": {"mode": "async", "steps": 2, "batch_size": 2},
        "pipeline": {"num_fitters": 1, "trainer_num_gpus": 4},
    })
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    assert launch_main([str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "spin_ray.launch: PipelineError: pipeline.trainer_num_gpus: 4, but the largest node has 0 GPUs"), err
    synth = tmp_path / "cache" / "synth"  # where the generator writes (and its partial folders)
    assert not synth.exists() or not any(synth.iterdir()), sorted(synth.rglob("*"))[:5]


@pytest.mark.slow  # the embedded server heals itself in the default run: tests/test_faults.py
def test_redis_killed_mid_run_the_run_waits_and_finishes(tmp_path, tiny_spin_data):
    """kill -9 the store's server mid-run, restart it on the same data dir: the run completes."""
    data_dir = tmp_path / "redis"
    server = EmbeddedRedis(data_dir, max_restarts=0).start()  # the test restarts it, not the watchdog
    port = server.port
    cfg = tiny_config(tmp_path, tiny_spin_data, server.url,
                      train={"steps": 60, "report_images": 0, "checkpoint_every": 1000})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    run = subprocess.Popen([sys.executable, "-m", "spin_ray.launch", str(config_file), "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    restarted = None
    try:
        store = FitStore.open(server.url, cfg.store.namespace, connect_timeout_s=60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            loop_writes = sum(int((store.read(n, np.arange(96)).source == "loop").sum())
                              for n in ("tiny-3d", "tiny-itw") if n in store.datasets())
            if loop_writes >= 16:
                break
            time.sleep(0.5)
        assert run.poll() is None, "the run ended before the outage could be staged"
        time.sleep(1.5)  # what is acknowledged now must survive (AOF fsync every second)
        before = {n: store.read(n, np.arange(96)) for n in ("tiny-3d", "tiny-itw")}
        store.close()
        os.kill(server.pid, signal.SIGKILL)
        time.sleep(3.0)
        server.stop()  # gives up the data dir's owner lock: one owner at a time
        restarted = EmbeddedRedis(data_dir, port=port).start()
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
        assert "60 steps" in output
        after = FitStore.open(restarted.url, cfg.store.namespace)
        for name, old in before.items():
            new = after.read(name, np.arange(96))
            assert new.found[old.found].all()
            assert (new.error[old.found] <= old.error[old.found] + 1e-9).all()
    finally:
        if run.poll() is None:
            run.kill()
        for s in (restarted, server):
            if s is not None:
                s.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_lookahead_gives_fresh_fits_and_the_schedule_resizes_the_pool(tmp_path, tiny_spin_data, redis_server,
                                                                       ray_local):
    cfg = tiny_config(tmp_path, tiny_spin_data, redis_server.url,
                      train={"steps": 14, "report_images": 0, "init_store_from_static_fits": False},
                      pipeline={"lookahead_steps": 3, "fitter_schedule": {4: 2}})
    summary = launch(cfg, progress=False)
    reads = summary["pipeline"]["reads"]
    # Each batch was fitted from predictions made 3 steps before it trained, so the fits that
    # supervise it are at most a few steps old (without lookahead they come from the previous epoch).
    assert reads["loop_fits_used"] > 0
    assert reads["mean_loop_fit_age_steps"] <= 6
    assert summary["pipeline"]["fitters_at_end"] == 2


def test_pool_resize_cli_reaches_the_cluster_and_names_a_missing_run(ray_local):
    """From another process, like an operator's shell on the head node."""
    done = subprocess.run([sys.executable, "-m", "spin_ray.cli", "pool", "resize", "2", "--run", "no-such-run"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address})
    assert done.returncode == 1
    assert "no running trainer named 'trainer:no-such-run'" in done.stderr, done.stderr[-2000:]
