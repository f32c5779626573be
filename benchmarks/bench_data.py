"""Data throughput: synthetic images generated per second (1 and 2 processes) and training samples
loaded and augmented per second at 224x224 with 0, 1 and 2 DataLoader workers, on the synthetic
data. Prints a table and records it in benchmarks/RESULTS.md under its own section.
Run: .venv/bin/python benchmarks/bench_data.py"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_model, write_section  # noqa: E402

from spin_ray.config import DataConfig, RunConfig  # noqa: E402
from spin_ray.data.dataset import SpinImageDataset, make_loader  # noqa: E402
from spin_ray.data.spin_format import load_spin_npz  # noqa: E402
from spin_ray.config import with_overrides  # noqa: E402
from spin_ray.data.synth import generate  # noqa: E402

SECTION = "## Data (benchmarks/bench_data.py)"


def generation_seconds(cfg: RunConfig, images: int, workers: int, folder: Path) -> float:
    """Wall seconds of a fresh `generate` of `images` synth-3d samples (process start-up included)."""
    cfg = with_overrides(cfg, synth={"sizes": {"synth-3d": images, "synth-itw": 0, "synth-test": 0}})
    start = time.perf_counter()
    generate(cfg, folder, workers=workers, progress=False)
    return time.perf_counter() - start


def generation_rates(cfg: RunConfig, images: int, workers: int, folder: Path) -> tuple[float, float]:
    """(end-to-end, steady) images/s: 2N images over their wall time, and N / (t(2N) - t(N)), which
    leaves out the fixed start-up (spawning, imports, body model, GL context)."""
    short = generation_seconds(cfg, images, workers, folder / "short")
    long = generation_seconds(cfg, 2 * images, workers, folder / "long")
    return 2 * images / long, images / max(long - short, 1e-9)


def loading_rate(npz: Path, res: int, workers: int, batch: int, batches: int) -> float:
    """Augmented training samples per second through SpinImageDataset and the project's DataLoader."""
    spin = load_spin_npz(npz, npz.parent)
    loader = make_loader(SpinImageDataset(spin, DataConfig(img_res=res)), batch, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch are not throughput
    start = time.perf_counter()
    done = 0
    while done < batches:
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        done += 1
    rate = batches * batch / (time.perf_counter() - start)
    del iterator, loader
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300, help="N: runs of N and 2N images per process count")
    parser.add_argument("--batches", type=int, default=20, help="batches of 32 loaded per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    base = RunConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for workers in (1, 2):
            total, steady = generation_rates(base, args.images, workers, Path(tmp) / f"gen{workers}")
            print(f"generation, {workers} process(es): {total:.1f} images/s end to end, {steady:.1f} steady", flush=True)
            rows.append(f"| generate {base.synth.image_size}x{base.synth.image_size} JPEG, {workers} process(es) | "
                        f"{total:.0f} images/s end to end, {steady:.0f} images/s steady |")
        npz = Path(tmp) / "gen2" / "long" / "synth-3d.npz"
        for workers in (0, 1, 2):
            rate = loading_rate(npz, 224, workers, 32, args.batches)
            print(f"loading at 224, {workers} DataLoader worker(s): {rate:.1f} samples/s", flush=True)
            rows.append(f"| load + augment at 224, batch 32, {workers} DataLoader worker(s) | {rate:.0f} samples/s |")
    load_after = os.getloadavg()
    body = f"""
Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; torch {torch.__version__}, 1 thread in the main process.
1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (other work on the machine lowers these numbers).
Command: `.venv/bin/python {" ".join(["benchmarks/bench_data.py", *sys.argv[1:]])}`
Generation: default `SynthConfig` (open body model, {base.synth.image_size}² images, chunks of {base.synth.chunk_size}),
runs of N = {args.images} and 2N images; end to end = 2N / wall time of the 2N run (from the call to the
written npz, spawned workers' start-up included); steady = N / (t(2N) - t(N)), start-up left out.
Loading: `SpinImageDataset` (SPIN augmentation: flip, rotation, scale, colour noise) on the generated
synth-3d split, `make_loader` batches of 32, {args.batches} batches after the first.

| what | throughput |
| --- | --- |
{chr(10).join(rows)}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
