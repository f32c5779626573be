"""Scale curves: the cost-model load run at several pool sizes and demands, and the autoscaling scenario.

Usage: python benchmarks/bench_scale.py [--fitters 8 16 32 64] [--sweep 0.125 0.0625] [--seconds 20]
       [--autoscale] [--write-results]

Each pool size runs in a child process (`python -m spin_ray_sim.scale.load_run`) with a Ray of its own:
stand-in fitters on 0.25 of a declared GPU each, whose time per batch is the stand-in cost model's
GPU-seconds per batch (0.25) over that share; one embedded redis-server; this machine's one
trainer loop. `--sweep` reruns the largest pool with cheaper fits (GPU-seconds per batch) to push the
demand up until this machine's trainer loop or Redis stops keeping up. With --write-results the
tables replace their sections in benchmarks/SCALING.md and RESULTS.md, and a plot goes to
benchmarks/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_busy_fraction, machine_summary, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
SCALING = HERE / "SCALING.md"
PLOT = HERE / "scaling.png"
LOAD_SECTION = "## Measured: cost-model load (benchmarks/bench_scale.py)"
AUTOSCALE_SECTION = "## Measured: autoscaling scenario (benchmarks/bench_scale.py --autoscale)"
RESULTS_SECTION = "## Scale, cost model (benchmarks/bench_scale.py)"


def run_child(module: str, args: list[str]) -> object:
    """Run a spin_ray_sim.scale module in a child process and return its JSON output."""
    with tempfile.TemporaryDirectory(prefix="srbench-") as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{module} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def load_table(rows: list[dict]) -> str:
    """The cost-model runs as a Markdown table."""
    head = ("| fitters | declared GPUs | GPU-s per batch | demand (writes/s) | store writes/s | of demand "
            "| trainer steps/s | fit read p50 / p99 ms | in flight: bound / peak / mean | object store MB/s "
            "| Redis CPU per write | trainer CPU per step | stand-in CPU per request | load avg |\n"
            + "| --- " * 14 + "|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['fitters']} | {r['gpus']:g} | {r['gpu_s_per_batch']:g} | {r['expected_writes_per_s']:,.0f} "
            f"| {r['store_writes_per_s']:,.0f} | {r['write_ratio']:.2f} | {r['trainer_steps_per_s']:.1f} "
            f"| {r['read_p50_ms']:.2f} / {r['read_p99_ms']:.1f} | {r['in_flight_bound']} / {r['peak_in_flight']} / "
            f"{r['in_flight_mean']:.0f} | {r['object_store_mb_per_s']:.2f} | {r['redis_cpu_per_write_us']:.0f} µs "
            f"| {r['trainer_cpu_ms_per_step']:.1f} ms | {r['fitter_cpu_ms_per_request']:.1f} ms "
            f"| {r['load_average']:.1f} |"
        )
    return "\n".join(lines)


def autoscale_table(result: dict) -> str:
    """The scenario's events and the pool's outcome counts as Markdown."""
    lines = ["| seconds | event | GPU nodes alive |", "| --- | --- | --- |"]
    lines += [f"| {t:g} | {event} | {nodes} |" for t, event, nodes in result["timeline"]]
    counts = ", ".join(f"{k} {result[k]}" for k in ("submitted", "completed", "resubmitted", "restarts", "lost",
                                                     "failed", "dropped"))
    curve = " ".join(str(n) for _, n in result["node_counts"])
    return (
        "\n".join(lines)
        + f"\n\nRequests: {counts}. Samples in the store: {result['samples_in_store']} of {result['samples']}."
        + f" The killed node held {result['fitters_on_killed_node']} fitters ({result['processes_killed']}"
        + " processes: raylet, agents, workers, killed at once)."
        + f"\n\nGPU nodes alive, sampled each second: {curve}"
    )


def plot(rows: list[dict], path: Path) -> None:
    """Store writes/s against the cost model's demand, and the trainer's read latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    demand = [r["expected_writes_per_s"] for r in rows]
    left.plot(demand, demand, "k--", label="demand (cost model)")
    left.plot(demand, [r["store_writes_per_s"] for r in rows], "o-", label="store writes/s (measured)")
    for r in rows:
        left.annotate(f"{r['fitters']}f", (r["expected_writes_per_s"], r["store_writes_per_s"]), fontsize=8)
    left.set_xlabel("demand: fitters x 64 / seconds per batch (writes/s)")
    left.set_ylabel("writes/s")
    left.legend()
    left.set_title("keep-best writes, one Redis, one trainer")
    right.plot(demand, [r["read_p50_ms"] for r in rows], "o-", label="p50")
    right.plot(demand, [r["read_p99_ms"] for r in rows], "s-", label="p99")
    right.set_yscale("log")
    right.set_xlabel("demand (writes/s)")
    right.set_ylabel("trainer fit read, batch 64 (ms)")
    right.legend()
    right.set_title("trainer's fit-read latency")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fitters", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--sweep", type=float, nargs="*", default=[0.125, 0.0625],
                        help="GPU-seconds per batch for extra runs of the largest pool")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--autoscale", action="store_true", help="also run the fake-cluster scenario")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    busy = cpu_busy_fraction()
    window = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    rows = []
    for fitters in args.fitters:
        rows += run_child("spin_ray_sim.scale.load_run", ["--fitters", str(fitters), *window])
        print(json.dumps(rows[-1]), flush=True)
    for gpu_s in args.sweep:
        rows += run_child("spin_ray_sim.scale.load_run",
                          ["--fitters", str(max(args.fitters)), "--gpu-s-per-batch", str(gpu_s), *window])
        print(json.dumps(rows[-1]), flush=True)
    table = load_table(rows)
    print(table)
    command = "python benchmarks/bench_scale.py " + shlex.join(sys.argv[1:])
    body = (f"Machine: {machine_summary(busy)}.\nCommand: `{command}`\n\n{table}\n\n"
            "Demand = fitters x 64 samples / seconds per request (the cost model: GPU-seconds per batch over a "
            "0.25-GPU share). Every sample fitted is a keep-best write (the stand-in's error falls with the step). "
            "In-flight bound = 2 per fitter. Object store MB/s = request payload (FitRequest.nbytes) x steps/s.")
    if args.write_results:
        write_section(LOAD_SECTION, body, SCALING)
        write_section(RESULTS_SECTION, body + "\n\nAnalysis: benchmarks/SCALING.md.")
        plot(rows, PLOT)
    if args.autoscale:
        with tempfile.TemporaryDirectory(prefix="srfc-", dir="/tmp") as root:
            from spin_ray.store.server import EmbeddedRedis

            with EmbeddedRedis(Path(root) / "redis") as server:
                result = run_child("spin_ray_sim.scale.autoscale_run", ["--redis-url", server.url,
                                                                    "--root", str(Path(root) / "c")])
        text = autoscale_table(result)
        print(text)
        if args.write_results:
            write_section(AUTOSCALE_SECTION, f"Machine: {machine_summary(busy)}.\nCommand: `{command}`\n\n{text}",
                          SCALING)


if __name__ == "__main__":
    main()
