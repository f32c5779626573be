"""Data-parallel trainers on Ray Train (CPU, gloo, 2 workers) sharing one fitter pool and one fit store."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from spin_ray.config import config_from_dict
from spin_ray.errors import ConfigError
from spin_ray.cli.launch import launch
from spin_ray.pipeline.train_workers import worker_dir, worker_setup
from spin_ray.store.fit_store import FitStore
from spin_ray.train.checkpoint import load_checkpoint

NO_AUGMENTATION = {"rot_factor": 0.0, "rot_prob": 0.0, "scale_factor": 0.0, "noise_factor": 0.0, "flip_prob": 0.0}


def tiny_config(tmp_path, spin_data, url, datasets=("tiny-itw",), **overrides):
    """Two CPU trainer workers on the tiny rendered datasets (resnet18 at 64 px, batch 8 = 2 x 4)."""
    cfg = {
        "name": f"dp-{uuid.uuid4().hex[:6]}", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "store": {"url": url, "namespace": f"dp-{uuid.uuid4().hex[:8]}"},
        "fitting": {"iterations_camera": 10, "iterations_body": 10},
        "data": {"img_res": 64, "datasets": [
            {"name": name, "npz": str(spin_data[name]), "image_root": str(spin_data[name].parent)} for name in datasets]},
        "network": {"backbone": "resnet18"},
        "train": {"mode": "async", "workers": 2, "steps": 30, "batch_size": 8, "log_every": 5,
                  "checkpoint_every": 10, "report_images": 0, "max_failures": 2,
                  "heldout": {"name": "tiny-test", "npz": str(spin_data["tiny-test"]),
                              "image_root": str(spin_data["tiny-test"].parent)}},
        "pipeline": {"num_fitters": 1, "max_in_flight_per_fitter": 2, "startup_timeout_s": 120},
    }
    for section, values in overrides.items():
        cfg[section].update(values)
    return config_from_dict(cfg)


def read_steps(output_dir, rank: int) -> list[dict]:
    """A worker's step log: samples trained and those supervised by a stored fit, per step."""
    lines = (worker_dir(output_dir, rank) / "steps.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_batch_size_must_split_over_workers(tmp_path, tiny_spin_data):
    with pytest.raises(ConfigError, match="does not split evenly over 3 workers"):
        tiny_config(tmp_path, tiny_spin_data, "redis://127.0.0.1:1", train={"workers": 3})


def test_two_workers_share_one_pool_and_one_store(tmp_path, tiny_spin_data, redis_server, ray_local):
    cfg = tiny_config(tmp_path, tiny_spin_data, redis_server.url)
    summary = launch(cfg, progress=False)
    assert summary["steps"] == 30 and summary["mode"] == "async"
    assert summary["evaluation"] is not None and np.isfinite(summary["final_loss"])
    workers = {w["rank"]: w for w in summary["workers"]}
    assert sorted(workers) == [0, 1] and workers[0]["pid"] != workers[1]["pid"]
    assert all(w["steps_run"] == 30 and w["samples"] == 30 * 4 for w in workers.values())

    # One pool for both: both submitted, both got fits back, and the pool's in-flight bound held overall.
    pipeline = summary["pipeline"]
    assert pipeline["workers"] == 2
    assert set(pipeline["by_worker"]["submitted"]) == {0, 1}
    assert all(n > 0 for n in pipeline["by_worker"]["samples_fitted"].values())
    assert pipeline["pool"]["peak_in_flight"] <= 2 and pipeline["pool"]["in_flight"] == 0

    # The shards partition every step's batch: no sample twice in one step, 8 per step between them.
    steps = {rank: read_steps(cfg.output_dir, rank) for rank in (0, 1)}
    for line0, line1 in zip(steps[0], steps[1]):
        assert line0["step"] == line1["step"]
        both = [tuple(s) for s in line0["samples"] + line1["samples"]]
        assert len(both) == 8

    # One namespace: fits from samples only worker 0 trained and from samples only worker 1 trained.
    seen = {rank: {tuple(s) for line in steps[rank] for s in line["samples"]} for rank in (0, 1)}
    store = FitStore.open(redis_server.url, cfg.store.namespace)
    for rank in (0, 1):
        only = sorted(i for d, i in seen[rank] - seen[1 - rank])
        assert only, f"worker {rank} trained no sample of its own"
        fits = store.read("tiny-itw", np.array(only))
        assert fits.found.any() and (fits.source[fits.found] == "loop").all()

    # A fit written from worker 0's batch supervised worker 1 when it met that sample (the store
    # started empty and the sample was never in worker 1's batches before).
    crossed = []
    earlier = {0: set(), 1: set()}
    for line0, line1 in zip(steps[0], steps[1]):
        for sample in map(tuple, line1["stored_fit"]):
            if sample in earlier[0] and sample not in earlier[1]:
                crossed.append((line1["step"], sample))
        earlier[0] |= {tuple(s) for s in line0["samples"]}
        earlier[1] |= {tuple(s) for s in line1["samples"]}
    assert crossed, "worker 1 never read a fit made from worker 0's predictions"

    # Rank 0's checkpoint is a single trainer's: the global stream position, bare (un-wrapped) weights.
    payload = load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "last.pt")
    assert payload["step"] == 30 and payload["samples_consumed"] == 30 * 8
    assert not any(key.startswith("module.") for key in payload["model"])
    store.drop()


def _grads(run) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in run.trainer.network.parameters() if p.grad is not None])


def test_two_workers_of_batch_b_step_like_one_worker_of_batch_2b(tmp_path, tiny_spin_data, ray_local):
    """DDP's averaged gradient over 2 x 4 samples equals one trainer's gradient over the same 8 samples."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = tiny_config(tmp_path, tiny_spin_data, "redis://unused", datasets=("tiny-3d",),
                      train={"mode": "2d", "steps": 1, "heldout": None},
                      data=NO_AUGMENTATION, network={"dropout": 0.0, "freeze_batchnorm": True})
    out = tmp_path / "grads"
    out.mkdir()

    def one_step(config):
        from spin_ray.config import config_from_dict
        from spin_ray.pipeline.train_workers import worker_setup

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        run = worker_setup(config_from_dict(config["cfg"]), rank, world, log_steps=False)
        batch = next(iter(run.loader))
        run.trainer.train_step(batch)
        grads = torch.cat([p.grad.flatten() for p in run.trainer.network.parameters() if p.grad is not None])
        torch.save({"grads": grads, "index": batch["index"]}, Path(config["out"]) / f"rank-{rank}.pt")
        ray.train.report({})

    TorchTrainer(one_step, train_loop_config={"cfg": cfg.model_dump(mode="json"), "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2), torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(name="grads", storage_path=str(tmp_path / "ray_train"))).fit()
    ranks = [torch.load(out / f"rank-{r}.pt") for r in (0, 1)]

    single = worker_setup(cfg, 0, 1, log_steps=False)  # the same config, one worker, batch 8
    batch = next(iter(single.loader))
    single.trainer.train_step(batch)
    reference = _grads(single)

    assert sorted(torch.cat([r["index"] for r in ranks]).tolist()) == sorted(batch["index"].tolist())
    assert len(set(ranks[0]["index"].tolist()) & set(ranks[1]["index"].tolist())) == 0
    assert torch.equal(ranks[0]["grads"], ranks[1]["grads"])  # all-reduced: the same on every worker
    assert reference.abs().max() > 0
    error = (ranks[0]["grads"] - reference).norm() / reference.norm()
    assert error < 1e-4, f"relative gradient difference {error:.2e}"
    # Not vacuous: one worker's own half-batch gradient is far from the full batch's.
    half = worker_setup(cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 4})}),
                        0, 1, log_steps=False)
    half.trainer.train_step(next(iter(half.loader)))
    assert (_grads(half) - reference).norm() / reference.norm() > 1e-2


def test_killed_worker_restarts_from_the_last_checkpoint(tmp_path, tiny_spin_data, redis_server, ray_local):
    cfg = tiny_config(tmp_path, tiny_spin_data, redis_server.url, train={"steps": 24, "checkpoint_every": 6})
    killed: dict[str, int] = {}

    def past_first_checkpoint() -> bool:
        # Ray Train registers a reported checkpoint when its controller next polls the workers, and
        # only then writes this snapshot (Ray 2.60's name): a kill before it would restart from scratch.
        return any((Path(cfg.output_dir) / "ray_train").glob("*/checkpoint_manager_snapshot.json"))

    def kill_rank_1_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not past_first_checkpoint():
            time.sleep(0.2)
        info = worker_dir(cfg.output_dir, 1) / "worker.json"
        if info.is_file():
            killed["pid"] = json.loads(info.read_text())["pid"]
            os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1_after_a_checkpoint, daemon=True)
    killer.start()
    summary = launch(cfg, progress=False)
    killer.join(timeout=10)
    assert "pid" in killed, "no checkpoint appeared, so no worker was killed"
    assert summary["steps"] == 24
    workers = {w["rank"]: w for w in summary["workers"]}
    assert workers[1]["pid"] != killed["pid"]  # a new worker finished the run
    resumed = {w["resumed_from_step"] for w in workers.values()}
    assert len(resumed) == 1 and (step := resumed.pop()) is not None and step > 0 and step % 6 == 0
    assert all(w["steps_run"] == 24 - step for w in workers.values())
    payload = load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "last.pt")
    assert payload["step"] == 24 and payload["samples_consumed"] == 24 * 8
    FitStore.open(redis_server.url, cfg.store.namespace).drop()


def test_cluster_config_places_its_trainer_workers_and_fitters_on_the_gpu_nodes():
    import yaml

    from spin_ray.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "cluster.yaml")
    cluster = yaml.safe_load((root / "deploy" / "ray-cluster.yaml").read_text())
    assert cfg.train.workers > 1 and cfg.pipeline.trainer_num_gpus == 1 and cfg.device.startswith("cuda")
    assert cfg.train.batch_size % cfg.train.workers == 0
    nodes = [t for t in cluster["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    gpus_per_node = max(t["resources"]["GPU"] for t in nodes)
    node_cpus = max(t["resources"]["CPU"] for t in nodes)
    assert cfg.pipeline.trainer_num_cpus <= node_cpus
    trainer_nodes = cfg.train.workers * cfg.pipeline.trainer_num_gpus / gpus_per_node
    fitters_per_node = min(gpus_per_node // cfg.pipeline.fitter_num_gpus, node_cpus // cfg.pipeline.fitter_num_cpus)
    fitter_nodes = -(-cfg.pipeline.num_fitters // fitters_per_node)
    assert trainer_nodes + fitter_nodes <= sum(t["max_workers"] for t in nodes) <= cluster["max_workers"]
