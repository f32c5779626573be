"""The autoscaling scenario: a stand-in fitter pool on fake GPU nodes grows, loses a node mid-run, shrinks.

Run it in a process of its own (it connects the process to the fake cluster's Ray):
`python -m spin_ray_sim.scale.autoscale_run --redis-url URL --namespace NS --root DIR --out result.json`.
The result records the GPU-node count over time, the pool's outcome counts, and which samples the
store holds, so a test can assert that nodes were added and removed and that no fit was lost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.fit_store import FitStore
from spin_ray_sim.scale.fake_cluster import FakeAutoscalingCluster, FakeClusterSpec, NodeType
from spin_ray_sim.standin_pool import StandinPool

DATASET = "scale"
BODY_HASH = "5ca1e0000000000d"


@dataclass
class ScenarioSizes:
    """How big the scenario is: small enough for CI on 2 cores (each node is a raylet plus agents)."""

    gpus_per_node: float = 2.0
    max_nodes: int = 3
    fitter_num_gpus: float = 0.5
    fitters_small: int = 2  # one node
    fitters_large: int = 6  # two nodes
    requests: int = 36
    batch: int = 16
    kill_after: int = 6  # requests submitted before a node is killed
    gpu_s_per_batch: float = 0.5  # 1 s per request on a 0.5-GPU fitter
    idle_timeout_s: float = 6.0
    heartbeat_timeout_s: int = 15  # the autoscaler replaces a node silent this long
    phase_timeout_s: float = 240.0


@dataclass
class ScenarioResult:
    """What happened, for the test and for SCALING.md."""

    timeline: list[tuple[float, str, int]] = field(default_factory=list)  # (seconds, event, GPU nodes)
    node_counts: list[tuple[float, int]] = field(default_factory=list)  # (seconds, GPU nodes) every second
    nodes_at_start: int = 0
    nodes_small: int = 0
    nodes_large: int = 0
    nodes_peak: int = 0
    nodes_after_shrink: int = 0
    killed_node: str = ""
    fitters_on_killed_node: int = 0
    processes_killed: int = 0
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    lost: int = 0
    resubmitted: int = 0
    restarts: int = 0
    samples: int = 0
    samples_in_store: int = 0
    seconds: float = 0.0


def gpu_nodes() -> int:
    """Alive nodes that advertise a GPU."""
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def scenario_config(sizes: ScenarioSizes) -> RunConfig:
    """Stand-in fitters holding a GPU fraction and no CPU (the fake nodes' CPUs are not real either)."""
    config = RunConfig()
    pipeline = config.pipeline
    pipeline.num_fitters = sizes.fitters_small
    pipeline.fitter_num_gpus = sizes.fitter_num_gpus
    pipeline.fitter_num_cpus = 0.0
    pipeline.busy_policy = "block"
    pipeline.startup_timeout_s = sizes.phase_timeout_s
    pipeline.block_timeout_s = sizes.phase_timeout_s
    config.fitting.batch_size = sizes.batch
    return config


def _request(step: int, batch: int) -> FitRequest:
    """Request `step` names samples step*batch ... step*batch + batch - 1 (all distinct)."""
    rows = np.arange(step * batch, (step + 1) * batch)
    keypoints = np.zeros((batch, 49, 3), np.float32)
    return FitRequest.build(step, DATASET, rows, np.zeros((batch, 72)), np.zeros((batch, 10)),
                            np.tile([0.0, 0.0, 40.0], (batch, 1)), keypoints, np.zeros((batch, 6)))


def _wait_nodes(predicate, pool: StandinPool, timeout_s: float, what: str) -> int:
    """Poll the pool and the node count until predicate(count) holds; return the count."""
    deadline = time.monotonic() + timeout_s
    while True:
        pool.poll()
        count = gpu_nodes()
        if predicate(count):
            return count
        if time.monotonic() > deadline:
            raise PipelineError(f"autoscale scenario: {what} did not happen within {timeout_s:.0f} s "
                                f"({count} GPU nodes; pool {pool.metrics()})")
        time.sleep(1.0)


def _node_of_fewest_fitters(pool: StandinPool) -> tuple[str, int]:
    """The GPU node holding the fewest (but at least one) of the pool's fitters, and how many it holds."""
    handles = list(pool.fitter_handles().values())
    nodes = ray.get([h.node_id.remote() for h in handles], timeout=60)
    counts = {n: nodes.count(n) for n in set(nodes)}
    node = min(counts, key=lambda n: (counts[n], n))
    return node, counts[node]


def _start_pool(config: RunConfig, store: FitStore, gpu_s_per_batch: float) -> StandinPool:
    """The scenario's pool; on a loaded machine a fake node's first worker can die while starting, so try twice."""
    try:
        return StandinPool(config, store.address, name="autoscale", gpu_s_per_batch=gpu_s_per_batch)
    except PipelineError as err:
        print(f"pool start failed once ({err}); retrying", flush=True)
        return StandinPool(config, store.address, name="autoscale-retry", gpu_s_per_batch=gpu_s_per_batch)


def run_scenario(cluster: FakeAutoscalingCluster, store: FitStore, sizes: ScenarioSizes) -> ScenarioResult:
    """Grow, kill a node under load, drain, shrink; record node counts and the pool's outcome counts."""
    result = ScenarioResult()
    start = time.monotonic()

    def mark(event: str) -> int:
        count = gpu_nodes()
        result.timeline.append((round(time.monotonic() - start, 1), event, count))
        result.nodes_peak = max(result.nodes_peak, count)
        return count

    result.nodes_at_start = mark("cluster up")
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            result.node_counts.append((round(time.monotonic() - start, 1), gpu_nodes()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pool = _start_pool(scenario_config(sizes), store, sizes.gpu_s_per_batch)
    try:
        result.nodes_small = mark(f"pool ready with {sizes.fitters_small} fitters")
        pool.resize(sizes.fitters_large)
        pool.wait_ready(sizes.phase_timeout_s)
        result.nodes_large = mark(f"pool ready with {sizes.fitters_large} fitters")
        for step in range(sizes.requests):
            if step == sizes.kill_after:
                result.killed_node, result.fitters_on_killed_node = _node_of_fewest_fitters(pool)
                result.processes_killed = cluster.kill_node(result.killed_node)
                mark(f"killed a node holding {result.fitters_on_killed_node} fitters")
            pool.submit(_request(step, sizes.batch))
        if not pool.drain(sizes.phase_timeout_s):
            raise PipelineError(f"autoscale scenario: the pool did not drain: {pool.metrics()}")
        mark("drained")
        pool.resize(1)
        result.nodes_after_shrink = _wait_nodes(lambda n: n <= 1, pool, sizes.phase_timeout_s, "scale-down")
        mark("shrunk to 1 fitter, idle nodes removed")
    finally:
        metrics = pool.shutdown()
        stop.set()
        sampler.join()
    for name in ("submitted", "completed", "failed", "dropped", "lost", "resubmitted", "restarts"):
        setattr(result, name, getattr(metrics, name))
    result.samples = sizes.requests * sizes.batch
    result.samples_in_store = int(store.read(DATASET, np.arange(result.samples)).found.sum())
    result.seconds = round(time.monotonic() - start, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the scenario against a Redis URL and write the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", default="autoscale")
    parser.add_argument("--root", type=Path, default=None, help="folder for the fake cluster (short path)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sizes = ScenarioSizes()
    spec = FakeClusterSpec(
        node_types={"gpu_node": NodeType({"CPU": 1, "GPU": sizes.gpus_per_node}, max_workers=sizes.max_nodes)},
        idle_timeout_s=sizes.idle_timeout_s,
        extra_env={"AUTOSCALER_HEARTBEAT_TIMEOUT_S": str(sizes.heartbeat_timeout_s)},
    )
    root = args.root or Path(tempfile.mkdtemp(prefix="srfc-", dir="/tmp"))
    store = FitStore.open(args.redis_url, args.namespace, body_model_hash=BODY_HASH)
    with FakeAutoscalingCluster(spec, root) as cluster:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            result = run_scenario(cluster, store, sizes)
        finally:
            ray.shutdown()
    args.out.write_text(json.dumps(asdict(result), indent=1))


if __name__ == "__main__":
    main()
