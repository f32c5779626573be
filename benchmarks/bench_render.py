"""Renderer throughput at 224x224 for a 27k-triangle mesh; prints renders/s and records them in
benchmarks/RESULTS.md under its own section.  Run: .venv/bin/python benchmarks/bench_render.py"""

from __future__ import annotations

import argparse
import os
import platform
import re
from pathlib import Path

from spin_ray.render.benchmark import measure_renders_per_second

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Renderer (benchmarks/bench_render.py)"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_section(body: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    for mode in ("shaded", "silhouette", "part_colors"):
        r = measure_renders_per_second(224, 224, seconds=args.seconds, mode=mode)
        print(f"{mode:12s} {r['renders_per_s']:7.1f} renders/s  ({r['triangles']} triangles, {r['size']})")
        rows.append(f"| {mode} | {r['renders_per_s']:.0f} |")
    import moderngl

    with moderngl.create_context(standalone=True, backend="egl") as ctx:
        gl_renderer = ctx.info["GL_RENDERER"]
    body = "\n".join([
        f"Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; GL: {gl_renderer}; "
        f"1-min load average at the end {os.getloadavg()[0]:.2f} (other work on the machine slows llvmpipe).",
        "Command: `.venv/bin/python benchmarks/bench_render.py`",
        "Mesh: torus with 27,378 triangles / 13,689 vertices (the open body model's size), 224x224,",
        "new vertex positions every frame, image read back to numpy.",
        "",
        "| mode | renders/s |",
        "| --- | --- |",
        *rows,
    ])
    if not args.no_write:
        write_section(body)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
