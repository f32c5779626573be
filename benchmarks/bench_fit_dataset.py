"""Dataset fit throughput: `spin-ray fit`'s pool path with 1 and 2 fitter actors and the single-process path.

Usage: python benchmarks/bench_fit_dataset.py [--samples 10000] [--local-samples 2000] [--write-results]

A synthetic SPIN-format dataset (the pose sampler's people, their 49 keypoints in a 224 px crop) is
fitted from the mean pose with the paper's SMPLify (50 + 50 iterations, batch 64): by
`pipeline.dataset_fit.fit_dataset` (what `spin-ray fit --store` runs) into a fresh namespace of an
embedded redis-server with 1 and then 2 fitters, and by `fit_static` (what `spin-ray fit --local`
runs) in this process with one torch thread. Pools are started and warmed before the clock starts;
the clock covers the whole dataset: the "what is missing" scan, building the starts, Ray, SMPLify,
keep-best writes and the final summary. The section ends with a projection to 500,000 samples.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_busy_fraction, fitting_variant, machine_cpu_s, machine_summary, write_section  # noqa: E402

from spin_ray.body.body_model import BodyModel  # noqa: E402
from spin_ray.config import RunConfig  # noqa: E402
from spin_ray.fitting.priors import load_pose_prior  # noqa: E402
from spin_ray.fitting.static_fits import fit_static  # noqa: E402
from spin_ray.model.mean_params import mean_pose_axis_angle  # noqa: E402
from spin_ray.pipeline.dataset_fit import DatasetFit, dataset_fit_config, fit_dataset  # noqa: E402
from spin_ray.pipeline.pool import FitterPool  # noqa: E402
from spin_ray.store.fit_store import FitStore  # noqa: E402
from spin_ray.store.server import EmbeddedRedis  # noqa: E402
from spin_ray_sim.fitting_problems import synthetic_problems  # noqa: E402

SECTION = "## Dataset fit, `spin-ray fit` (benchmarks/bench_fit_dataset.py)"
PROJECTED = 500_000


def synthetic_dataset(body: BodyModel, cfg: RunConfig, samples: int) -> DatasetFit:
    """Keypoints of `samples` sampled people in their canonical crops, every row usable, mean-pose start."""
    problem = synthetic_problems(body, samples, torch.Generator().manual_seed(2026), cfg.camera)
    pose, betas = mean_pose_axis_angle(cfg)
    return DatasetFit("bench", problem.keypoints_2d.float().numpy(), np.ones(samples, bool), pose.numpy(),
                      betas.numpy())


def measure_pool(body: BodyModel, cfg: RunConfig, url: str, job: DatasetFit, fitters: int) -> dict:
    """Fits/s of the pool path over the whole dataset, into a fresh namespace."""
    run_cfg = dataset_fit_config(cfg, fitters=fitters)
    run_cfg.pipeline.fitter_threads = 1
    store = FitStore.open(url, f"bench-fit-{fitters}-{time.time_ns()}", body_model_hash=body.identity)
    started = time.perf_counter()
    pool = FitterPool(run_cfg, store.address, name=f"bench-fit-{fitters}")
    startup = time.perf_counter() - started
    try:
        cpu_start, clock = machine_cpu_s(), time.perf_counter()
        summary = fit_dataset(lambda: pool, store, body, job, run_cfg, progress=False)
        seconds, machine_cpu = time.perf_counter() - clock, machine_cpu_s() - cpu_start
    finally:
        pool.shutdown()
        store.drop()
        store.close()
    if summary.fitted + summary.failed != len(job.usable) or summary.unfinished:
        raise RuntimeError(f"the pool did not fit every row: {summary}")
    return {"path": f"pool, {fitters} fitter{'s' if fitters > 1 else ''}", "fitters": fitters,
            "samples": summary.sent, "seconds": seconds, "fits_per_s": summary.sent / seconds, "startup": startup,
            "median_error": summary.median_error, "failed": summary.failed,
            "machine_busy": machine_cpu / (seconds * (os.cpu_count() or 1))}


def measure_local(body: BodyModel, cfg: RunConfig, job: DatasetFit, samples: int) -> dict:
    """Fits/s of the single-process path (one torch thread) over the first `samples` rows."""
    prior = load_pose_prior(cfg.fitting)
    keypoints = torch.from_numpy(job.keypoints[:samples])
    pose, betas = (torch.from_numpy(np.asarray(a, np.float32)) for a in (job.init_pose, job.init_betas))
    cpu_start, clock = machine_cpu_s(), time.perf_counter()
    fits = fit_static(body, prior, keypoints, pose, betas, cfg.fitting, cfg.camera, progress=False)
    seconds, machine_cpu = time.perf_counter() - clock, machine_cpu_s() - cpu_start
    ok = np.isfinite(fits.error)
    return {"path": "single process (--local)", "fitters": 0, "samples": samples, "seconds": seconds,
            "fits_per_s": samples / seconds, "startup": 0.0, "median_error": float(np.median(fits.error[ok])),
            "failed": int((~ok).sum()), "machine_busy": machine_cpu / (seconds * (os.cpu_count() or 1))}


def section(rows: list[dict], header: str, command: str, busy_before: float) -> str:
    """The RESULTS.md section: one row per path, scaling, and the 500,000-sample projection."""
    lines = [f"Machine: {header}; torch {torch.__version__}.", f"Command: `{command}`",
             "Synthetic dataset (pose-sampler people, 49 keypoints in the 224 px crop), mean-pose start, SMPLify "
             "50 + 50 iterations, batch 64, one torch thread per fitter (and for --local), one Ray CPU per fitter; "
             "pool started and warmed before the clock, which then covers the whole dataset (missing-row scan, "
             "starts, Ray, SMPLify, keep-best writes to an embedded redis-server).", "",
             "| path | samples | seconds | fits/s | fitter start-up s | machine CPU busy | median error | failed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['samples']:,} | {r['seconds']:.1f} | {r['fits_per_s']:.1f} | "
                     f"{r['startup']:.1f} | {100 * r['machine_busy']:.0f} % | {r['median_error']:.2f} | {r['failed']} |")
    by = {r["fitters"]: r for r in rows}
    lines.append("")
    if 1 in by and 2 in by:
        ratio = by[2]["fits_per_s"] / by[1]["fits_per_s"]
        lines.append(f"Scaling 1 -> 2 fitters: {ratio:.2f}x, {ratio / 2:.2f} of linear (target >= 0.8 where cores "
                     f"allow; this machine has {os.cpu_count()} cores, shared by both fitters, the driver building "
                     "starts, Ray, redis-server and other people's work).")
    if 0 in by and 1 in by:
        lines.append(f"Pool of 1 vs single process: {by[1]['fits_per_s'] / by[0]['fits_per_s']:.2f}x.")
    if 1 in by:
        per_fit = 1.0 / by[1]["fits_per_s"]
        lines += ["", f"Projection to {PROJECTED:,} samples from the measured cost of one fitter on one core here "
                  f"({1000 * per_fit:.1f} ms a fit, i.e. {PROJECTED * per_fit / 3600:.2f} core-hours); beyond 2 "
                  "fitters a linear extrapolation, not a measurement (each fitter on a core of its own):", "",
                  "| fitters (one core each) | hours (extrapolated unless marked) |", "| --- | --- |"]
        for n in (1, 2, 8, 32, 128):
            if n in by:  # a measured pool size: its own rate
                lines.append(f"| {n} | {PROJECTED / by[n]['fits_per_s'] / 3600:.2f} (measured rate) |")
            else:
                lines.append(f"| {n} | {PROJECTED * per_fit / n / 3600:.2f} |")
        lines += ["", "On GPUs nothing was measured here (this machine has none). With benchmarks/SCALING.md's "
                  "*assumed* 0.25 GPU-s per batch of 64 (256 fits/s per GPU), N GPU fitters would take "
                  f"{PROJECTED / 256 / 60:.0f} / N minutes, as long as the store keeps up: the keep-best writes "
                  "measured in bench_store (~6 µs of Redis CPU a write, ~11 µs a sample with its read; SCALING.md) allow "
                  "~250 such GPUs on one Redis at half its core."]
    if busy_before > 0.15:
        lines += ["", f"Other work kept the CPU {100 * busy_before:.0f} % busy in the second before this run: "
                  "wall-clock numbers are lower bounds, the 2-fitter row most of all."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the Markdown section, optionally write it into RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="rows of the synthetic dataset (pool runs)")
    parser.add_argument("--local-samples", type=int, default=2_000, help="rows fitted by the single-process path")
    parser.add_argument("--fitters", type=int, nargs="+", default=[1, 2], help="pool sizes to measure")
    parser.add_argument("--recipes", nargs="+", default=["spin", "spin_compiled"],
                        help="fitting recipes, each path run with each in turn: R (eager stages) or R_compiled "
                             "(fitting.compiled, the default of spin-ray fit)")
    parser.add_argument("--batch-size", type=int, default=64, help="fitting.batch_size (samples per request)")
    parser.add_argument("--write-results", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    busy_before = cpu_busy_fraction()
    header = machine_summary(busy_before)
    cfg = RunConfig()
    cfg.fitting.batch_size = args.batch_size
    configs = {recipe: cfg.model_copy(update={"fitting": cfg.fitting.model_copy(update=fitting_variant(recipe))})
               for recipe in args.recipes}
    body = BodyModel.from_config(cfg.body)
    job = synthetic_dataset(body, cfg, args.samples)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as data_dir, EmbeddedRedis(Path(data_dir)) as server:
            for fitters in args.fitters:
                for recipe, recipe_cfg in configs.items():
                    rows.append(measure_pool(body, recipe_cfg, server.url, job, fitters))
                    rows[-1]["path"] += "" if len(configs) == 1 else f", {recipe}"
                    print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    if args.local_samples:
        for recipe, recipe_cfg in configs.items():
            rows.append(measure_local(body, recipe_cfg, job, min(args.local_samples, args.samples)))
            rows[-1]["path"] += "" if len(configs) == 1 else f", {recipe}"
            print(rows[-1], flush=True)
    command = "python benchmarks/bench_fit_dataset.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = section(rows, header, command.strip(), busy_before)
    print(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
