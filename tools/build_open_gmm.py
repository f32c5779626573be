"""Build the open pose prior: a GMM fitted to the package's own pose sampler, written for `priors.load_gmm`.

    python tools/build_open_gmm.py --out spin_ray/fitting/assets/open_gmm_08.npz

fits 8 components to poses from `pose_sampler.sample_body_poses` (the 69-d body pose) and writes
them in the layout of SMPLify's gmm_08.pkl (means, covars, weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spin_ray.body.pose_sampler import sample_body_poses
from spin_ray.fitting.gmm import COVARIANCE_FLOOR, fit_gmm, mean_log_likelihood

# Seed of the open prior's training poses: kept apart from every seed the synthetic data and the
# runs use (those count up from 0), so the prior never scores the evaluation poses it was fit on.
OPEN_PRIOR_SEED = 8_080_808
OPEN_PRIOR_SAMPLES = 50_000
OPEN_PRIOR_COMPONENTS = 8
OPEN_PRIOR_ITERATIONS = 100


def build_open_prior(out: Path, samples: int, seed: int, k: int, iterations: int) -> dict:
    """Sample poses, fit the mixture and write the .npz; returns a summary for the log."""
    start = time.perf_counter()
    poses = sample_body_poses(samples, torch.Generator().manual_seed(seed), dtype=torch.float64)[:, 3:]
    means, covars, weights = fit_gmm(poses, k=k, seed=seed + 1, iterations=iterations)
    loglik = mean_log_likelihood(poses.numpy(), means, covars, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, means=means.astype(np.float32), covars=covars.astype(np.float32), weights=weights.astype(np.float32),
        seed=np.int64(seed), num_samples=np.int64(samples), covariance_floor=np.float64(COVARIANCE_FLOOR),
        mean_log_likelihood=np.float64(loglik),
    )
    return {"out": str(out), "samples": samples, "seed": seed, "components": k,
            "mean_log_likelihood": round(loglik, 3), "seconds": round(time.perf_counter() - start, 1),
            "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    """Command line: fit and write the open pose prior."""
    parser = argparse.ArgumentParser(prog="python tools/build_open_gmm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output .npz path")
    parser.add_argument("--samples", type=int, default=OPEN_PRIOR_SAMPLES, help="poses to fit on")
    parser.add_argument("--seed", type=int, default=OPEN_PRIOR_SEED, help="seed of the sampled poses")
    parser.add_argument("--components", type=int, default=OPEN_PRIOR_COMPONENTS, help="mixture components")
    parser.add_argument("--iterations", type=int, default=OPEN_PRIOR_ITERATIONS, help="maximum EM iterations")
    args = parser.parse_args(argv)
    summary = build_open_prior(args.out, args.samples, args.seed, args.components, args.iterations)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
