"""On-paper scaling of the async SPIN loop from 8 to 1,000 GPUs, from stated assumptions and measured rates.

Usage: python benchmarks/scale_model.py [--redis-us-per-sample 33] [--steps-per-s 10] [--gpu-s-per-batch 0.25]

Prints the Markdown tables that benchmarks/SCALING.md quotes. Every input is a flag with its source
in the help text; the model is arithmetic only:
- a trainer GPU runs `steps_per_s` steps of `batch` samples and sends one fit request per step;
- a fitter GPU fits batch / gpu_s_per_batch samples per second (4 fitters at 0.25 GPU, time-sliced);
- GPUs split between trainers and fitters so fitting keeps up: fitter GPUs per trainer =
  (batch x steps_per_s) / (batch / gpu_s_per_batch);
- every fitted sample is one keep-best call, and every trained sample one record read; Redis spends
  `redis_us_per_sample` of one core on the pair (measured in the cost-model load run);
- each trainer ships FitRequest.nbytes per step through Ray's object store.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GPU_COUNTS = (8, 32, 64, 128, 256, 512, 1000)
REQUEST_BYTES_PER_SAMPLE = 962  # FitRequest.nbytes / batch: 61,568 B for 64 samples (measured in the load run)


@dataclass(frozen=True)
class Inputs:
    """The model's inputs (see the flags' help for sources)."""

    batch: int
    steps_per_s: float
    gpu_s_per_batch: float
    fitter_gpu_share: float
    in_flight_per_fitter: int
    redis_us_per_sample: float
    redis_target_load: float
    read_ms_p50: float
    read_ms_p99: float


@dataclass(frozen=True)
class Row:
    """The loop at one cluster size."""

    gpus: int
    trainers: int
    fitter_gpus: int
    fitters: int
    samples_per_s: float  # fitted = written = read, the smaller of the two sides
    redis_cores: float
    redis_shards: int
    object_store_mb_per_s_per_trainer: float
    object_store_mb_per_s_total: float
    in_flight_requests: int
    in_flight_mb: float


def split(gpus: int, x: Inputs) -> tuple[int, int]:
    """(trainer GPUs, fitter GPUs) with fitting keeping up with training (at least one of each)."""
    demand = x.batch * x.steps_per_s  # samples per second per trainer GPU
    supply = x.batch / x.gpu_s_per_batch  # fits per second per fitter GPU
    trainers = max(1, math.floor(gpus / (1 + demand / supply)))
    return trainers, gpus - trainers


def row(gpus: int, x: Inputs) -> Row:
    """Rates, Redis cores and Ray traffic at `gpus` GPUs."""
    trainers, fitter_gpus = split(gpus, x)
    fitters = int(fitter_gpus / x.fitter_gpu_share)
    samples = min(trainers * x.batch * x.steps_per_s, fitter_gpus * x.batch / x.gpu_s_per_batch)
    cores = samples * x.redis_us_per_sample / 1e6
    per_trainer = x.steps_per_s * x.batch * REQUEST_BYTES_PER_SAMPLE / 1e6
    in_flight = fitters * x.in_flight_per_fitter
    return Row(gpus, trainers, fitter_gpus, fitters, samples, cores, max(1, math.ceil(cores / x.redis_target_load)),
               per_trainer, per_trainer * trainers, in_flight, in_flight * x.batch * REQUEST_BYTES_PER_SAMPLE / 1e6)


def table(x: Inputs) -> str:
    """The 8 -> 1,000 GPU table in Markdown."""
    lines = [
        "| GPUs | trainer GPUs | fitter GPUs | fitter actors | fits = writes = reads per s | Redis cores busy "
        "| Redis shards at ≤ {:.0%} | object store MB/s per trainer / total | requests in flight (MB) |".format(
            x.redis_target_load),
        "| --- " * 9 + "|",
    ]
    for g in GPU_COUNTS:
        r = row(g, x)
        lines.append(
            f"| {r.gpus:,} | {r.trainers} | {r.fitter_gpus} | {r.fitters:,} | {r.samples_per_s:,.0f} "
            f"| {r.redis_cores:.2f} | {r.redis_shards} | {r.object_store_mb_per_s_per_trainer:.2f} / "
            f"{r.object_store_mb_per_s_total:.1f} | {r.in_flight_requests:,} ({r.in_flight_mb:.0f}) |"
        )
    return "\n".join(lines)


def single_redis_limit(x: Inputs) -> tuple[int, int]:
    """GPUs at which one Redis core is at the target load, and at 100 %."""
    per_gpu = row(1000, x).samples_per_s / 1000  # samples/s per GPU of the cluster (linear in the model)
    capacity = 1e6 / x.redis_us_per_sample
    return int(capacity * x.redis_target_load / per_gpu), int(capacity / per_gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="SPIN's batch (paper)")
    parser.add_argument("--steps-per-s", type=float, default=10.0,
                        help="trainer steps/s per GPU, resnet50 @ 224 batch 64 (assumption: ~640 images/s)")
    parser.add_argument("--gpu-s-per-batch", type=float, default=0.25,
                        help="GPU-seconds of SMPLify 50+50 per batch of 64 (the stand-in's DEFAULT_GPU_S_PER_BATCH)")
    parser.add_argument("--fitter-gpu-share", type=float, default=0.25, help="pipeline.fitter_num_gpus")
    parser.add_argument("--in-flight-per-fitter", type=int, default=2, help="pipeline.max_in_flight_per_fitter")
    parser.add_argument("--redis-us-per-sample", type=float, default=33.0,
                        help="redis-server CPU per keep-best write + record read (measured: load run, SCALING.md)")
    parser.add_argument("--redis-target-load", type=float, default=0.5,
                        help="highest Redis core load planned for, so queueing keeps reads near their idle latency")
    parser.add_argument("--read-ms-p50", type=float, default=0.67, help="batch-64 read, 1 client (RESULTS.md)")
    parser.add_argument("--read-ms-p99", type=float, default=1.20, help="batch-64 read, 1 client (RESULTS.md)")
    args = parser.parse_args()
    x = Inputs(args.batch, args.steps_per_s, args.gpu_s_per_batch, args.fitter_gpu_share, args.in_flight_per_fitter,
               args.redis_us_per_sample, args.redis_target_load, args.read_ms_p50, args.read_ms_p99)
    print(table(x))
    planned, full = single_redis_limit(x)
    trainers, fitters = split(1000, x)
    print(f"\nOne Redis core: {planned} GPUs at {x.redis_target_load:.0%} load, {full} GPUs at 100 %.")
    print(f"Split: {trainers} trainer / {fitters} fitter GPUs of 1,000 "
          f"({fitters / trainers:.2f} fitter GPUs per trainer).")
    step_ms = 1e3 / x.steps_per_s
    print(f"Fit read per step: p50 {x.read_ms_p50} ms = {x.read_ms_p50 / step_ms:.1%} of a {step_ms:.0f} ms step, "
          f"p99 {x.read_ms_p99} ms = {x.read_ms_p99 / step_ms:.1%}.")


if __name__ == "__main__":
    main()
