"""Renderer throughput at 224x224 for a 27k-triangle mesh; prints renders/s and records them in
benchmarks/RESULTS.md under its own section.  Run: .venv/bin/python benchmarks/bench_render.py"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, machine_line, write_section  # noqa: E402

from spin_ray_sim.render_bench import measure_renders_per_second  # noqa: E402

SECTION = "## Renderer (benchmarks/bench_render.py)"


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
        machine_line(f"GL: {gl_renderer}", " (other work on the machine slows llvmpipe)"),
        "Command: `.venv/bin/python benchmarks/bench_render.py`",
        "Mesh: torus with 27,378 triangles / 13,689 vertices (the open body model's size), 224x224,",
        "new vertex positions every frame, image read back to numpy.",
        "",
        "| mode | renders/s |",
        "| --- | --- |",
        *rows,
    ])
    if not args.no_write:
        write_section(SECTION, body)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
