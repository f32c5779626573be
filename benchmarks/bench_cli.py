"""How long a `spin-ray` command takes to answer, at this tree and at a baseline revision, interleaved in one run.

Each command runs as a user runs it, in a new process (`python -m spin_ray.cli ...`), against one embedded
store holding 1,000 fits; with `--baseline REV` the same command runs with that revision's packages first on
PYTHONPATH (a temporary git worktree), alternating baseline and current so that load hits both alike.

Run: .venv/bin/python benchmarks/bench_cli.py [--baseline REV] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_revisions import checkout  # noqa: E402
from results import machine_line  # noqa: E402

from spin_ray.store.fit_store import FitStore  # noqa: E402
from spin_ray.store.server import EmbeddedRedis  # noqa: E402

NAMESPACE = "bench-cli"


def commands(url: str) -> dict[str, list[str]]:
    """What is timed: label -> arguments after `spin-ray`."""
    where = ["--url", url, "--namespace", NAMESPACE]
    return {"spin-ray --help": ["--help"], "spin-ray store stats": ["store", "stats", *where],
            "spin-ray store worst --k 5": ["store", "worst", *where, "--dataset", "coco", "--k", "5"]}


def seconds(tree: Path, args: list[str]) -> float:
    """Wall-clock seconds of one `python -m spin_ray.cli ARGS` with tree's packages first."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spin_ray.cli", *args], cwd=tree, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tree)), timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"spin-ray {' '.join(args)} failed in {tree}: {done.stderr[-1500:]}")
    return took


def main(argv: list[str] | None = None) -> int:
    """Time each command on each tree and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision to time beside this tree")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command and tree, interleaved")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spin-ray-bench-cli-") as folder, \
            EmbeddedRedis(Path(folder) / "redis") as server:
        store = FitStore.open(server.url, NAMESPACE, "ab" * 8)
        rng = np.random.default_rng(0)
        store.keep_best("coco", np.arange(1000), rng.normal(size=(1000, 72)), rng.normal(size=(1000, 10)),
                        rng.uniform(1, 100, 1000), 0, "loop")
        store.close()
        trees = {"current": ROOT}
        if args.baseline:
            trees = {"baseline": checkout(args.baseline, Path(folder)), "current": ROOT}
        try:
            times = {label: {name: [] for name in commands(server.url)} for label in trees}
            for repeat in range(args.repeats):
                order = list(trees.items()) if repeat % 2 == 0 else list(reversed(trees.items()))
                for label, tree in order:
                    for name, cmd in commands(server.url).items():
                        times[label][name].append(seconds(tree, cmd))
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["baseline"])],
                               capture_output=True)
    print(machine_line())
    print(f"Command: `.venv/bin/python benchmarks/bench_cli.py"
          f"{f' --baseline {args.baseline}' if args.baseline else ''} --repeats {args.repeats}`")
    print()
    print("| command | " + " | ".join(f"{label} s, median (runs)" for label in trees)
          + (" | current / baseline |" if args.baseline else " |"))
    print("| --- | " + " | ".join("---" for _ in trees) + (" | --- |" if args.baseline else " |"))
    for name in commands(""):
        cells = [f"{statistics.median(times[label][name]):.2f} ({', '.join(f'{t:.2f}' for t in times[label][name])})"
                 for label in trees]
        ratio = (f" | {statistics.median(times['current'][name]) / statistics.median(times['baseline'][name]):.2f}"
                 if args.baseline else "")
        print(f"| {name} | " + " | ".join(cells) + ratio + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
