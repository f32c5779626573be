"""Profile one SMPLify fit (batch 64, 50 + 50 iterations, 1 thread) with torch.profiler: the top ops by self CPU time.

Run: .venv/bin/python benchmarks/smplify_profile/profile_smplify.py OUT.txt [--recipe spin|spin_compiled] (benchmarks/results.fitting_variant labels)
(spin_compiled: its programs are compiled or loaded from cache by the warm-up fit, outside the profile)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from results import fitting_variant  # noqa: E402

from spin_ray.body.body_model import BodyModel  # noqa: E402
from spin_ray.config import RunConfig  # noqa: E402
from spin_ray.fitting.priors import load_pose_prior  # noqa: E402
from spin_ray.fitting.recipes import fit  # noqa: E402
from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--recipe", default="spin")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = RunConfig()
    body = BodyModel.embedded()
    prior = load_pose_prior(cfg.fitting)
    problem = synthetic_problems(body, args.batch, torch.Generator().manual_seed(0), cfg.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(1))
    fitting = cfg.fitting.model_copy(update=fitting_variant(args.recipe))
    fit(body, prior, problem.keypoints_2d, init, fitting, cfg.camera)  # warm-up (and compile)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(body, prior, problem.keypoints_2d, init, fitting, cfg.camera)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    events = prof.key_averages()
    total_ops = sum(e.count for e in events if not e.key.startswith("autograd::engine") and "Backward" not in e.key)
    head = (f"recipe {args.recipe}, batch {args.batch}, 50 + 50 iterations, 1 thread, open model; "
            f"load average {os.getloadavg()}; "
            f"op calls (forward-side aten ops, all iterations) {total_ops}\n")
    with open(args.out, "w") as f:
        f.write(head + table)
    print(head + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
