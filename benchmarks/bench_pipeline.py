"""Pipeline throughput: the fitter pool's fits/s with 1 and 2 actors, side by side in one run.

Usage: python benchmarks/bench_pipeline.py [--requests-per-fitter 6] [--repeats 1] [--write-results benchmarks/RESULTS.md]

Each measurement starts a pool (busy_policy block, fitters warmed up and one request each already
fitted), then times `requests_per_fitter x fitters` batch-64 requests from submit to drain: the
full path a trainer's request takes (Ray transfer, SMPLify 50 + 50 iterations, canonical
re-scoring, keep_best writes to an embedded redis-server). Every request names fresh samples, so
each fit is written. Pool sizes alternate (1, 2, 1, 2, ...) so load from other work hits both alike.

One function per measurement: the lead adds trainer steps/s per mode beside `measure_fitter_pool`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_busy_fraction, fitting_variant, machine_cpu_s, machine_summary, write_section  # noqa: E402

from spin_ray.body.body_model import BodyModel  # noqa: E402
from spin_ray.config import RunConfig  # noqa: E402
from spin_ray.pipeline.pool import FitterPool  # noqa: E402
from spin_ray_sim.synthetic import synthetic_request  # noqa: E402
from spin_ray.store.fit_store import FitStore  # noqa: E402
from spin_ray.store.records import FitStoreAddress  # noqa: E402
from spin_ray.store.server import EmbeddedRedis  # noqa: E402

POOL_SECTION = "## Fitter pool (benchmarks/bench_pipeline.py)"
BATCH = 64


@dataclass(frozen=True)
class PoolResult:
    """One timed run of a fitter pool."""

    fitters: int
    requests: int
    samples: int
    seconds: float
    cpu_s: float  # CPU seconds the fitter processes spent on the timed requests
    mean_error: float
    busy_other: float  # share of the machine's CPU time not spent by the fitters during the run
    recipe: str = "spin"  # fitting.recipe of the fitters

    @property
    def fits_per_s(self) -> float:
        """Samples fitted per second of wall time."""
        return self.samples / self.seconds

    @property
    def fits_per_cpu_s(self) -> float:
        """Samples fitted per CPU second of a fitter: what one fitter does with a core of its own."""
        return self.samples / self.cpu_s


def start_ray() -> None:
    """A local Ray sized to this machine, small object store (requests are ~60 kB)."""
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)


def pool_config(fitters: int, recipe: str = "spin") -> RunConfig:
    """Paper SMPLify settings (50 + 50 iterations, `recipe`: a results.fitting_variant label); one CPU and one torch
    thread per fitter; block on a full pool."""
    cfg = RunConfig()
    cfg.fitting = cfg.fitting.model_copy(update=fitting_variant(recipe))
    cfg.pipeline.num_fitters = fitters
    cfg.pipeline.fitter_num_cpus = 1.0
    cfg.pipeline.fitter_threads = 1
    cfg.pipeline.busy_policy = "block"
    cfg.pipeline.max_in_flight_per_fitter = 2
    return cfg


def measure_fitter_pool(
    body: BodyModel, address: FitStoreAddress, fitters: int, requests_per_fitter: int, first_index: int,
    recipe: str = "spin",
) -> PoolResult:
    """Fits/s of a pool of `fitters` actors over requests_per_fitter x fitters batch-64 requests."""
    cfg = pool_config(fitters, recipe)
    pool = FitterPool(cfg, address, name=f"bench{fitters}")
    try:
        # One request per fitter first, untimed: the first fit of a process is slower (allocator, caches).
        for i in range(fitters):
            pool.submit(synthetic_request(body, cfg.camera, BATCH, seed=i, dataset="warm", first_index=first_index
                                          + BATCH * i))
        if not pool.drain(600):
            raise RuntimeError(f"warm-up did not finish: {pool.metrics()}")
        pool.poll()
        count = requests_per_fitter * fitters
        requests = [synthetic_request(body, cfg.camera, BATCH, seed=100 + i, dataset="bench",
                                      first_index=first_index + BATCH * i) for i in range(count)]
        start, cpu_start = time.perf_counter(), machine_cpu_s()
        for request in requests:
            pool.submit(request)
        if not pool.drain(1800):
            raise RuntimeError(f"requests did not finish: {pool.metrics()}")
        seconds, machine_cpu = time.perf_counter() - start, machine_cpu_s() - cpu_start
        reports = pool.poll()
        metrics = pool.metrics()
        if metrics.failed or metrics.lost or len(reports) != count:
            raise RuntimeError(f"pool lost work during the benchmark ({len(reports)} reports for {count}): {metrics}")
        samples = sum(r.fitted for r in reports)
        mean_error = sum(r.mean_error * r.fitted for r in reports) / max(samples, 1)
        cpu_s = sum(r.cpu_s for r in reports)
        busy_other = max(0.0, machine_cpu - cpu_s) / (seconds * (os.cpu_count() or 1))
        return PoolResult(fitters, count, samples, seconds, cpu_s, mean_error, busy_other, recipe)
    finally:
        pool.shutdown()


TRAINER_SECTION = "## Trainer steps/s per mode (benchmarks/bench_pipeline.py)"
MODES: tuple[tuple[str, str, int], ...] = (  # (label, train.mode, pipeline.lookahead_steps)
    ("static", "static", 0), ("async", "async", 0), ("async + lookahead 2", "async", 2), ("sync", "sync", 0),
)


def trainer_config(base: Path, url: str, mode: str, lookahead: int, steps: int, out: Path) -> RunConfig:
    """configs/local.yaml (resnet18 @ 96, batch 32, one trainer thread, one fitter) in one mode, small data."""
    from spin_ray.config import load_config

    cfg = load_config(base)
    return cfg.model_copy(update={
        "output_dir": out,
        "store": cfg.store.model_copy(update={"url": url, "namespace": f"bench-{mode}-{lookahead}"}),
        "synth": cfg.synth.model_copy(update={"sizes": {"synth-3d": 256, "synth-itw": 256, "synth-test": 64}}),
        "train": cfg.train.model_copy(update={"mode": mode, "steps": steps, "report_images": 0}),
        "pipeline": cfg.pipeline.model_copy(update={"lookahead_steps": lookahead}),
    })


def measure_trainer_modes(base: Path, url: str, steps: int, workdir: Path) -> list[dict]:
    """Trainer steps/s of each mode on one config (same trainer threads), plus what the fitters did."""
    from spin_ray.cli.launch import launch, prepare_data

    rows = []
    for label, mode, lookahead in MODES:
        cfg = trainer_config(base, url, mode, lookahead, steps, workdir / label.replace(" ", "_"))
        prepare_data(cfg, progress=False)
        summary = launch(cfg, progress=False)
        pool = summary.get("pipeline", {}).get("pool") or {}
        reads = summary.get("pipeline", {}).get("reads") or {}
        rows.append({
            "mode": label, "steps": summary["steps_run"], "steps_per_s": summary["steps_run"] / summary["train_seconds"],
            "fits": pool.get("samples_fitted", 0), "dropped": pool.get("dropped", 0),
            "fit_age": reads.get("mean_loop_fit_age_steps", float("nan")),
            "loop_writes": sum(d["loop_writes"] for d in summary["store"].values()),
        })
        print(f"{label}: {rows[-1]['steps_per_s']:.3f} steps/s", flush=True)
    return rows


def trainer_section(rows: list[dict], header: str, command: str) -> str:
    """The RESULTS.md section for trainer steps/s per mode and the async/static ratio."""
    by_mode = {r["mode"]: r for r in rows}
    lines = [header, f"Command: `{command}`",
             "configs/local.yaml (resnet18 @ 96 px, batch 32, one trainer thread; async: one fitter actor on the "
             "other core), synthetic data 256 + 256; steps/s over the training loop only.", "",
             "| mode | steps | steps/s | fits by the pool | requests dropped | mean age of loop fits used (steps) "
             "| loop improvements in the store |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['steps']} | {r['steps_per_s']:.3f} | {r['fits']} | {r['dropped']} | "
                     f"{r['fit_age']:.1f} | {r['loop_writes']} |")
    if "static" in by_mode:
        static = by_mode["static"]["steps_per_s"]
        ratios = [f"{label} / static = {by_mode[label]['steps_per_s'] / static:.2f}"
                  for label in by_mode if label != "static"]
        lines += ["", "; ".join(ratios) + " (target: async >= 0.9 x static)"]
    return "\n".join(lines)


def pool_section(results: list[PoolResult], header: str, busy_before: float, command: str) -> str:
    """The RESULTS.md section body (below POOL_SECTION) for the fitter pool: one row per pool size (median run)
    and the scaling ratio."""
    by_size: dict[int, list[PoolResult]] = {}
    for result in results:
        by_size.setdefault(result.fitters, []).append(result)
    median = {n: statistics.median(r.fits_per_s for r in runs) for n, runs in sorted(by_size.items())}
    per_cpu = {n: statistics.median(r.fits_per_cpu_s for r in runs) for n, runs in sorted(by_size.items())}
    lines = [
        f"Machine: {header}; torch {torch.__version__}.",
        f"Command: `{command}`",
        f"Batch {BATCH}, SMPLify 50 + 50 iterations (paper settings, open body model, joints-only loss), "
        "one torch thread and one Ray CPU per fitter, busy_policy block, 2 requests in flight per fitter; "
        "timed from the first submit to drain, after one untimed request per fitter; every fit written to "
        "an embedded redis-server.",
        "",
        "| fitters | runs | requests | fits/s (median) | fits/s per fitter | fits per fitter CPU-second "
        "| CPU used by other processes | mean ranking error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, runs in sorted(by_size.items()):
        error = statistics.mean(r.mean_error for r in runs)
        other = statistics.mean(r.busy_other for r in runs)
        lines.append(f"| {n} | {len(runs)} | {runs[0].requests} | {median[n]:.1f} | {median[n] / n:.1f} "
                     f"| {per_cpu[n]:.1f} | {100 * other:.0f} % | {error:.1f} |")
    lines.append("")
    if 1 in median and 2 in median:
        cores = os.cpu_count() or 1
        lines.append(
            f"Scaling 1 -> 2 fitters, wall clock: {median[2] / median[1]:.2f}x, i.e. "
            f"{median[2] / (2 * median[1]):.2f} of linear (target >= 0.8 where cores allow; this machine has "
            f"{cores} cores, shared with the driver, Ray's raylet/GCS, redis-server and any other work). "
            f"Per CPU-second a fitter of the 2-pool fits {per_cpu[2] / per_cpu[1]:.2f} x as much as a lone one, "
            "which is the scaling to expect when each fitter has a core of its own (what the pool and a second "
            "fitter cost per fit, without the wait for a core)."
        )
        lines.append("")
    if busy_before > 0.15:
        lines.append(f"Other work kept the CPU {100 * busy_before:.0f} % busy in the second before this run: "
                     "wall-clock fits/s are lower bounds, and the 2-fitter row suffers most (it needs both cores).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print the Markdown section, optionally write it into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-fitter", type=int, default=6, help="timed batch-64 requests per fitter")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pool size, interleaved")
    parser.add_argument("--fitters", type=int, nargs="+", default=[1, 2], help="pool sizes to measure")
    parser.add_argument("--recipes", nargs="+", default=["spin", "spin_compiled"],
                        help="fitting recipes of the fitters, interleaved with the pool sizes: R (eager stages) or "
                             "R_compiled (fitting.compiled, the default of a run)")
    parser.add_argument("--write-results", type=Path, default=None, help="update this RESULTS.md section")
    parser.add_argument("--trainer-steps", type=int, default=40, help="steps per mode (0: skip the trainer part)")
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "local.yaml",
                        help="base config of the trainer part")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    busy_before = cpu_busy_fraction()
    header = machine_summary(busy_before)
    body = BodyModel.embedded()
    start_ray()
    results: list[PoolResult] = []
    try:
        with tempfile.TemporaryDirectory() as data_dir, EmbeddedRedis(data_dir) as server:
            store = FitStore.open(server.url, "bench-pipeline", body_model_hash=body.identity)
            first_index = 0
            for _ in range(args.repeats):
                for fitters in args.fitters:
                    for recipe in args.recipes:
                        result = measure_fitter_pool(body, store.address, fitters, args.requests_per_fitter,
                                                     first_index, recipe)
                        first_index += BATCH * (args.requests_per_fitter + 1) * fitters
                        results.append(result)
                        print(f"{fitters} fitter(s), recipe {recipe}: {result.fits_per_s:.1f} fits/s "
                              f"({result.samples} fits in {result.seconds:.1f} s, mean error {result.mean_error:.3f}, "
                              f"{result.fits_per_cpu_s:.1f} fits per fitter CPU s)", flush=True)
            store.drop()
            store.close()
            trainer_rows = []
            if args.trainer_steps > 0:
                trainer_rows = measure_trainer_modes(args.config, server.url, args.trainer_steps,
                                                     Path(data_dir) / "runs")
    finally:
        ray.shutdown()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    text = pool_section(results, header, busy_before, command)
    print(f"{POOL_SECTION}\n\n{text}")
    if args.write_results:
        write_section(POOL_SECTION, text, args.write_results)
    if trainer_rows:
        trainer_text = trainer_section(trainer_rows, header, command)
        print(trainer_text)
        if args.write_results:
            write_section(TRAINER_SECTION, trainer_text, args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
