"""Fit-store throughput on loopback: keep_best writes/s (batch 64 and single) and batch-64 read latency.

Usage: python benchmarks/bench_store.py [--seconds 3] [--clients 1 4] [--no-cluster] [--write-results benchmarks/RESULTS.md]

Every timed write improves the stored error (or writes a new sample), so each keep_best does the full
write path (HSET, ZADD, stats counters), not just the compare. First, one client side by side: the
batched keep-best script, the former per-fit script (kept here only, as the baseline), and the
ceiling of the batched script: `redis-benchmark` (Debian's redis-tools) sending EVALSHA calls of 64
new fits each, pipelined, so no Python client is in the way, and Redis's own CPU per fit (INFO
commandstats), whose inverse is what one Redis core could take with no client cost at all. Then one client on local Redis Clusters
(tests/cluster_fixture.py) of 1 and 3 masters with a replica each, every batch acknowledged after WAIT 1,
beside one node holding a namespace of 16 index groups (the cost of grouping alone): on a 2-core machine
the cluster's 6 servers and the client share the cores, so the per-master rate is what matters there.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the local Redis Cluster of the tests
from results import cpu_busy_fraction, machine_summary, write_section  # noqa: E402

from cluster_fixture import LocalCluster  # noqa: E402
from spin_ray.store.fit_store import FitStore  # noqa: E402
from spin_ray.store.keys import KeyLayout  # noqa: E402
from spin_ray.store.records import SCHEMA_VERSION  # noqa: E402
from spin_ray.store.server import EmbeddedRedis, connect  # noqa: E402
from spin_ray.store.validation import validate_rows  # noqa: E402
from spin_ray.store.writes import FITS_PER_CALL, PIPELINE_CHUNK  # noqa: E402

BODY_HASH = "0123456789abcdef"
SECTION = "## Fit store (benchmarks/bench_store.py)"
SAMPLES_PER_CLIENT = 64 * 256
CEILING_PIPELINE = PIPELINE_CHUNK // FITS_PER_CALL  # calls a round trip, as the store's own bulk writes

# The per-fit keep-best script the store used before the batched one (issue 29): one EVALSHA a fit.
# KEYS: record, error index, dataset stats, namespace meta
# ARGV: error, pose, betas, step, source, time, index, schema, body hash, updates ('' = old + 1)
PER_FIT_LUA = """
local function bad(what)
  return redis.error_reply('SPINRAY_BAD ' .. KEYS[1] .. ': ' .. what)
end
local function finite_floats(data, n)
  local values = {struct.unpack('<' .. string.rep('f', n), data)}
  for i = 1, n do
    local v = values[i]
    if v ~= v or v == math.huge or v == -math.huge then
      return false
    end
  end
  return true
end
local function sound_error(text)
  local v = tonumber(text)
  return v ~= nil and v == v and v >= 0 and v ~= math.huge
end
local sources = {static = true, loop = true, gt = true}
if not sound_error(ARGV[1]) then
  return bad('error ' .. tostring(ARGV[1]) .. ' is not a finite number >= 0')
end
if #ARGV[2] ~= 288 or #ARGV[3] ~= 40 then
  return bad('pose/betas are ' .. #ARGV[2] .. '/' .. #ARGV[3] .. ' bytes, expected 288/40')
end
if not finite_floats(ARGV[2], 72) or not finite_floats(ARGV[3], 10) then
  return bad('pose or betas hold NaN or inf')
end
if not sources[ARGV[5]] or not (tonumber(ARGV[4]) and tonumber(ARGV[4]) >= 0) or not tonumber(ARGV[6])
   or not (ARGV[10] == '' or (tonumber(ARGV[10]) and tonumber(ARGV[10]) >= 1)) then
  return bad('step ' .. tostring(ARGV[4]) .. ', source ' .. tostring(ARGV[5]) .. ', time or updates is invalid')
end
local meta = redis.call('HMGET', KEYS[4], 'schema_version', 'body_model_hash')
if not meta[1] then
  return redis.error_reply('SPINRAY_META namespace metadata is missing')
end
if meta[1] ~= ARGV[8] or meta[2] ~= ARGV[9] then
  return redis.error_reply('SPINRAY_META namespace metadata is schema ' .. meta[1] .. ', body model ' .. tostring(meta[2]))
end
local new = tonumber(ARGV[1])
local old = redis.call('HMGET', KEYS[1], 'error', 'updates', 'source')
local updates = 1
if old[1] or old[2] or old[3] then
  local sound = sound_error(old[1]) and redis.call('HSTRLEN', KEYS[1], 'pose') == 288
                and redis.call('HSTRLEN', KEYS[1], 'betas') == 40
  if sound and new >= tonumber(old[1]) then
    return 0
  end
  updates = (tonumber(old[2]) or 0) + 1
  if sources[old[3]] then
    redis.call('HINCRBY', KEYS[3], 'src:' .. old[3], -1)
  end
end
if ARGV[10] ~= '' then
  updates = tonumber(ARGV[10])
end
redis.call('HSET', KEYS[1], 'pose', ARGV[2], 'betas', ARGV[3], 'error', ARGV[1], 'step', ARGV[4],
           'source', ARGV[5], 'updates', updates, 'time', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[7])
redis.call('HINCRBY', KEYS[3], 'src:' .. ARGV[5], 1)
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[4], 1)
redis.call('HINCRBYFLOAT', KEYS[3], 's:' .. ARGV[4], ARGV[1])
return 1
"""


def per_fit_keep_best(store: FitStore, sha: str, dataset: str, idx, pose, betas, errors, step, source) -> np.ndarray:
    """keep_best as the store did it with PER_FIT_LUA: the same validation, then one pipelined EVALSHA a row."""
    batch = validate_rows(dataset, idx, pose, betas, errors, step, source)
    prefix = store.key_prefix
    keys = (f"{prefix}idx:{dataset}", f"{prefix}stats:{dataset}", f"{prefix}meta")
    written = np.zeros(batch.indices.size, dtype=bool)

    def column(values: list[str], i: int) -> str:  # a WriteBatch column holds one value a row or one for all
        return values[i] if len(values) > 1 else (values[0] if values else "")

    for start in range(0, batch.indices.size, PIPELINE_CHUNK):
        pipe = store.client.pipeline(transaction=False)
        for i in range(start, min(start + PIPELINE_CHUNK, batch.indices.size)):
            index = int(batch.indices[i])
            pipe.evalsha(
                sha, 4, f"{prefix}fit:{dataset}:{index}", *keys, batch.errors[i], batch.fits[i, :72].tobytes(),
                batch.fits[i, 72:].tobytes(), column(batch.steps, i), column(batch.sources, i), column(batch.times, i),
                index, str(SCHEMA_VERSION), BODY_HASH, column(batch.updates, i),
            )  # fmt: skip
        written[start : start + PIPELINE_CHUNK] = [bool(r) for r in pipe.execute()]
    return written


def _nul_free_rows(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """float32 rows whose bytes hold no NUL (redis-benchmark takes its arguments from argv)."""
    out = []
    while len(out) < n:
        row = rng.normal(size=width).astype("<f4")
        if 0 not in row.tobytes():
            out.append(row)
    return np.stack(out)


def redis_benchmark_ceiling(server: EmbeddedRedis, sha: str, seconds: float, namespace: str = "bench") -> float | None:
    """Fits/s of redis-benchmark sending EVALSHA calls of FITS_PER_CALL new fits, CEILING_PIPELINE calls a round trip."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    rng = np.random.default_rng(7)
    pose, betas = _nul_free_rows(rng, FITS_PER_CALL, 72), _nul_free_rows(rng, FITS_PER_CALL, 10)
    layout = KeyLayout(namespace, 1)
    keys = [layout.record_prefix("ceiling", 0) + "__rand_int__"] * FITS_PER_CALL
    keys += [layout.index("ceiling", 0), layout.stats("ceiling", 0)]
    client = connect(server.url, 5)
    client.hset(layout.stats("ceiling", 0), mapping={"schema_version": SCHEMA_VERSION, "body_model_hash": BODY_HASH})
    client.close()
    # The script's arguments as keep_best sends them (store/lua.py): the fits' bytes in one argument, one
    # argument a column, each index its own random number.
    blob = np.concatenate((pose, betas), axis=1).astype("<f4").tobytes()
    args: list[bytes | str] = [str(SCHEMA_VERSION), BODY_HASH, blob, " ".join(["7.5"] * FITS_PER_CALL), "1", "loop",
                               "1700000000.0", " ".join(["__rand_int__"] * FITS_PER_CALL), ""]
    port = str(server.port)
    calls = max(200, int(seconds * 150_000 / FITS_PER_CALL))  # about `seconds` at the target rate
    command = [binary, "-h", "127.0.0.1", "-p", port, "-c", "1", "-P", str(CEILING_PIPELINE), "-n", str(calls),
               "-r", "1000000000", "--csv", "EVALSHA", sha, str(len(keys)), *keys, *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=600)
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0 or "ERR" in out[-2000:]:
        raise RuntimeError(f"redis-benchmark failed ({done.returncode}): {(done.stderr or done.stdout)[-400:]!r}")
    last = list(csv.reader(out.strip().splitlines()))[-1]
    return float(last[1]) * FITS_PER_CALL


def _per_fit_writes(store: FitStore, sha: str, seconds: float, tag: str = "") -> float:
    """Fits/s of the former per-fit script, batch 64, every write an improvement (as `_writes`)."""
    rng = np.random.default_rng(3)
    pose = rng.normal(size=(SAMPLES_PER_CLIENT, 72)).astype(np.float32)
    betas = rng.normal(size=(SAMPLES_PER_CLIENT, 10)).astype(np.float32)
    error, rows, cursor = 1e6, 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if cursor + 64 > SAMPLES_PER_CLIENT:
            cursor, error = 0, error - 1.0
        idx = np.arange(cursor, cursor + 64)
        rows += int(per_fit_keep_best(store, sha, f"per-fit{tag}", idx, pose[idx], betas[idx], np.full(64, error), 1, "loop").sum())
        cursor += 64
    return rows / (time.perf_counter() - t0)


def _batched_writes(store: FitStore, seconds: float, fresh: bool, tag: str = "", cpu_us: list | None = None) -> float:
    """Fits/s of keep_best at batch 64 from this process: new samples (`fresh`) or improving stored ones; the
    client's CPU time per fit (µs, load-independent) is appended to `cpu_us`."""
    rng = np.random.default_rng(4)
    pose = rng.normal(size=(SAMPLES_PER_CLIENT, 72)).astype(np.float32)
    betas = rng.normal(size=(SAMPLES_PER_CLIENT, 10)).astype(np.float32)
    dataset = ("side-new" if fresh else "side-improve") + tag
    error, rows, cursor, base = 1e6, 0, 0, 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if cursor + 64 > SAMPLES_PER_CLIENT:
            cursor, error, base = 0, error - (0.0 if fresh else 1.0), base + (SAMPLES_PER_CLIENT if fresh else 0)
        idx = np.arange(cursor, cursor + 64)
        rows += int(store.keep_best(dataset, base + idx, pose[idx], betas[idx], np.full(64, error), 1, "loop").sum())
        cursor += 64
    elapsed = time.perf_counter() - t0
    if cpu_us is not None:
        cpu_us.append((time.process_time() - cpu0) / max(rows, 1) * 1e6)
    return rows / elapsed


def _wait_for_aof_rewrite(client, timeout_s: float = 120.0) -> None:
    """Return once Redis runs no AOF rewrite and has none scheduled (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)


def _on_new_namespace(server: EmbeddedRedis, namespace: str, measure: Callable[[FitStore], float]) -> tuple[float, bool]:
    """`measure(store)` on a new namespace, started once no AOF rewrite runs; (its result, whether Redis forked
    during it, i.e. an AOF rewrite ran beside it); the namespace is dropped after, so every measurement starts
    from the same keyspace."""
    store = FitStore.open(server.url, namespace, body_model_hash=BODY_HASH)
    try:
        _wait_for_aof_rewrite(store.client)
        forks = store.client.info("stats")["total_forks"]
        result = measure(store)
        return result, store.client.info("stats")["total_forks"] > forks
    finally:
        store.drop()
        store.close()


def side_by_side(server: EmbeddedRedis, store: FitStore, seconds: float, rounds: int = 3) -> list[str]:
    """One client: batched keep_best, the per-fit script, and redis-benchmark's ceiling of the batched script.

    Each is measured `rounds` times, interleaved (A B C D A B C D ...), and the medians are reported with
    the per-round ratio to the ceiling: on a shared machine the load moves between measurements. Each
    measurement writes into a namespace of its own, dropped after it, and starts once no AOF rewrite runs
    (one that starts during it is counted): the keyspace and the AOF do not grow from one to the next.
    """
    per_fit_sha = store.client.script_load(PER_FIT_LUA)
    batched_sha = store.client.script_load(store._keep_best.script)
    part = seconds / rounds
    runs: dict[str, list[float]] = {"per_fit": [], "improving": [], "new": [], "ceiling": [], "server_us": [],
                                    "client_us": []}
    forked: dict[str, int] = {"per_fit": 0, "improving": 0, "new": 0, "ceiling": 0}

    def new_samples(side: FitStore) -> float:
        side.client.config_resetstat()
        fits = _batched_writes(side, part, fresh=True, cpu_us=runs["client_us"])
        stat = side.client.info("commandstats").get("cmdstat_evalsha", {})
        runs["server_us"].append(stat.get("usec_per_call", float("nan")) / FITS_PER_CALL)
        return fits

    measures: dict[str, Callable[[FitStore], float | None]] = {
        "per_fit": lambda side: _per_fit_writes(side, per_fit_sha, part),
        "improving": lambda side: _batched_writes(side, part, fresh=False),
        "new": new_samples,
        "ceiling": lambda side: redis_benchmark_ceiling(server, batched_sha, part, side.namespace),
    }
    for r in range(rounds):
        for name, measure in measures.items():
            result, fork = _on_new_namespace(server, f"side-{name.replace('_', '-')}-{r}", measure)
            if result is not None:
                runs[name].append(result)
                forked[name] += fork
    per_fit, improving, new = (float(np.median(runs[k])) for k in ("per_fit", "improving", "new"))
    lines = [
        f"| one client, batch 64 (median of {rounds} interleaved rounds) | fits/s |",
        "| --- | --- |",
        f"| keep_best, batched script, new samples (each round's) | {new:,.0f} "
        f"({', '.join(f'{x:,.0f}' for x in runs['new'])}) |",
        f"| keep_best, batched script, improving stored fits | {improving:,.0f} |",
        f"| former per-fit script (one EVALSHA a fit, pipelined), improving stored fits | {per_fit:,.0f} |",
    ]
    server_us = float(np.median(runs["server_us"]))
    lines += [
        f"| Redis CPU per new fit in the keep_best rounds (INFO commandstats) | {server_us:.1f} µs, i.e. a ceiling of "
        f"{1e6 / server_us:,.0f} fits/s for one Redis core |",
        f"| keep_best (new samples) / that ceiling: the share of the time Redis runs the script | {new * server_us / 1e6:.2f} |",
        f"| client CPU per new fit in those rounds (process time: validation, packing, sending, replies) | "
        f"{float(np.median(runs['client_us'])):.1f} µs |",
    ]
    if not runs["ceiling"]:
        lines += ["| redis-benchmark ceiling | not measured: no redis-benchmark on PATH (apt-get install redis-tools) |"]
    else:
        ceiling = float(np.median(runs["ceiling"]))
        ratios = [n / c for n, c in zip(runs["new"], runs["ceiling"])]
        lines += [
            f"| redis-benchmark ceiling: EVALSHA of {FITS_PER_CALL} new fits, pipelined {CEILING_PIPELINE}, 1 client "
            f"| {ceiling:,.0f} |",
            f"| keep_best (new samples) / ceiling, median of the rounds (each round's) | {np.median(ratios):.2f} "
            f"({', '.join(f'{r:.2f}' for r in ratios)}) |",
        ]
    lines.append("| measurements an AOF rewrite ran beside (Redis forked during them), of "
                 f"{rounds} each | {', '.join(f'{k} {v}' for k, v in forked.items())} |")
    for line in lines:
        print(line, flush=True)
    return lines


def cluster_rows(seconds: float, groups_on_node: float) -> list[str]:
    """One client, batch 64, on local clusters of 1 and 3 masters (one replica each, WAIT 1 a batch): writes, reads."""
    lines = [
        "| store | keep_best batch 64, new samples (fits/s) | per master | read batch 64 p50 / p99 |",
        "| --- | --- | --- | --- |",
        f"| one node, 16 index groups (as a cluster's namespace) | {groups_on_node:,.0f} | | |",
    ]
    for masters in (1, 3):
        with tempfile.TemporaryDirectory() as folder, LocalCluster(Path(folder), masters=masters, replicas=1) as cluster:
            store = FitStore.open(cluster.url, "bench", body_model_hash=BODY_HASH)
            fits = _batched_writes(store, seconds, fresh=True)
            n = store.count("side-new")
            rng = np.random.default_rng(0)
            lat = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                idx = rng.choice(n, 64, replace=False)
                t = time.perf_counter()
                assert store.read("side-new", idx).found.all()
                lat.append(time.perf_counter() - t)
            p50, p99 = np.percentile(np.asarray(lat) * 1e3, [50, 99])
            lines.append(f"| cluster, {masters} master(s) + {masters} replica(s), 16 index groups | {fits:,.0f} | "
                         f"{fits / masters:,.0f} | {p50:.2f} / {p99:.2f} ms |")
            print(lines[-1], flush=True)
            store.close()
    return lines


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
    parser.add_argument("--no-cluster", action="store_true", help="skip the local Redis Cluster rows")
    args = parser.parse_args(argv)
    busy_before = cpu_busy_fraction()
    header = machine_summary(busy_before)
    rows = []
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedRedis(data_dir) as server:
        version = server_version(server)
        store = FitStore.open(server.url, "bench", body_model_hash=BODY_HASH)
        side = side_by_side(server, store, args.seconds)
        if not args.no_cluster:
            grouped = FitStore.open(server.url, "bench-groups", body_model_hash=BODY_HASH, index_groups=16)
            side += ["", *cluster_rows(args.seconds, _batched_writes(grouped, args.seconds, fresh=True))]
            grouped.drop()
            grouped.close()
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
    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    table = [
        f"Machine: {header}; load average after the run {load_after}; redis-server {version} embedded on "
        f"127.0.0.1 (AOF everysec); one Python client per process.",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}` ({args.seconds:g} s per measurement).",
        "",
        *side,
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
