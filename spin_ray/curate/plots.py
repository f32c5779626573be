"""Plots of a namespace's fits: the histogram of stored errors per dataset and mean error over training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spin_ray.store.fit_store import FitStore


def plot_fit_errors(store: FitStore, datasets: list[str], threshold: float, out: Path) -> Path:
    """Write a PNG: histogram of stored errors per dataset (threshold line) and mean error written per step."""
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    errors = {name: store.all_errors(name)[1] for name in datasets}
    progress = {name: store.progress(name) for name in datasets}
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    hist, curve = fig.subplots(1, 2)
    finite = np.concatenate([e for e in errors.values() if e.size]) if any(e.size for e in errors.values()) else np.zeros(1)
    bins = np.linspace(0.0, max(float(np.quantile(finite, 0.995)), threshold) * 1.05, 60)
    for name, e in errors.items():
        hist.hist(np.clip(e, None, bins[-1]), bins=bins, alpha=0.55, label=f"{name} ({e.size})")
    hist.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    hist.set(xlabel="fit error (px, last bin includes higher)", ylabel="samples", title="stored fit errors per dataset")
    hist.legend(fontsize="small")
    if any(progress.values()):
        for name, steps in progress.items():
            if steps:
                curve.plot([s for s, _, _ in steps], [m for _, _, m in steps], marker=".", label=name)
        curve.set(xlabel="trainer step", ylabel="mean error of fits written", title="improvements over training")
        curve.legend(fontsize="small")
    else:
        curve.text(0.5, 0.5, "no training steps recorded", ha="center", va="center")
        curve.set_axis_off()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
