"""SMPLify speed: fits/s at 50 + 50 iterations, joints-only vs full-mesh loss, and this tree vs a baseline revision.

This tree fits with `--recipe` (default spin_compiled: recipe spin with fitting.compiled, fitting/compiled_stage.py); the
baseline revision and the full-mesh path fit with spin's eager smplify. A compiled child's warm-up fit compiles its
programs or loads them from inductor's on-disk cache: its seconds are reported beside the timed fit.

Every path fits the same synthetic batch from the same network-like initialisation (made once by
this tree and handed to each run in a file), so their final errors can be compared. With
`--baseline REV` the joints-only fit of that revision (its spin_ray exported by `git archive` into a
temporary folder, nothing in the checkout touched) runs in child processes interleaved with this
tree's (A B, B A, ...), so load from other work hits both alike; the ratio is of the medians.
On CPU: batch 64 (`--batch`), 1 and 2 threads. With `--device cuda`: batches 64 to 4,096, one thread.
`--batches 64 256 1024 4096`: fits/s per batch size at one thread, spin vs `--recipe`, interleaved (no baseline).
Run: .venv/bin/python benchmarks/bench_smplify.py [--baseline REV] [--repeats 3] [--no-full] [--device cpu|cuda]
     [--recipe spin_compiled] [--batches N ...] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from results import machine_line, write_section  # noqa: E402

SECTION = "## SMPLify (benchmarks/bench_smplify.py)"
CUDA_BATCHES = (64, 256, 1024, 4096)


def time_fit(problem_file: Path, out_file: Path | None, joints_only: bool, threads: int, device: str,
             recipe: str = "spin") -> tuple[float, float]:
    """Fit the saved batch once after a warm-up fit; seconds of the timed fit and of the warm-up (result saved)."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import RunConfig
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.smplify import SmplifyParams

    if recipe == "spin":  # smplify itself: what every revision has
        from spin_ray.fitting.smplify import smplify
    else:
        from spin_ray.fitting.recipes import fit as smplify
    torch.set_num_threads(threads)
    cfg = RunConfig()
    if recipe == "spin":
        update = {}
    else:  # this tree: a label of benchmarks/results.fitting_variant
        from results import fitting_variant
        update = fitting_variant(recipe)
    fitting = cfg.fitting.model_copy(update={"joints_only": joints_only} | update)
    body = BodyModel.embedded().to(device)
    prior = load_pose_prior(cfg.fitting).to(device)
    saved = torch.load(problem_file)
    keypoints = saved["keypoints_2d"].to(device)
    init = SmplifyParams(*(saved[name].to(device) for name in ("global_orient", "body_pose", "betas", "camera_t")))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    smplify(body, prior, keypoints, init, fitting, cfg.camera)  # warm-up (allocator, first-call costs, compiling)
    sync()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    result = smplify(body, prior, keypoints, init, fitting, cfg.camera)
    sync()
    elapsed = time.perf_counter() - start
    if out_file is not None:
        torch.save({"pose": result.params.pose.cpu(), "betas": result.params.betas.cpu(),
                    "camera_t": result.params.camera_t.cpu(), "error": result.error.cpu(),
                    "pixel_error": result.pixel_error.cpu()}, out_file)
    return elapsed, warm_up


def child(argv: list[str]) -> int:
    """`--child PROBLEM OUT JOINTS_ONLY THREADS DEVICE RECIPE`: one timed fit in this process's spin_ray; prints
    seconds."""
    problem, out, joints_only, threads, device, recipe = argv
    seconds, warm_up = time_fit(Path(problem), Path(out), joints_only == "1", int(threads), device, recipe)
    import spin_ray

    print(json.dumps({"seconds": seconds, "warm_up": warm_up, "spin_ray": spin_ray.__file__}))
    return 0


def run_child(tree: Path | None, problem: Path, out: Path, joints_only: bool, threads: int, device: str,
              recipe: str = "spin", warm_ups: list[float] | None = None) -> float:
    """Seconds of one fit in a child process whose spin_ray comes from `tree` (None: this checkout); the warm-up
    fit's seconds are appended to warm_ups."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree or ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(problem), str(out),
           "1" if joints_only else "0", str(threads), device, recipe]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=tree or ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child fit failed ({'baseline' if tree else 'current'}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = (tree or ROOT) / "spin_ray" / "__init__.py"
    if Path(report["spin_ray"]).resolve() != expected.resolve():
        raise RuntimeError(f"child imported {report['spin_ray']}, expected {expected}")
    if warm_ups is not None:
        warm_ups.append(report["warm_up"])
    return report["seconds"]


def export_revision(rev: str, dest: Path) -> Path:
    """spin_ray and spin_ray_sim of revision `rev` under dest (git archive; the checkout is not touched)."""
    archive = dest / "rev.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev, "spin_ray", "spin_ray_sim"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    # Model and prior assets are git-ignored build outputs: use this checkout's (the same files).
    for assets in ("spin_ray/body/assets", "spin_ray/fitting/assets"):
        target = dest / "tree" / assets
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            target.symlink_to(ROOT / assets)
    return dest / "tree"


def make_problem(batch: int, path: Path) -> dict[str, torch.Tensor]:
    """The synthetic batch and its network-like start, saved to path; returns the truth's joints and camera."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import RunConfig
    from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems

    cfg = RunConfig()
    body = BodyModel.embedded()
    problem = synthetic_problems(body, batch, torch.Generator().manual_seed(0), cfg.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(1))
    torch.save({"keypoints_2d": problem.keypoints_2d, **dict(zip(("global_orient", "body_pose", "betas", "camera_t"),
                                                                 init.tensors()))}, path)
    return {"joints_3d": problem.joints_3d}


def accuracy(out_file: Path, truth: dict[str, torch.Tensor]) -> dict[str, float]:
    """Median ranking error, pixel error and PA-MPJPE (mm) of a saved fit, and its tensors."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.eval.metrics import pa_mpjpe
    from spin_ray_sim.fitting_problems import posed_joints

    fit = torch.load(out_file)
    joints = posed_joints(BodyModel.embedded(), fit["pose"], fit["betas"])
    return {"error": float(fit["error"].median()), "px": float(fit["pixel_error"].median()),
            "pa_mpjpe": float(pa_mpjpe(joints, truth["joints_3d"]).median()), "fit": fit}


def max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference of pose, betas and camera between two saved fits."""
    return max(float((a["fit"][k] - b["fit"][k]).abs().max()) for k in ("pose", "betas", "camera_t"))


def cpu_rows(args, tmp: Path, baseline_tree: Path | None) -> list[str]:
    """Interleaved repeats at each of args.threads; the table rows."""
    problem = tmp / "problem.pt"
    truth = make_problem(args.batch, problem)
    trees = {"new": None} if baseline_tree is None else {"new": None, "baseline": baseline_tree}
    recipes = {"new": args.recipe, "baseline": "spin"}
    rows = []
    for threads in args.threads:
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        warm_ups: list[float] = []
        for rep in range(args.repeats):
            names = list(trees) if rep % 2 == 0 else list(trees)[::-1]
            for name in names:
                seconds[name].append(run_child(trees[name], problem, tmp / f"{name}.pt", True, threads, "cpu",
                                               recipes[name], warm_ups if name == "new" else None))
        full_s = None
        if not args.no_full:
            full_s = run_child(None, problem, tmp / "full.pt", False, threads, "cpu")
        acc = {name: accuracy(tmp / f"{name}.pt", truth) for name in trees}
        if full_s is not None:
            acc["full"] = accuracy(tmp / "full.pt", truth)
        fps = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
        base = f"{fps['baseline']:.1f}" if "baseline" in fps else "not run"
        ratio = f"{fps['new'] / fps['baseline']:.2f}x" if "baseline" in fps else ""
        full = f"{args.batch / full_s:.2f}" if full_s is not None else "not run"

        def cell(name: str) -> str:
            a = acc.get(name)
            return "" if a is None else f"{a['error']:.3f} / {a['px']:.3f} / {a['pa_mpjpe']:.2f}"

        diff = f"{max_diff(acc['new'], acc['baseline']):.1e}" if "baseline" in acc else ""
        diff_full = f"{max_diff(acc['new'], acc['full']):.1e}" if "full" in acc else ""
        speedup = f"{fps['new'] * full_s / args.batch:.1f}x" if full_s is not None else ""
        warm = "/".join(f"{w:.1f}" for w in warm_ups)
        # Column order kept from the earlier table (compare_revisions.py reads the first columns).
        rows.append(f"| {threads} | {fps['new']:.1f} | {full} | {speedup} | {cell('new')} | {cell('full')} | "
                    f"{base} | {ratio} | {cell('baseline')} | {diff} | {diff_full} | {warm} | "
                    f"{os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
    return rows


def batch_rows(args, tmp: Path) -> list[str]:
    """fits/s per batch size at one thread: eager spin and args.recipe of this tree, interleaved."""
    rows = []
    names = ("spin", args.recipe)
    for batch in args.batches:
        problem = tmp / f"problem{batch}.pt"
        truth = make_problem(batch, problem)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        warm_ups: list[float] = []
        for rep in range(args.repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):
                seconds[name].append(run_child(None, problem, tmp / f"{name}.pt", True, 1, args.device, name,
                                               warm_ups if name != "spin" else None))
        acc = {name: accuracy(tmp / f"{name}.pt", truth) for name in names}
        fps = {name: batch / statistics.median(s) for name, s in seconds.items()}
        rows.append(f"| {batch} | {fps['spin']:.1f} | {fps[args.recipe]:.1f} | "
                    f"{fps[args.recipe] / fps['spin']:.2f}x | "
                    + " | ".join(f"{acc[n]['error']:.3f} / {acc[n]['px']:.3f} / {acc[n]['pa_mpjpe']:.2f}"
                                 for n in names)
                    + f" | {max_diff(acc['spin'], acc[args.recipe]):.1e} | {'/'.join(f'{w:.1f}' for w in warm_ups)} | "
                    f"{os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
    return rows


def cuda_rows(args, tmp: Path, baseline_tree: Path | None) -> list[str]:
    """fits/s per batch on the GPU (one thread): this tree's recipe, eager spin, the baseline, the full-mesh path."""
    rows = []
    for batch in args.batches or CUDA_BATCHES:
        problem = tmp / f"problem{batch}.pt"
        truth = make_problem(batch, problem)
        warm_ups: list[float] = []
        new_s = run_child(None, problem, tmp / "new.pt", True, 1, "cuda", args.recipe, warm_ups)
        spin_s = run_child(None, problem, tmp / "spin.pt", True, 1, "cuda", "spin")
        base_s = None if baseline_tree is None else run_child(baseline_tree, problem, tmp / "base.pt", True, 1, "cuda")
        full_s = None if args.no_full else run_child(None, problem, tmp / "full.pt", False, 1, "cuda")
        new = accuracy(tmp / "new.pt", truth)
        spin = accuracy(tmp / "spin.pt", truth)
        full = accuracy(tmp / "full.pt", truth) if full_s is not None else None
        full_cell = "" if full is None else f"{full['error']:.3f} / {full['pa_mpjpe']:.2f}"
        rows.append(f"| {batch} | {batch / new_s:.1f} | {batch / spin_s:.1f} | "
                    f"{'not run' if base_s is None else f'{batch / base_s:.1f}'} | "
                    f"{'not run' if full_s is None else f'{batch / full_s:.1f}'} | "
                    f"{new['error']:.3f} / {new['pa_mpjpe']:.2f} | {spin['error']:.3f} / {spin['pa_mpjpe']:.2f} | "
                    f"{full_cell} | {max_diff(new, spin):.1e} | {warm_ups[0]:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="batch on CPU")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="CPU: the batch-size table (one thread) instead of the baseline table; cuda: the batches")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--baseline", help="a git revision whose joints-only fit runs beside this tree's")
    parser.add_argument("--recipe", default="spin_compiled", help="this tree's recipe, R or R_compiled (fitting.compiled); "
                        "the baseline runs eager spin")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads of the baseline table")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed fits per tree (median reported)")
    parser.add_argument("--no-full", action="store_true", help="skip the (slow) full-mesh path")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    command = "`.venv/bin/python benchmarks/bench_smplify.py " + " ".join(argv) + "`"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        baseline_tree = export_revision(args.baseline, tmp) if args.baseline else None
        if args.device == "cuda":
            header = ["| batch | new fits/s | eager spin fits/s | baseline fits/s | full-mesh fits/s | "
                      "new error / PA-MPJPE mm | eager spin error / PA-MPJPE mm | full-mesh error / PA-MPJPE mm | "
                      "max param diff new vs spin | new warm-up s |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            rows = cuda_rows(args, tmp, baseline_tree)
        elif args.batches:
            header = [f"| batch | spin fits/s | {args.recipe} fits/s | {args.recipe} / spin | "
                      f"spin error / px / PA-MPJPE mm | {args.recipe} error / px / PA-MPJPE mm | max param diff | "
                      f"{args.recipe} warm-up s | load (1 min) |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            rows = batch_rows(args, tmp)
        else:
            header = ["| threads | new fits/s | full-mesh fits/s | new / full | new error / px / PA-MPJPE mm | "
                      "full-mesh error / px / PA-MPJPE mm | baseline fits/s | new / baseline | "
                      "baseline error / px / PA-MPJPE mm | max param diff new vs baseline | "
                      "max param diff new vs full | new warm-up s (compile or cache load) | load (1 min) |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            rows = cpu_rows(args, tmp, baseline_tree)
    lines = [
        machine_line(f"torch {torch.__version__}, device {args.device}"),
        f"Command: {command}" + (f" (baseline = {args.baseline})" if args.baseline else ""),
        f"New = this tree's recipe {args.recipe!r}; baseline and full-mesh = eager spin (smplify). "
        "Open body model, 50 + 50 Adam iterations, network-like init (truth + N(0, 0.2 rad), betas 0, depth +10 %); "
        f"fits/s = batch / median of {args.repeats} interleaved timed fits (CPU), each after a warm-up fit in its "
        "process; error = SPIN's ranking error (median), px = mean keypoint distance (median), PA-MPJPE of the 24 "
        "joints vs the truth (median).",
        "",
        *header,
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
