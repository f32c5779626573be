"""SMPLify speed: fits/s at batch 64, 50 + 50 iterations, joints-only vs full-mesh loss, 1 and 2 threads.

Both paths fit the same synthetic batch from the same network-like initialisation, so their final
errors can be compared; the ratio is measured side by side in one run.
Run: .venv/bin/python benchmarks/bench_smplify.py [--batch 64] [--no-full]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_section  # noqa: E402

from spin_ray.body.body_model import BodyModel  # noqa: E402
from spin_ray.config import RunConfig  # noqa: E402
from spin_ray.fitting.priors import load_pose_prior  # noqa: E402
from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems  # noqa: E402
from spin_ray.fitting.smplify import smplify  # noqa: E402

SECTION = "## SMPLify (benchmarks/bench_smplify.py)"


def run_once(body, prior, problem, init, joints_only: bool, threads: int) -> dict[str, float]:
    """One timed fit of the whole batch; fits/s and the final errors."""
    cfg = RunConfig()
    fitting = cfg.fitting.model_copy(update={"joints_only": joints_only})
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = smplify(body, prior, problem.keypoints_2d, init, fitting, cfg.camera)
    elapsed = time.perf_counter() - start
    return {
        "fits_per_s": problem.keypoints_2d.shape[0] / elapsed,
        "seconds": elapsed,
        "median_error": float(result.error.median()),
        "median_px": float(result.pixel_error.median()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-full", action="store_true", help="skip the (slow) full-mesh path")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    cfg = RunConfig()
    body = BodyModel.embedded()
    prior = load_pose_prior(cfg.fitting)
    problem = synthetic_problems(body, args.batch, torch.Generator().manual_seed(0), cfg.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(1))
    run_once(body, prior, problem, init, True, 1)  # warm-up (allocator, first-call costs)
    rows = []
    for threads in (1, 2):
        joints = run_once(body, prior, problem, init, True, threads)
        full = None if args.no_full else run_once(body, prior, problem, init, False, threads)
        rows.append((threads, joints, full))
    lines = [
        machine_line(),
        "Command: `.venv/bin/python benchmarks/bench_smplify.py`",
        f"Open body model, batch {args.batch}, 50 + 50 Adam iterations, network-like init (truth + N(0, 0.2 rad), "
        "betas 0, depth +10 %); error = SPIN's ranking error (median), px = mean keypoint distance (median).",
        "",
        "| threads | joints-only fits/s | full-mesh fits/s | speed-up | joints-only error / px | full-mesh error / px |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for threads, joints, full in rows:
        if full is None:
            lines.append(f"| {threads} | {joints['fits_per_s']:.1f} | not run | | "
                         f"{joints['median_error']:.2f} / {joints['median_px']:.2f} | |")
        else:
            lines.append(
                f"| {threads} | {joints['fits_per_s']:.1f} | {full['fits_per_s']:.2f} | "
                f"{joints['fits_per_s'] / full['fits_per_s']:.1f}x | "
                f"{joints['median_error']:.2f} / {joints['median_px']:.2f} | "
                f"{full['median_error']:.2f} / {full['median_px']:.2f} |"
            )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
