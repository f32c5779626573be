"""The fidelity study from the shipped regressor (issue 21): every mode, several seeds, paired and unpaired.

Usage: python benchmarks/fidelity/seeds.py [--seeds 0,1,2] [--settings paired,better,unpaired] [--write-results]
       python benchmarks/fidelity/seeds.py --report-only [--write-results]   (tables from the cached runs)

Every run starts from the shipped weights (spin_ray/model/assets/pretrained_resnet18_96.pt.xz) and trains as the
main job does (configs/local.yaml: resnet18 @ 96 px, batch 32, lr 5e-5, SMPLify 50 + 50, the synthetic splits
synth-3d / synth-itw, synth-test held out) for STEPS steps in modes 2d, static, sync and async, each with seeds
0, 1, 2 (data order, augmentation, dropout). Settings: `paired` (synth-3d's SMPL and 3D truth supervise, as in
the paper's Table 1) and `unpaired` (data.ignore_3d: no image's 3D truth is used, all 3D supervision comes from
fits, the paper's Table 3). Equal wall-clock: per seed, `sync` trains again for as many steps as it does in the
training time of that seed's `async` run (part b), compared with that `async` run. Setting `better` (issue 20):
the paired setting with every fit by the better recipes (the static fits of the mean pose by `multistart`, the
loop's fits from the network's predictions by `staged`), `static`, `sync` and `async` for seeds 0 and 1, compared
with the paired runs, whose fits are all `spin`'s.

Each run's row is cached in benchmarks/fidelity/shipped/ (one JSON per setting, seed, part and mode, keyed by
its config), so the study goes on where it stopped, across sessions; a cached run is never trained again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as study_run  # noqa: E402  (benchmarks/fidelity/run.py: configs, stores, one run)

from results import RESULTS, machine_line, write_section  # noqa: E402

SECTION = "## Fidelity study from the shipped regressor, seeds and settings (benchmarks/fidelity/seeds.py)"
REPO = study_run.REPO
CACHE = HERE / "shipped"
SHIPPED = REPO / "spin_ray" / "model" / "assets" / "pretrained_resnet18_96.pt.xz"
MODES = ("2d", "static", "sync", "async")
SETTINGS = ("paired", "better", "unpaired")
# `better`: the paired setting with the better recipes' fits (issue 20): the modes that read fits.
SETTING_MODES = {"paired": MODES, "unpaired": MODES, "better": ("static", "sync", "async")}
BETTER_SEEDS = (0, 1)  # issue 20 asks for two seeds per arm
STATIC_RECIPE = {"better": "multistart"}  # the recipe of a setting's static fits of the mean pose (else spin)
LOOP_RECIPE = {"better": "staged"}  # the recipe of a setting's fits in the loop (else spin)
STEPS = 300
SIZE = study_run.StudySize({"synth-3d": 1000, "synth-itw": 1000, "synth-test": 200}, steps=STEPS, img_res=96,
                           batch_size=32, iterations=50, sample_every_s=15.0, shared_cache=True)
PLOT = "shipped_pa_mpjpe.png"
NOISE_SE = 2.0  # a difference holds beyond the noise when its mean over seeds exceeds this many standard errors


# -- runs -------------------------------------------------------------------------------------------

def run_config(study, setting: str, seed: int, part: str, label: str, steps: int, out: Path):
    """One run's config: the study's, from the shipped weights, in its own namespace, folder and actor name."""
    cfg = study_run.mode_config(study, part, label, steps, out, SHIPPED)
    slug = f"{setting}-s{seed}-{part}-{label}"
    return cfg.model_copy(update={
        "name": f"fidelity-{slug}", "seed": seed, "output_dir": out / "runs" / slug,
        "store": cfg.store.model_copy(update={"namespace": f"fidelity-{slug}"}),
        "data": cfg.data.model_copy(update={"ignore_3d": setting == "unpaired"}),
        "fitting": cfg.fitting.model_copy(update={"recipe": LOOP_RECIPE.get(setting, "spin")}),
    })


def run_key(cfg) -> str:
    """What makes a run the same run: its config without where it writes (values left at their defaults are
    left out, so a new config key with a default does not orphan the cached runs)."""
    settings = cfg.model_dump(mode="json", exclude={"output_dir", "store", "name", "cache_dir"}, exclude_defaults=True)
    settings.setdefault("synth", {})
    settings.setdefault("network", {})
    settings["synth"].pop("cache_dir", None)
    if settings["network"].get("init_checkpoint"):
        settings["network"]["init_checkpoint"] = Path(settings["network"]["init_checkpoint"]).name  # any checkout
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_path(cache: Path, setting: str, seed: int, part: str, label: str) -> Path:
    """Where one run's row is kept."""
    return cache / f"{setting}-seed{seed}-{part}-{label}.json"


def cached_row(cache: Path, cfg, setting: str, seed: int, part: str, label: str) -> dict | None:
    """The run's cached row if one exists for this very config."""
    path = cache_path(cache, setting, seed, part, label)
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("key") == run_key(cfg) else None


def train_cached(cache: Path, size, cfg, setting: str, seed: int, part: str, label: str, shared) -> dict:
    """The run's row: from the cache, or trained now (its row cached at once, with the machine and the load)."""
    if (row := cached_row(cache, cfg, setting, seed, part, label)) is not None:
        study_run.log(f"{setting} seed {seed} ({part}) {label}: cached")
        return row
    row = study_run.run_mode(cfg, part, label, size, shared)
    launched = json.loads((Path(cfg.output_dir) / "launch_summary.json").read_text())
    start = launched.get("start_evaluation") or {}
    row.update(key=run_key(cfg), setting=setting, seed=seed, machine=machine_line(),
               finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               start_pa_mpjpe=float(start.get("pa_mpjpe_mm", math.nan)),
               start_mpjpe=float(start.get("mpjpe_mm", math.nan)))
    cache.mkdir(parents=True, exist_ok=True)
    cache_path(cache, setting, seed, part, label).write_text(json.dumps(row, indent=1))
    return row


def study(seeds: list[int], settings: list[str], out: Path, cache: Path = CACHE, size=SIZE) -> None:
    """Train every missing run: per setting and seed, the four modes at equal steps, then sync at async's time."""
    import ray
    import torch

    from spin_ray.body.body_model import BodyModel
    from spin_ray.cli.launch import prepare_data
    from spin_ray.store.server import EmbeddedRedis

    torch.set_num_threads(1)
    with EmbeddedRedis(out / "redis") as server:
        base = study_run.study_config(size, out, server.url)
        base = base.model_copy(update={"train": base.train.model_copy(update={"report_images": 0})})
        prepare_data(base, progress=False)
        body_hash = BodyModel.from_config(base.body).identity
        truth = study_run.FitTruth(base)

        def shared_for(setting: str) -> study_run.Shared:
            """What a setting's runs start from: the static fits by its recipe (computed once, kept in OUT)."""
            recipe = STATIC_RECIPE.get(setting, "spin")
            static = base.model_copy(update={"fitting": base.fitting.model_copy(update={"recipe": recipe})})
            return study_run.Shared(body_hash, study_run.static_fits_file(static, body_hash, out), SHIPPED, truth)

        study_run.start_ray()
        try:
            for setting in settings:
                shared = shared_for(setting)
                for seed in seeds:
                    if setting == "better" and seed not in BETTER_SEEDS:
                        continue
                    rows = {label: train_cached(cache, size, run_config(base, setting, seed, "a", label,
                                                                        size.steps, out),
                                                setting, seed, "a", label, shared) for label in SETTING_MODES[setting]}
                    if setting == "better":
                        continue  # compared with the paired runs at equal steps only
                    steps = max(1, round(rows["async"]["train_s"] * rows["sync"]["steps_per_s"]))
                    train_cached(cache, size, run_config(base, setting, seed, "b", "sync", steps, out), setting,
                                 seed, "b", "sync", shared)
        finally:
            ray.shutdown()


# -- the report -------------------------------------------------------------------------------------

def cached_rows(cache: Path = CACHE) -> list[dict]:
    """Every cached run."""
    return [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]


def pick(rows: list[dict], setting: str, part: str, mode: str) -> dict[int, dict]:
    """The rows of one setting, part and mode, by seed."""
    return {r["seed"]: r for r in rows if (r["setting"], r["part"], r["mode"]) == (setting, part, mode)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN sd for one value)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def cell(values: list[float], digits: int = 1) -> str:
    """`mean ± sd (n)` over seeds."""
    mean, sd = mean_sd(values)
    if not math.isfinite(mean):
        return "–"
    spread = f" ± {sd:.{digits}f}" if math.isfinite(sd) else ""
    return f"{mean:.{digits}f}{spread}"


def compare(worse: dict[int, dict], better: dict[int, dict], key: str = "pa_mpjpe") -> tuple[bool | None, str]:
    """Is `worse` above `better` in key, paired by seed? (held, evidence); held None without common seeds.

    Held means beyond the noise: the mean per-seed difference exceeds NOISE_SE standard errors of the
    differences. A difference in the right direction but within the noise is not held (the evidence says so).
    """
    seeds = sorted(set(worse) & set(better))
    if not seeds:
        return None, "a run it compares is missing"
    diffs = [worse[s][key] - better[s][key] for s in seeds]
    mean, sd = mean_sd(diffs)
    se = sd / math.sqrt(len(diffs)) if math.isfinite(sd) else math.nan
    beyond = math.isfinite(se) and mean > NOISE_SE * se
    where = ("beyond the noise" if beyond else "one seed, no noise estimate" if len(seeds) == 1 else
             "same direction, within the noise" if mean > 0 else "opposite direction")
    per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
    return beyond, (f"difference {mean:+.2f} mm (per seed {per_seed}; standard error "
                    f"{se:.2f}) over {len(seeds)} seed{'s' * (len(seeds) > 1)}: {where}")


def within(candidate: dict[int, dict], reference: dict[int, dict], limit: float) -> tuple[bool | None, str]:
    """Is the candidate's mean PA-MPJPE within `limit` (a ratio, 0.03) of the reference's, and not beyond it by noise?"""
    seeds = sorted(set(candidate) & set(reference))
    if not seeds:
        return None, "a run it compares is missing"
    ratios = [candidate[s]["pa_mpjpe"] / reference[s]["pa_mpjpe"] - 1 for s in seeds]
    mean, sd = mean_sd(ratios)
    return mean <= limit, (f"{100 * mean:+.2f} % (sd {100 * sd:.2f} %; per seed "
                           f"{', '.join(f'{100 * r:+.1f}' for r in ratios)} %) over {len(seeds)} seed{'s' * (len(seeds) > 1)}")


def improves(runs: dict[int, dict]) -> tuple[bool | None, str]:
    """Do the stored fits get better during training in every seed (ranking error and PA-MPJPE from the truth)?"""
    if not runs:
        return None, "a run it compares is missing"
    falls = [r["error_end"] < r["error_start"] and r["fit_pa_end"] < r["fit_pa_start"] for r in runs.values()]
    return all(falls), (f"store error {cell([r['error_start'] for r in runs.values()])} → "
                        f"{cell([r['error_end'] for r in runs.values()])}, fits' PA-MPJPE from truth "
                        f"{cell([r['fit_pa_start'] for r in runs.values()])} → "
                        f"{cell([r['fit_pa_end'] for r in runs.values()])} mm, in {sum(falls)} of {len(falls)} seeds")


def recipe_claims(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """Issue 20's question: do the better recipes' fits train a better network (and hold better fits) than spin's?"""
    out = []
    for mode in SETTING_MODES["better"]:
        spin, better = pick(rows, "paired", "a", mode), pick(rows, "better", "a", mode)
        out.append((f"`{mode}` with the better recipes' fits beats `{mode}` with spin's (held-out PA-MPJPE)",
                    *compare(spin, better)))
        out.append((f"`{mode}`: the store's fits end closer to the withheld truth with the better recipes "
                    "(fits' PA-MPJPE)", *compare(spin, better, "fit_pa_end")))
    out.append(("`2d` worse than `static` when the static fits are multistart's",
                *compare(pick(rows, "paired", "a", "2d"), pick(rows, "better", "a", "static"))))
    return out


def claims(rows: list[dict], setting: str) -> list[tuple[str, bool | None, str]]:
    """The paper's claims in one setting: (claim, held, evidence)."""
    if setting == "better":
        return recipe_claims(rows)
    a = {mode: pick(rows, setting, "a", mode) for mode in MODES}
    sync_b = pick(rows, setting, "b", "sync")
    return [
        ("`2d` worse than `static` (equal steps)", *compare(a["2d"], a["static"])),
        ("`static` worse than `sync` (equal steps)", *compare(a["static"], a["sync"])),
        ("`static` worse than `async` (equal steps)", *compare(a["static"], a["async"])),
        ("`async` within 3 % of `sync` at equal steps", *within(a["async"], a["sync"], 0.03)),
        ("`async` better than `sync` at equal wall-clock (sync for async's training time)",
         *compare(sync_b, a["async"])),
        ("the fits improve during `sync` training", *improves(a["sync"])),
        ("the fits improve during `async` training", *improves(a["async"])),
    ]


TABLE_HEAD = ("| mode | seeds | steps | steps/s | MPJPE mm | PA-MPJPE mm | PA-MPJPE change from the start, mm "
              "| store fit error (synth-itw) end | valid fits end | fits' PA-MPJPE from truth, mm, end |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def table(rows: list[dict], setting: str) -> str:
    """One setting's table: mean ± sd over seeds per mode, the mean pose and the shipped start first."""
    lines = [TABLE_HEAD]
    mine = [r for r in rows if r["setting"] == setting]
    if not mine:
        return "Not run yet."
    lines.append(f"| mean pose | – | 0 | – | {cell([r['baseline_mpjpe'] for r in mine[:1]])} "
                 f"| {cell([r['baseline_pa_mpjpe'] for r in mine[:1]])} | – | – | – | – |")
    lines.append(f"| shipped start | – | 0 | – | {cell([r['start_mpjpe'] for r in mine[:1]])} "
                 f"| {cell([r['start_pa_mpjpe'] for r in mine[:1]])} | – | – | – | – |")
    for part, mode in [("a", m) for m in MODES] + [("b", "sync")]:
        runs = list(pick(rows, setting, part, mode).values())
        if not runs:
            continue
        label = mode if part == "a" else "sync, async's training time (b)"
        lines.append(
            f"| {label} | {len(runs)} | {cell([r['steps'] for r in runs], 0)} "
            f"| {cell([r['steps_per_s'] for r in runs], 3)} | {cell([r['mpjpe'] for r in runs])} "
            f"| {cell([r['pa_mpjpe'] for r in runs])} | {cell([r['pa_mpjpe'] - r['start_pa_mpjpe'] for r in runs])} "
            f"| {cell([r['error_end'] for r in runs])} | {cell([r['valid_end'] for r in runs], 3)} "
            f"| {cell([r['fit_pa_end'] for r in runs])} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Held-out PA-MPJPE per mode and setting: mean over seeds with each seed's point, the start as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    labels = [*MODES, "sync (b)"]
    for offset, setting, colour in ((-0.27, "paired", "tab:blue"), (0.0, "better", "tab:green"),
                                    (0.27, "unpaired", "tab:orange")):
        labelled = False
        for i, (part, mode) in enumerate([("a", m) for m in MODES] + [("b", "sync")]):
            values = [r["pa_mpjpe"] for r in pick(rows, setting, part, mode).values()]
            if values:
                mean, sd = mean_sd(values)
                ax.bar(i + offset, mean, width=0.27, color=colour, alpha=0.6, label=None if labelled else setting)
                labelled = True
                ax.scatter([i + offset] * len(values), values, color="black", s=8, zorder=3)
    starts = [r["start_pa_mpjpe"] for r in rows if math.isfinite(r.get("start_pa_mpjpe", math.nan))]
    values = [r["pa_mpjpe"] for r in rows]
    if starts:
        ax.axhline(starts[0], color="black", linestyle=":", label="shipped start")
        values.append(starts[0])
    if values:
        ax.set_ylim(math.floor(min(values)) - 3, math.ceil(max(values)) + 2)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("held-out PA-MPJPE (mm)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def section(rows: list[dict], seeds: list[int]) -> str:
    """The RESULTS.md section: setup, one table and the claims per setting."""
    expected = sum(len(SETTING_MODES[s]) + (s != "better") for s in SETTINGS for seed in seeds
                   if s != "better" or seed in BETTER_SEEDS)
    machines = sorted({r["machine"] for r in rows})
    loads = [x for r in rows for x in r.get("load", [])]
    lines = [
        f"Runs: {len(rows)} of {expected} (paired and unpaired: seeds {', '.join(map(str, seeds))} x "
        f"{len(MODES)} modes + sync at async's time; better: seeds {', '.join(map(str, BETTER_SEEDS))} x static, sync, "
        "async). "
        "Cached per run in benchmarks/fidelity/shipped/; "
        "command: `python benchmarks/fidelity/seeds.py --write-results` (continues where it stopped).",
        *machines[:1],
        (f"1-minute load average at the start and end of the runs: {min(loads):.1f}-{max(loads):.1f}."
         if loads else ""),
        f"Every run: the shipped weights, then {STEPS} steps as the main job trains (configs/local.yaml: "
        f"resnet18 @ {SIZE.img_res} px, batch {SIZE.batch_size}, lr 5e-5, SMPLify {SIZE.iterations} + "
        f"{SIZE.iterations}, synth-3d {SIZE.synth['synth-3d']} + synth-itw {SIZE.synth['synth-itw']}, "
        f"held out synth-test {SIZE.synth['synth-test']}); store modes start from static fits of the mean pose; "
        "async has one fitter actor. Seeds change the data order, augmentation and dropout; the start is the "
        "same. Cells are mean ± sd over seeds. A claim holds beyond the noise when the mean of its per-seed "
        f"differences (runs paired by seed) exceeds {NOISE_SE:g} standard errors of those differences.",
    ]
    for setting in SETTINGS:
        what = {"paired": "synth-3d's SMPL and 3D truth supervise",
                "unpaired": "data.ignore_3d: no 3D truth in training, every 3D target is a fit",
                "better": "issue 20: paired, every fit by the better recipes: the static fits of the mean pose by "
                          "multistart, the loop's by staged"}[setting]
        lines += ["", f"### {setting.capitalize()} ({what})", "", table(rows, setting), ""]
        verdicts = {True: "held", False: "**did not hold**", None: "not measured yet"}
        lines += [f"- {verdicts[held]}: {claim}: {evidence}." for claim, held, evidence in claims(rows, setting)]
    lines += ["", f"![held-out PA-MPJPE per mode, setting and seed](fidelity/{PLOT})"]
    analysis = HERE / "SEEDS_ANALYSIS.md"
    if analysis.is_file():
        lines += ["", "### Analysis", "", analysis.read_text().strip()]
    return "\n".join(line for line in lines if line is not None)


def main(argv: list[str] | None = None) -> int:
    """Train the missing runs (unless --report-only), then print (and with --write-results record) the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="any of paired, better, unpaired, run in the order given")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "fidelity-shipped", help="run folders")
    parser.add_argument("--report-only", action="store_true", help="tables from the cached runs, no training")
    parser.add_argument("--probe", action="store_true",
                        help="a few steps on tiny splits, cached under OUT/probe-cache (checks the study runs; minutes)")
    parser.add_argument("--write-results", action="store_true",
                        help="write the section of benchmarks/RESULTS.md and the plot in benchmarks/fidelity/")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    settings = [s for s in args.settings.split(",") if s]
    if unknown := set(settings) - set(SETTINGS):
        parser.error(f"--settings: unknown {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache, size = CACHE, SIZE
    if args.probe:
        cache = args.out.resolve() / "probe-cache"
        size = replace(SIZE, synth={"synth-3d": 64, "synth-itw": 64, "synth-test": 32}, steps=4, iterations=10,
                       sample_every_s=1.0, shared_cache=False)
    if not args.report_only:
        study(seeds, settings, args.out.resolve(), cache, size)
    rows = cached_rows(cache)
    plot(rows, args.out / PLOT)
    text = section(rows, seeds)
    if args.write_results and not args.probe:
        shutil.copyfile(args.out / PLOT, HERE / PLOT)
        write_section(SECTION, text, RESULTS)
    print(f"{SECTION}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
