"""Body model cost: full smplx forward+backward vs the joints-only keypoint forward+backward.

Batch 64, one thread, median over repeats; prints ms and the speed-up and records them in
benchmarks/RESULTS.md under its own section.  Run: .venv/bin/python benchmarks/bench_body.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, machine_line, write_section  # noqa: E402

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats  # noqa: E402
from spin_ray.body.model_file import embedded_model_path  # noqa: E402
from spin_ray_sim.random_model import random_model_arrays  # noqa: E402

SECTION = "## Body model (benchmarks/bench_body.py)"
COMMAND = ".venv/bin/python benchmarks/bench_body.py"


def median_ms(step: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    """Median wall time of step() in milliseconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def time_paths(model: BodyModel, batch: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Median ms of forward and forward+backward of both paths, and their largest keypoint difference."""
    g = torch.Generator().manual_seed(seed)
    rotmats = axis_angle_pose_to_rotmats(torch.randn(batch, 72, generator=g) * 0.5)
    betas = torch.randn(batch, model.num_betas, generator=g)
    weights = torch.randn(batch, 49, 3, generator=g)
    paths = {"full": lambda r, b: model(r, b).keypoints, "joints_only": model.keypoints}

    def forward_backward(path) -> None:
        r, b = rotmats.clone().requires_grad_(), betas.clone().requires_grad_()
        (path(r, b) * weights).sum().backward()

    def forward(path) -> None:
        with torch.no_grad():
            path(rotmats, betas)

    out = {}
    for name, path in paths.items():
        out[f"{name}_fwd_bwd_ms"] = median_ms(lambda: forward_backward(path), repeats)
        out[f"{name}_fwd_ms"] = median_ms(lambda: forward(path), repeats)
    with torch.no_grad():
        out["max_diff_m"] = float((paths["full"](rotmats, betas) - paths["joints_only"](rotmats, betas)).abs().max())
    return out


def benchmark_models(tmp: Path) -> list[tuple[str, BodyModel]]:
    """The models to time: the embedded open model (if built) and a random SMPL-sized stand-in."""
    models = []
    if embedded_model_path().is_file():
        models.append(("open model (embedded)", BodyModel.embedded()))
    # Stand-in for SMPL: 6890 vertices, dense nonzero posedirs; 11 one-vertex keypoints like SMPL's
    # plus 9 spread over up to 20 vertices each (SPIN's J_regressor_extra rows are small vertex sets).
    arrays = random_model_arrays(num_vertices=6890, seed=0, keypoint_support=20)
    arrays["keypoint_regressor"][:11] = 0.0
    arrays["keypoint_regressor"][np.arange(11), np.random.default_rng(1).integers(0, 6890, size=11)] = 1.0
    np.savez(tmp / "random_smpl_sized.npz", **arrays)
    models.append(("random SMPL-sized (6890 v)", BodyModel.from_file(tmp / "random_smpl_sized.npz")))
    # Stand-in for the open model: its size, zero posedirs, keypoint regressors spread over hundreds
    # of vertices each (Anny's COCO regressor rows touch 40-400 vertices with weight > 1e-6).
    arrays = random_model_arrays(num_vertices=13718, seed=1, keypoint_support=400)
    arrays["posedirs"][:] = 0.0
    np.savez(tmp / "random_open_sized.npz", **arrays)
    models.append(("random open-sized (13718 v, zero posedirs)", BodyModel.from_file(tmp / "random_open_sized.npz")))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median reported)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in benchmark_models(Path(tmp)):
            r = time_paths(model, args.batch, args.repeats)
            ratio = r["full_fwd_bwd_ms"] / r["joints_only_fwd_bwd_ms"]
            print(f"{name}: V={model.num_vertices} support={model.num_support_vertices} "
                  f"method={model.extras_method} | fwd+bwd full "
                  f"{r['full_fwd_bwd_ms']:.1f} ms, joints-only {r['joints_only_fwd_bwd_ms']:.2f} ms, x{ratio:.1f} | "
                  f"fwd full {r['full_fwd_ms']:.1f} ms, joints-only {r['joints_only_fwd_ms']:.2f} ms | "
                  f"max |diff| {r['max_diff_m']:.1e} m")
            rows.append(
                f"| {name} | {model.num_vertices} | {model.num_support_vertices} | "
                f"{model.extras_method} | {r['full_fwd_bwd_ms']:.1f} | "
                f"{r['joints_only_fwd_bwd_ms']:.2f} | {ratio:.1f}x | {r['full_fwd_ms']:.1f} | "
                f"{r['joints_only_fwd_ms']:.2f} | {r['max_diff_m']:.0e} |"
            )
    if not embedded_model_path().is_file():
        rows.append("| open model (embedded) | pending: asset not built when this ran | | | | | | | | |")
    body = "\n".join([
        machine_line(f"torch {torch.__version__}, 1 thread", " (other work shares the machine)"),
        f"Command: `{COMMAND}`",
        f"Batch {args.batch}, 49 SPIN keypoints, loss = weighted sum, median of {args.repeats} runs. "
        "Full = smplx forward over all vertices; joints-only = FK of shaped rest joints + skinning of the "
        "keypoint regressors' support vertices ('vertices'), or the same LBS summed per (keypoint, joint) pair "
        "('pairs', 20 x 24 of them), whichever has fewer items.",
        "",
        "| model | vertices | support vertices | extras method | full fwd+bwd ms | joints-only fwd+bwd ms | speed-up | "
        "full fwd ms | joints-only fwd ms | max keypoint diff (m) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    if not args.no_write:
        write_section(SECTION, body)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
