"""Shared by the benchmarks: the machine line, CPU load, and writing one section of RESULTS.md in place."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def machine_line(setup: str | None = None, note: str = "") -> str:
    """One line naming the machine, `setup` (default: the torch version) and the load (other work on 2 cores
    skews timings); `note` follows the load average."""
    if setup is None:
        import torch  # here, not at the top: the renderer benchmark does not use torch

        setup = f"torch {torch.__version__}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; {setup}; "
            f"1-min load average at the end {load:.2f}{note}.")


def machine_summary(busy_before: float) -> str:
    """nproc, CPU model, load averages and `busy_before` (from cpu_busy_fraction): the fit-store and
    pipeline tables' machine text."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {cpu_model()}, load average before the run {load}, "
            f"CPU {100 * busy_before:.0f} % busy in the second before the run")


def _cpu_jiffies() -> tuple[int, int]:
    """(all, idle) clock ticks of every core so far, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores' time spent not idle over `seconds`, from /proc/stat (0 where unavailable)."""
    try:
        total0, idle0 = _cpu_jiffies()
        time.sleep(seconds)
        total1, idle1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_cpu_s() -> float:
    """CPU seconds spent by every process on the machine so far (all cores, from /proc/stat; nan where unavailable)."""
    try:
        total, idle = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section that starts with `heading` in RESULTS.md."""
    text = path.read_text() if path.is_file() else HEADER
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def fitting_variant(label: str) -> dict[str, object]:
    """A benchmark's fitting label as FittingConfig fields: `R` is recipe R on the eager stages, `R_compiled` recipe R
    with each Adam iteration compiled (fitting.compiled, the product's default)."""
    recipe, compiled = (label[: -len("_compiled")], True) if label.endswith("_compiled") else (label, False)
    return {"recipe": recipe, "compiled": compiled}
