"""The cost-model load run: N stand-in fitters on declared GPU fractions feed one Redis store and one trainer.

The trainer is this process: each step it reads its batch's stored fits (timed: the trainer's
fit-read latency) and submits a request for the batch (busy_policy block, so it runs as fast as the
pool takes requests: the pool is kept saturated). The store's write rate is counted at the store
(the per-step write counters that keep-best maintains), over a window after the pool is full, and
compared with the cost model's demand: N fitters x batch / seconds per request.

Run it in a process of its own (it starts a local Ray with declared GPUs):
`python -m spin_ray_sim.scale.load_run --fitters 8 --seconds 20 --out result.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray

from spin_ray.config import RunConfig
from spin_ray.errors import PipelineError
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import EmbeddedRedis
from spin_ray_sim.standin import DEFAULT_GPU_S_PER_BATCH, standin_seconds_per_request
from spin_ray_sim.standin_pool import StandinPool

DATASET = "load"
BODY_HASH = "10ad000000000000"
METRICS_EVERY_S = 0.25


@dataclass
class LoadResult:
    """One cost-model run's measurements."""

    fitters: int
    gpus: float
    gpu_s_per_batch: float  # the cost model's GPU-seconds per batch on a whole GPU
    seconds_per_request: float
    batch: int
    expected_writes_per_s: float
    store_writes_per_s: float
    write_ratio: float  # measured / expected (the pool's cost-model capacity)
    offered_writes_per_s: float  # samples the trainer submitted per second (its demand on the pool)
    offered_ratio: float  # measured / offered
    trainer_steps_per_s: float
    read_p50_ms: float
    read_p99_ms: float
    read_max_ms: float
    submit_wait_p50_ms: float  # time a submit waited for room (busy_policy block): back-pressure on the trainer
    in_flight_bound: int
    peak_in_flight: int
    in_flight_mean: float
    in_flight_max_sampled: int
    request_bytes: int
    object_store_mb_per_s: float  # request payload the trainer hands to Ray per second
    redis_cpu_per_write_us: float  # redis-server CPU time per keep-best write (nan: server not ours)
    trainer_cpu_ms_per_step: float  # this process's CPU per step: fit read, request build, submit, collect
    fitter_cpu_ms_per_request: float  # a stand-in's CPU per request: unpickle, keep-best writes (mean)
    completed: int
    lost: int
    dropped: int
    window_s: float
    startup_s: float
    load_average: float


def load_config(fitters: int, fitter_num_gpus: float, batch: int) -> RunConfig:
    """Stand-ins holding a GPU fraction and no CPU, two requests in flight each, blocking submits."""
    config = RunConfig()
    pipeline = config.pipeline
    pipeline.num_fitters = fitters
    pipeline.fitter_num_gpus = fitter_num_gpus
    pipeline.fitter_num_cpus = 0.0
    pipeline.busy_policy = "block"
    pipeline.startup_timeout_s = 900.0
    pipeline.metrics_window_s = 10.0
    config.fitting.batch_size = batch
    return config


def _store_writes(store: FitStore) -> int:
    """Fits written to the dataset so far, from the store's own per-step counters."""
    return sum(count for _step, count, _mean in store.progress(DATASET)) if DATASET in store.datasets() else 0


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (nan if unknown)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(pool: StandinPool, store: FitStore, config: RunConfig, warmup_s: float, window_s: float,
             redis_pid: int | None = None, dataset_size: int = 64 * 1024) -> LoadResult:
    """Drive the pool from a trainer loop for warmup_s + window_s; measure over the window."""
    batch = config.fitting.batch_size
    rng = np.random.default_rng(0)
    # One set of arrays reused for every step: the trainer's forward pass is not what is measured.
    pose, betas = rng.normal(0, 0.2, (batch, 72)), rng.normal(0, 1, (batch, 10))
    camera_t, aug = np.tile([0.0, 0.0, 40.0], (batch, 1)), np.zeros((batch, 6))
    keypoints = rng.uniform(-1, 1, (batch, 49, 3))
    reads, waits, in_flight = [], [], []
    step, cursor = 0, 0
    start = time.monotonic()
    window_start = start + warmup_s
    end = window_start + window_s
    writes0 = steps0 = redis_cpu0 = None
    next_metrics = start
    request_bytes = 0
    fitter_cpu: list[float] = []
    while True:
        now = time.monotonic()
        if writes0 is None and now >= window_start:
            writes0, steps0, redis_cpu0, t0 = _store_writes(store), step, _cpu_s(redis_pid), now
            trainer_cpu0 = time.process_time()
        if now >= end:
            break
        rows = (np.arange(cursor, cursor + batch)) % dataset_size
        cursor += batch
        tic = time.perf_counter()
        store.read(DATASET, rows)
        read_s = time.perf_counter() - tic
        request = FitRequest.build(step, DATASET, rows, pose, betas, camera_t, keypoints, aug)
        request_bytes = request.nbytes
        tic = time.perf_counter()
        pool.submit(request)
        wait_s = time.perf_counter() - tic
        if writes0 is not None:
            reads.append(read_s)
            waits.append(wait_s)
        if now >= next_metrics:
            # Hands back reports (submit collects finished requests itself).
            fitter_cpu += [r.cpu_s for r in pool.poll() if writes0 is not None]
            m = pool.metrics()
            if writes0 is not None:
                in_flight.append(m.in_flight)
            next_metrics = now + METRICS_EVERY_S
        step += 1
    t1, trainer_cpu1 = time.monotonic(), time.process_time()
    writes1, redis_cpu1 = _store_writes(store), _cpu_s(redis_pid)
    pool.drain(120.0)
    metrics = pool.metrics()
    span = t1 - t0
    share = config.pipeline.fitter_num_gpus
    seconds_per_request = standin_seconds_per_request(config.pipeline, batch, batch, pool.gpu_s_per_batch)
    expected = config.pipeline.num_fitters * batch / seconds_per_request
    measured = (writes1 - writes0) / span
    steps_per_s = (step - steps0) / span
    reads_ms = np.array(reads) * 1e3
    return LoadResult(
        fitters=config.pipeline.num_fitters,
        gpus=config.pipeline.num_fitters * share,
        gpu_s_per_batch=pool.gpu_s_per_batch,
        seconds_per_request=seconds_per_request,
        batch=batch,
        expected_writes_per_s=expected,
        store_writes_per_s=measured,
        write_ratio=measured / expected,
        offered_writes_per_s=steps_per_s * batch,
        offered_ratio=measured / (steps_per_s * batch),
        trainer_steps_per_s=steps_per_s,
        read_p50_ms=float(np.percentile(reads_ms, 50)),
        read_p99_ms=float(np.percentile(reads_ms, 99)),
        read_max_ms=float(reads_ms.max()),
        submit_wait_p50_ms=float(np.percentile(np.array(waits) * 1e3, 50)),
        in_flight_bound=pool.max_in_flight(),
        peak_in_flight=metrics.peak_in_flight,
        in_flight_mean=float(np.mean(in_flight)) if in_flight else 0.0,
        in_flight_max_sampled=max(in_flight) if in_flight else 0,
        request_bytes=request_bytes,
        object_store_mb_per_s=steps_per_s * request_bytes / 1e6,
        redis_cpu_per_write_us=(redis_cpu1 - redis_cpu0) / max(writes1 - writes0, 1) * 1e6,
        trainer_cpu_ms_per_step=(trainer_cpu1 - trainer_cpu0) / max(step - steps0, 1) * 1e3,
        fitter_cpu_ms_per_request=float(np.mean(fitter_cpu)) * 1e3 if fitter_cpu else float("nan"),
        completed=metrics.completed,
        lost=metrics.lost,
        dropped=metrics.dropped,
        window_s=span,
        startup_s=0.0,
        load_average=os.getloadavg()[0],
    )


def measure(fitters: int, fitter_num_gpus: float, batch: int, warmup_s: float, window_s: float,
            redis_url: str | None = None, gpu_s_per_batch: float = DEFAULT_GPU_S_PER_BATCH) -> LoadResult:
    """Start Ray (declared GPUs) and Redis (unless given), a StandinPool of `fitters`, and run the load."""
    config = load_config(fitters, fitter_num_gpus, batch)
    gpus = math.ceil(fitters * fitter_num_gpus)
    with tempfile.TemporaryDirectory(prefix="srload-") as tmp:
        server = EmbeddedRedis(Path(tmp)) if redis_url is None else None
        if server is not None:
            server.start()
        try:
            url = server.url if server is not None else redis_url
            store = FitStore.open(url, f"load-{fitters}-{int(time.time())}", body_model_hash=BODY_HASH)
            # "local": never join a cluster that someone else started with `ray start` on this machine.
            ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False,
                     object_store_memory=256 * 2**20, log_to_driver=False, configure_logging=False)
            try:
                tic = time.monotonic()
                pool = StandinPool(config, store.address, name=f"load{fitters}", gpu_s_per_batch=gpu_s_per_batch)
                startup_s = time.monotonic() - tic
                try:
                    result = run_load(pool, store, config, warmup_s, window_s,
                                      redis_pid=server.pid if server is not None else None)
                finally:
                    pool.shutdown()
                result.startup_s = startup_s
                store.drop()
                return result
            finally:
                ray.shutdown()
        finally:
            if server is not None:
                server.stop()


def main(argv: list[str] | None = None) -> None:
    """Measure one or more pool sizes and write the results as a JSON list."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fitters", type=int, nargs="+", default=[8])
    parser.add_argument("--fitter-num-gpus", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--gpu-s-per-batch", type=float, default=DEFAULT_GPU_S_PER_BATCH,
                        help="the cost model's GPU-seconds per batch on a whole GPU (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the measured window")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--redis-url", default=None, help="default: an embedded redis-server")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = []
    for fitters in args.fitters:
        result = measure(fitters, args.fitter_num_gpus, args.batch, args.warmup, args.seconds, args.redis_url,
                         args.gpu_s_per_batch)
        results.append(asdict(result))
        print(json.dumps(results[-1]), flush=True)
        if result.lost or result.dropped:
            raise PipelineError(f"{fitters} fitters: {result.lost} lost, {result.dropped} dropped requests")
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
