"""Two revisions of spin-ray side by side: the same benchmarks run on each, interleaved, in one run.

Checks that a change which must not change behaviour (a refactor) gives the same numbers within
noise. The baseline revision is checked out into a temporary git worktree; each benchmark runs in a
child process whose PYTHONPATH puts that tree's packages first, alternating baseline and current
(A B, B A, ...) so that load from other work and drift hit both alike. Prints every headline number of each
run, then the current/baseline ratio of the medians.

Run: .venv/bin/python benchmarks/compare_revisions.py --baseline REV [--repeats 2] [--only smplify store pipeline trainer]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line  # noqa: E402

# benchmark name -> (arguments after `python benchmarks/`, {metric: regex with one number group})
BENCHMARKS: dict[str, tuple[list[str], dict[str, str]]] = {
    "smplify": (["bench_smplify.py", "--no-full", "--no-write"], {
        "fits/s, 1 thread": r"^\| 1 \| ([0-9.]+) \|",
        "fits/s, 2 threads": r"^\| 2 \| ([0-9.]+) \|",
        "median ranking error": r"^\| 1 \| [0-9.]+ \| not run \|\s*\| ([0-9.]+) /",
    }),
    "store": (["bench_store.py", "--seconds", "2", "--clients", "1"], {
        "keep_best writes/s (batch 64)": r"^\| 1 \| keep_best, batch 64 \| ([0-9,.]+) writes/s",
        "keep_best writes/s (single)": r"^\| 1 \| keep_best, batch 1 \| ([0-9,.]+) writes/s",
        "batch-64 read p50 ms": r"^\| 1 \| read, batch 64 \| p50 ([0-9.]+) ms",
    }),
    "pipeline": (["bench_pipeline.py", "--requests-per-fitter", "4", "--trainer-steps", "0"], {
        "pool fits/s, 1 fitter": r"^1 fitter\(s\)(?:, recipe spin)?: ([0-9.]+) fits/s",
        "pool fits/s, 2 fitters": r"^2 fitter\(s\)(?:, recipe spin)?: ([0-9.]+) fits/s",
    }),
    "trainer": (["bench_pipeline.py", "--fitters", "1", "--requests-per-fitter", "1", "--trainer-steps", "30"], {
        "static steps/s": r"^static: ([0-9.]+) steps/s",
        "async steps/s": r"^async: ([0-9.]+) steps/s",
        "async + lookahead 2 steps/s": r"^async \+ lookahead 2: ([0-9.]+) steps/s",
        "sync steps/s": r"^sync: ([0-9.]+) steps/s",
    }),
}


def checkout(revision: str, folder: Path) -> Path:
    """A detached worktree of revision under folder."""
    tree = folder / "baseline"
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
        raise SystemExit(f"compare_revisions: cannot check out --baseline {revision!r}: {last}")
    return tree


def run_benchmark(tree: Path, args: list[str], timeout_s: float) -> str:
    """The output of one benchmark run against the packages of tree."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / args[0]), *args[1:]], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def numbers(output: str, patterns: dict[str, str]) -> dict[str, float]:
    """The headline numbers of one benchmark output (NaN where a pattern did not match)."""
    found = {}
    for metric, pattern in patterns.items():
        match = re.search(pattern, output, re.M)
        found[metric] = float(match.group(1).replace(",", "")) if match else float("nan")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks on both revisions and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against (e.g. a commit hash)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per benchmark and revision, interleaved")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=["smplify", "store", "pipeline"],
                        help="benchmarks to run (trainer: steps/s per mode, ~4 min a run, not by default)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one benchmark run may take")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spin-ray-compare-") as folder:
        baseline = checkout(args.baseline, Path(folder))
        try:
            trees = {"baseline": baseline, "current": ROOT}
            results: dict[str, dict[str, dict[str, list[float]]]] = {}
            for name in args.only:
                bench_args, patterns = BENCHMARKS[name]
                per_tree: dict[str, dict[str, list[float]]] = {label: {m: [] for m in patterns} for label in trees}
                for repeat in range(args.repeats):
                    # A B, then B A: a drift in the machine's speed does not favour the one that runs first.
                    order = list(trees.items()) if repeat % 2 == 0 else list(reversed(trees.items()))
                    for label, tree in order:
                        found = numbers(run_benchmark(tree, bench_args, args.timeout), patterns)
                        print(f"{name} #{repeat + 1} {label}: " + ", ".join(f"{m} {v:g}" for m, v in found.items()),
                              flush=True)
                        for metric, value in found.items():
                            per_tree[label][metric].append(value)
                results[name] = per_tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)
    print()
    print(machine_line())
    print(f"Command: `.venv/bin/python benchmarks/compare_revisions.py --baseline {args.baseline} "
          f"--repeats {args.repeats} --only {' '.join(args.only)}` ({time.monotonic() - started:.0f} s)")
    print()
    print("| benchmark | metric | baseline (runs) | current (runs) | current / baseline (medians) |")
    print("| --- | --- | --- | --- | --- |")
    for name, per_tree in results.items():
        for metric in per_tree["baseline"]:
            base, cur = per_tree["baseline"][metric], per_tree["current"][metric]
            ratio = statistics.median(cur) / statistics.median(base)
            print(f"| {name} | {metric} | {', '.join(f'{v:g}' for v in base)} | {', '.join(f'{v:g}' for v in cur)} | "
                  f"{ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
