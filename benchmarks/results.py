"""Shared by the benchmarks: the machine line, and writing one section of RESULTS.md in place."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

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


def machine_line() -> str:
    """One line naming the machine, torch and the load (other work on 2 cores skews timings)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; torch {torch.__version__}; "
            f"1-min load average at the end {load:.2f}.")


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
