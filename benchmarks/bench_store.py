"""Fit-store throughput on loopback: keep_best writes/s (batch 64 and single) and batch-64 read latency.

Usage: python benchmarks/bench_store.py [--seconds 3] [--clients 1 4] [--write-results benchmarks/RESULTS.md]

Every timed write improves the stored error, so each keep_best does the full write path (HSET, ZADD,
stats counters), not just the compare.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_busy_fraction, machine_summary, write_section  # noqa: E402

from spin_ray.store.fit_store import FitStore  # noqa: E402
from spin_ray.store.server import EmbeddedRedis  # noqa: E402

BODY_HASH = "0123456789abcdef"
SECTION = "## Fit store (benchmarks/bench_store.py)"
SAMPLES_PER_CLIENT = 64 * 256


def _writes(store: FitStore, client: int, batch: int, seconds: float, start_at: float) -> tuple[int, float]:
    """Rows written in `seconds` of keep_best calls of `batch` rows; (rows, elapsed)."""
    rng = np.random.default_rng(client)
    pose = rng.normal(size=(SAMPLES_PER_CLIENT, 72)).astype(np.float32)
    betas = rng.normal(size=(SAMPLES_PER_CLIENT, 10)).astype(np.float32)
    dataset = f"bench{client}-batch{batch}"
    error, rows, cursor = 1e6, 0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if cursor + batch > SAMPLES_PER_CLIENT:
            cursor, error = 0, error - 1.0  # next pass over the samples: lower error, so every row is written
        idx = np.arange(cursor, cursor + batch)
        written = store.keep_best(dataset, idx, pose[idx], betas[idx], np.full(batch, error), 1, "loop")
        rows += int(written.sum())
        cursor += batch
    return rows, time.perf_counter() - t0


def _reads(store: FitStore, client: int, seconds: float, start_at: float) -> np.ndarray:
    """Latencies in seconds of batch-64 reads of random stored samples."""
    rng = np.random.default_rng(1000 + client)
    dataset = f"bench{client}-batch64"
    n = store.count(dataset)
    while time.time() < start_at:
        time.sleep(0.001)
    latencies = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = rng.choice(n, 64, replace=False)
        t = time.perf_counter()
        got = store.read(dataset, idx)
        latencies.append(time.perf_counter() - t)
        assert got.found.all()
    return np.asarray(latencies)


def _worker(args: tuple) -> object:
    kind, store, client, batch, seconds, start_at = args
    if kind == "write":
        return _writes(store, client, batch, seconds, start_at)
    return _reads(store, client, seconds, start_at)


def _run(pool, kind: str, store: FitStore, clients: int, batch: int, seconds: float) -> list:
    start_at = time.time() + 0.5  # every client starts together, after the pool has handed out the work
    return pool.map(_worker, [(kind, store, c, batch, seconds, start_at) for c in range(clients)])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a Markdown table, optionally write it into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="client process counts")
    parser.add_argument("--write-results", type=Path, default=None, help="update this RESULTS.md section")
    args = parser.parse_args(argv)
    busy_before = cpu_busy_fraction()
    header = machine_summary(busy_before)
    rows = []
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedRedis(data_dir) as server:
        version = server_version(server)
        store = FitStore.open(server.url, "bench", body_model_hash=BODY_HASH)
        ctx = mp.get_context("fork")
        for clients in args.clients:
            with ctx.Pool(clients) as pool:
                for batch in (64, 1):
                    results = _run(pool, "write", store, clients, batch, args.seconds)
                    total = sum(r for r, _ in results) / max(e for _, e in results)
                    rows.append((clients, f"keep_best, batch {batch}", f"{total:,.0f} writes/s", f"{total / clients:,.0f}"))
                    print(rows[-1], flush=True)
                lat = np.concatenate(_run(pool, "read", store, clients, 64, args.seconds)) * 1e3
                p50, p99 = np.percentile(lat, [50, 99])
                rows.append((clients, "read, batch 64", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", f"{lat.size / args.seconds / clients:,.0f} reads/s"))
                print(rows[-1], flush=True)
        store.drop()
        store.close()
    table = [
        f"Machine: {header}; redis-server {version} embedded on 127.0.0.1 (AOF everysec); one Python client per process.",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}` ({args.seconds:g} s per measurement).",
        "",
        "| clients | operation | total | per client |",
        "| --- | --- | --- | --- |",
        *(f"| {c} | {op} | {total} | {per} |" for c, op, total, per in rows),
        "",
    ]
    if max(args.clients) + 1 > (os.cpu_count() or 1):
        table += [
            f"With {max(args.clients)} clients plus redis-server on {os.cpu_count()} cores the CPU is oversubscribed: "
            f"the multi-client rows measure contention for cores as much as the store.",
            "",
        ]
    if busy_before > 0.15:
        # Client, server and the other work share the same cores: throughput drops and p99 grows.
        table += [
            f"Other work kept the CPU {100 * busy_before:.0f} % busy in the second before this run: throughputs "
            f"are lower bounds and the p99 latencies include waiting for a core.",
            "",
        ]
    text = "\n".join(table)
    print(f"{SECTION}\n\n{text}")
    if args.write_results:
        write_section(SECTION, text, args.write_results)
    return 0


def server_version(server: EmbeddedRedis) -> str:
    """redis_version of the running server."""
    from spin_ray.store.server import connect

    client = connect(server.url, 5)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
