"""The fidelity study (issue 9): SPIN's ablation on the synthetic benchmark, every mode from one seed.

Usage: python benchmarks/fidelity/run.py --size smoke|full [--out DIR] [--write-results]
       python benchmarks/fidelity/run.py --size full --seed 1 --modes static,sync --no-budget --out DIR   (a repeat)
       python benchmarks/fidelity/run.py --size full --report-only [--write-results]   (re-render OUT/results.json)

One config derived from configs/local.yaml (resnet18, batch 32, the synthetic splits synth-3d with
3D truth, synth-itw with 2D keypoints only, synth-test held out). Modes `2d`, `static`, `sync`,
`async` and `async+lookahead` train from the same seed, each in its own store namespace and output
folder, on one local Ray and one embedded Redis:
(a) the same number of steps;
(b) the same wall-clock budget, the training time of `static` in (a): each mode gets
    steps = budget x its steps/s measured in (a) (no wall-clock stop); a mode whose step count is
    within 5 % of its count in (a) reuses its (a) run instead of training again.
Every mode starts from the same network: a warm start trained on synth-3d alone (ground-truth SMPL and
3D joints, no fits; SPIN fine-tunes a pretrained HMR) for `warm_steps`, passed to each mode as
network.init_checkpoint (size smoke skips it: random init). Every store-backed mode starts from the
same static fits of the mean pose (computed once by the code of `spin-ray fit`, copied into each
namespace). While a run trains, a driver thread samples the
store's mean ranking error, share of valid fits and the fits' PA-MPJPE against synth-itw's withheld
truth (where fits supervise: synth-3d has ground-truth SMPL) with the trainer's step: the paper's
Figure 4 curves, and whether better fits are better in 3D.
The recorded runs' results are kept as benchmarks/fidelity/results-full*.json (copy one to
OUT/results.json to re-render it). Writes OUT/results.json, OUT/section.md and OUT/*.png; --write-results also writes the section of
benchmarks/RESULTS.md and copies the PNGs to benchmarks/fidelity/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from results import RESULTS, machine_line, write_section  # noqa: E402

from spin_ray.config import RunConfig, config_from_dict, load_config  # noqa: E402

SECTION = "## Fidelity study (benchmarks/fidelity/run.py)"
BASE_CONFIG = REPO / "configs" / "local.yaml"
ITW = "synth-itw"  # the 2D-only split: the only one whose fits supervise (synth-3d has ground truth)
LOOKAHEAD_STEPS = 2
MODES: dict[str, tuple[str, int]] = {  # label: (train.mode, pipeline.lookahead_steps)
    "2d": ("2d", 0), "static": ("static", 0), "sync": ("sync", 0), "async": ("async", 0),
    "async+lookahead": ("async", LOOKAHEAD_STEPS),
}
IN_LOOP = ("sync", "async", "async+lookahead")
REUSE_TOLERANCE = 0.05
RUN_ATTEMPTS = 3  # (b) reuses the (a) run when its step count is this close
PLOTS = ("pa_mpjpe.png", "store_fits.png")


@dataclass(frozen=True)
class StudySize:
    """Everything that differs between the smoke and the full study."""

    synth: dict[str, int]  # samples per synthetic split
    steps: int  # steps per mode in (a)
    img_res: int
    batch_size: int
    iterations: int  # SMPLify Adam iterations per stage
    sample_every_s: float  # store sampling period during training
    shared_cache: bool  # synthetic data in the repo's .cache (reused across runs) rather than under OUT
    warm_steps: int = 0  # steps of the shared warm start on synth-3d (0: every mode starts from random weights)
    warm_lr: float = 3e-4


SIZES: dict[str, StudySize] = {
    "smoke": StudySize({"synth-3d": 64, "synth-itw": 64, "synth-test": 32}, steps=6, img_res=64, batch_size=32,
                       iterations=20, sample_every_s=1.0, shared_cache=False, warm_steps=4),
    "full": StudySize({"synth-3d": 500, "synth-itw": 500, "synth-test": 200}, steps=1000, img_res=64,
                      batch_size=32, iterations=50, sample_every_s=10.0, shared_cache=True, warm_steps=1000),
}


def log(text: str) -> None:
    """One progress line."""
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- configs ----------------------------------------------------------------------------------------

def study_config(size: StudySize, out: Path, url: str) -> RunConfig:
    """configs/local.yaml at the study's size, on the study's Redis; the static-fit namespace."""
    data = load_config(BASE_CONFIG).model_dump(mode="json")
    data["name"] = "fidelity"
    data["output_dir"] = str(out / "static-fits")
    data["cache_dir"] = str(REPO / ".cache") if size.shared_cache else str(out / "cache")
    data["store"].update(url=url, namespace="fidelity-static-fits")
    data["synth"]["sizes"] = dict(size.synth)
    data["data"]["img_res"] = size.img_res
    # The study's own warm start (mode_config), not local.yaml's shipped weights (trained at 96 px).
    data["network"]["init_checkpoint"] = None
    data["fitting"].update(iterations_camera=size.iterations, iterations_body=size.iterations)
    data["train"].update(steps=size.steps, batch_size=size.batch_size, report_images=0,
                         init_store_from_static_fits=True)
    return config_from_dict(data, "the fidelity study's config")


def mode_config(study: RunConfig, part: str, label: str, steps: int, out: Path, warm: Path | None) -> RunConfig:
    """The study config in one mode, from the warm start: its own namespace, output folder and trainer actor name."""
    mode, lookahead = MODES[label]
    slug = f"{part}-{label.replace('+', '-')}"
    return study.model_copy(update={
        "name": f"fidelity-{slug}",
        "output_dir": out / "runs" / slug,
        "store": study.store.model_copy(update={"namespace": f"fidelity-{slug}"}),
        "network": study.network.model_copy(update={"init_checkpoint": warm}),
        "train": study.train.model_copy(update={"mode": mode, "steps": steps}),
        "pipeline": study.pipeline.model_copy(update={"lookahead_steps": lookahead}),
    })


def warm_start(study: RunConfig, size: StudySize, out: Path) -> tuple[Path | None, dict]:
    """The shared starting network: `2d` mode on synth-3d alone (ground truth, no fits) for size.warm_steps
    at size.warm_lr, trained once per settings and reused; its checkpoint and held-out numbers."""
    from spin_ray.config import DatasetEntry
    from spin_ray.data.synth import ensure_synthetic_data
    from spin_ray.cli.launch import launch

    if size.warm_steps == 0:
        return None, {}
    key = hashlib.sha256(json.dumps([study.model_dump(mode="json", exclude={"output_dir", "store", "name"}),
                                     size.warm_steps, size.warm_lr]).encode()).hexdigest()[:8]
    folder = out / f"warm-start-{key}"
    checkpoint, record = folder / "checkpoints" / "last.pt", folder / "warm_start.json"
    if checkpoint.is_file() and record.is_file():
        log(f"warm start: reusing {checkpoint}")
        return checkpoint, json.loads(record.read_text())
    paths = ensure_synthetic_data(study, progress=False)
    three_d = DatasetEntry(name="synth-3d", npz=paths["synth-3d"], image_root=paths["synth-3d"].parent)
    cfg = study.model_copy(update={
        "name": "fidelity-warm-start", "output_dir": folder,
        "data": study.data.model_copy(update={"datasets": [three_d]}),
        "train": study.train.model_copy(update={
            "mode": "2d", "steps": size.warm_steps, "lr": size.warm_lr, "init_store_from_static_fits": False,
            "checkpoint_every": size.warm_steps, "heldout": DatasetEntry(
                name="synth-test", npz=paths["synth-test"], image_root=paths["synth-test"].parent)}),
    })
    log(f"warm start: {size.warm_steps} steps of `2d` on synth-3d alone at lr {size.warm_lr:g}, output {folder}")
    summary = launch(cfg, progress=False)
    evaluation = summary.get("evaluation") or {}
    facts = {"steps": size.warm_steps, "lr": size.warm_lr, "train_s": float(summary["train_seconds"]),
             "mpjpe": float(evaluation.get("mpjpe_mm", math.nan)),
             "pa_mpjpe": float(evaluation.get("pa_mpjpe_mm", math.nan))}
    if not checkpoint.is_file():
        raise RuntimeError(f"the warm start wrote no checkpoint at {checkpoint}")
    record.write_text(json.dumps(facts))
    log(f"warm start: PA-MPJPE {facts['pa_mpjpe']:.1f} mm, MPJPE {facts['mpjpe']:.1f} mm "
        f"in {facts['train_s']:.0f} s")
    return checkpoint, facts


# -- the fit store ----------------------------------------------------------------------------------

def empty_store(cfg: RunConfig, body_hash: str):
    """The config's namespace, emptied (left from an earlier run of the study into the same OUT)."""
    from spin_ray.store.fit_store import FitStore

    with FitStore.from_config(cfg.store, body_hash) as store:
        store.drop()
    return FitStore.from_config(cfg.store, body_hash)  # reopened: a dropped namespace refuses its old writers


def static_fits_file(study: RunConfig, body_hash: str, out: Path) -> Path:
    """Static fits of the mean pose for the training splits (run_training's initialiser), exported once
    (kept in OUT under the data's settings hash and the SMPLify settings, and reused by a rerun)."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.data.synth import settings_hash
    from spin_ray.train.run import static_fits_init, training_data

    fitting = hashlib.sha256(study.fitting.model_dump_json().encode()).hexdigest()[:8]
    path = out / f"static_fits-{settings_hash(study, body_hash)}-{fitting}.parquet"
    if path.is_file():
        return path
    train_set, _ = training_data(study)
    with empty_store(study, body_hash) as store:
        static_fits_init(study)(store, BodyModel.from_config(study.body), train_set.datasets)
        return store.export_parquet(path)


def seed_store(cfg: RunConfig, body_hash: str, fits: Path) -> None:
    """A fresh namespace holding the study's static fits."""
    with empty_store(cfg, body_hash) as store:
        store.import_parquet(fits)


class FitTruth:
    """Scores synth-itw's stored fits against the split's withheld truth: PA-MPJPE (mm) on the LSP-14 joints
    the held-out evaluation uses, over every stored fit."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch

        from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
        from spin_ray.data.synth import ensure_synthetic_data, load_hidden_truth
        from spin_ray.eval.ground_truth import EvalBodies

        self.body = BodyModel.from_config(cfg.body)
        self.use_h36m = EvalBodies(self.body).use_h36m
        truth = load_hidden_truth(ensure_synthetic_data(cfg, progress=False)[ITW])
        with torch.no_grad():
            pose = torch.as_tensor(truth["pose"], dtype=torch.float32)
            betas = torch.as_tensor(truth["shape"], dtype=torch.float32)[:, :self.body.num_betas]
            self.joints = self.lsp14(axis_angle_pose_to_rotmats(pose), betas)

    def lsp14(self, rotmat, betas):
        """The 14 LSP joints the held-out evaluation scores (J14: the first 14 of SPIN's J17)."""
        from spin_ray.eval.joint_sets import NUM_J14, eval_joints

        return eval_joints(self.body, rotmat, betas, self.use_h36m)[0][:, :NUM_J14]

    def pa_mpjpe(self, fits) -> float:
        """Mean PA-MPJPE of the stored fits (a StoredFits of synth-itw) against the truth; NaN if none."""
        import torch

        from spin_ray.body.body_model import axis_angle_pose_to_rotmats
        from spin_ray.eval.metrics import pa_mpjpe

        found = fits.indices[fits.found]
        if found.size == 0:
            return math.nan
        with torch.no_grad():
            pose = torch.as_tensor(fits.pose[fits.found], dtype=torch.float32)
            betas = torch.as_tensor(fits.betas[fits.found], dtype=torch.float32)[:, :self.body.num_betas]
            joints = self.lsp14(axis_angle_pose_to_rotmats(pose), betas)
            return float(pa_mpjpe(joints, self.joints[torch.as_tensor(found)]).mean())


def store_snapshot(store, samples: int, threshold: float, truth: FitTruth) -> tuple[float, float, float]:
    """synth-itw's stored fits: mean ranking error, share of samples with a valid fit, PA-MPJPE against truth."""
    fits = store.read_all(ITW)
    errors = fits.error[fits.found]
    if errors.size == 0:
        return math.nan, 0.0, math.nan
    return float(errors.mean()), float((errors < threshold).sum()) / samples, truth.pa_mpjpe(fits)


class StoreSampler(threading.Thread):
    """Samples (trainer step, store mean error, valid share, fit PA-MPJPE) every `every_s` while a run trains."""

    def __init__(self, cfg: RunConfig, samples: int, every_s: float, label: str, truth: FitTruth) -> None:
        super().__init__(daemon=True)
        self.cfg, self.samples, self.every_s, self.label, self.truth = cfg, samples, every_s, label, truth
        self.points: list[tuple[int, float, float, float]] = []
        self._done = threading.Event()
        self._print_every = max(1, round(60.0 / every_s))

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._done.set()
        self.join(timeout=30)

    def _trainer_steps(self) -> int | None:
        """Steps the run's trainer actor has done, or None if it is not (or no longer) there."""
        import ray

        from spin_ray.pipeline.trainer_actor import trainer_actor_name

        try:
            actor = ray.get_actor(trainer_actor_name(self.cfg.name), namespace=self.cfg.pipeline.ray_namespace)
            return int(ray.get(actor.status.remote(), timeout=10)["steps_done"])
        except Exception:  # not started yet, or finished: nothing to sample
            return None

    def run(self) -> None:
        from spin_ray.store.fit_store import FitStore

        with FitStore.from_config(self.cfg.store, None) as store:
            while not self._done.wait(self.every_s):
                steps = self._trainer_steps()
                if steps is None:
                    continue
                error, valid, truth = store_snapshot(store, self.samples, self.cfg.fitting.valid_error_threshold,
                                                     self.truth)
                self.points.append((steps, error, valid, truth))
                if len(self.points) % self._print_every == 0:
                    log(f"  {self.label}: step {steps}/{self.cfg.train.steps}, store error {error:.1f}, "
                        f"valid {valid:.2f}, fits {truth:.1f} mm PA-MPJPE from truth")


# -- runs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shared:
    """What every mode's run starts from."""

    body_hash: str
    fits: Path  # the static fits of the mean pose (Parquet)
    warm: Path | None  # the warm-start checkpoint (None: random init)
    truth: FitTruth

def start_ray() -> None:
    """The study's local Ray: this machine's cores, a small object store."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)


def run_mode(cfg: RunConfig, part: str, label: str, size: StudySize, shared: Shared) -> dict:
    """Train one mode; a run whose Ray processes die under it (other jobs on a shared machine run `ray stop`)
    is run again from the start on a fresh local Ray, up to RUN_ATTEMPTS times."""
    import ray

    from spin_ray.errors import PipelineError

    for attempt in range(1, RUN_ATTEMPTS + 1):
        try:
            return train_mode(cfg, part, label, size, shared)
        except (PipelineError, ray.exceptions.RayError) as err:
            if attempt == RUN_ATTEMPTS:
                raise
            log(f"({part}) {label}: attempt {attempt} failed ({str(err).strip().splitlines()[-1][:200]}); "
                "restarting Ray and the run")
            ray.shutdown()
            start_ray()
    raise AssertionError("unreachable")


def train_mode(cfg: RunConfig, part: str, label: str, size: StudySize, shared: Shared) -> dict:
    """Train one mode to its steps (store seeded with the static fits); its row of the study."""
    from spin_ray.cli.launch import launch
    from spin_ray.store.fit_store import FitStore

    uses_store = cfg.train.mode != "2d"
    samples, threshold = size.synth[ITW], cfg.fitting.valid_error_threshold
    start = end = (math.nan, math.nan, math.nan)
    sampler = None
    if uses_store:
        seed_store(cfg, shared.body_hash, shared.fits)
        with FitStore.from_config(cfg.store, None) as store:
            start = store_snapshot(store, samples, threshold, shared.truth)
        sampler = StoreSampler(cfg, samples, size.sample_every_s, f"({part}) {label}", shared.truth)
        sampler.start()
    log(f"({part}) {label}: {cfg.train.steps} steps, namespace {cfg.store.namespace}, output {cfg.output_dir}")
    load = os.getloadavg()[0]
    try:
        summary = launch(cfg, progress=False)
    finally:
        if sampler is not None:
            sampler.stop()
    if uses_store:
        with FitStore.from_config(cfg.store, None) as store:
            end = store_snapshot(store, samples, threshold, shared.truth)
    row = summary_row(summary, part, label, start, end, sampler.points if sampler else [])
    row["load"] = [load, os.getloadavg()[0]]
    log(f"({part}) {label}: {row['steps']} steps in {row['train_s']:.0f} s ({row['steps_per_s']:.3f}/s), "
        f"PA-MPJPE {row['pa_mpjpe']:.1f} mm, MPJPE {row['mpjpe']:.1f} mm, store error "
        f"{row['error_start']:.1f} -> {row['error_end']:.1f}, valid {row['valid_start']:.2f} -> {row['valid_end']:.2f}, "
        f"fits {row['fit_pa_start']:.1f} -> {row['fit_pa_end']:.1f} mm PA-MPJPE from truth")
    return row


def summary_row(summary: dict, part: str, label: str, start: tuple[float, float, float],
                end: tuple[float, float, float], points: list[tuple[int, float, float, float]]) -> dict:
    """The numbers of one run that the study reports."""
    evaluation, baseline = summary.get("evaluation") or {}, summary.get("baseline") or {}
    pipeline = summary.get("pipeline") or {}
    train_s = float(summary["train_seconds"])
    return {
        "part": part, "mode": label, "steps": int(summary["steps"]), "train_s": train_s,
        "steps_per_s": summary["steps_run"] / train_s if train_s > 0 else math.nan,
        "wall_s": float(summary.get("wall_s", math.nan)),
        "mpjpe": float(evaluation.get("mpjpe_mm", math.nan)), "pa_mpjpe": float(evaluation.get("pa_mpjpe_mm", math.nan)),
        "baseline_mpjpe": float(baseline.get("mpjpe_mm", math.nan)),
        "baseline_pa_mpjpe": float(baseline.get("pa_mpjpe_mm", math.nan)),
        "error_start": start[0], "error_end": end[0], "valid_start": start[1], "valid_end": end[1],
        "fit_pa_start": start[2], "fit_pa_end": end[2],
        "loop_writes": int(summary.get("store", {}).get(ITW, {}).get("loop_writes", 0)),
        "loop_fits_used": float((pipeline.get("reads") or {}).get("loop_fits_used", math.nan)),
        "dropped": int((pipeline.get("pool") or {}).get("dropped", 0)),
        "final_loss": float(summary.get("final_loss", math.nan)),
        "curve": [[0, *start], *map(list, points), [int(summary["steps"]), *end]],
        "reused": False,
    }


def equal_steps(study: RunConfig, size: StudySize, out: Path, shared: Shared, rows: list[dict],
                done: Callable[[], None], modes: tuple[str, ...] = tuple(MODES)) -> None:
    """Part (a) into rows: each of modes for size.steps steps; done() after each run."""
    for label in modes:
        cfg = mode_config(study, "a", label, size.steps, out, shared.warm)
        rows.append(run_mode(cfg, "a", label, size, shared))
        done()


def budget_plan(rows_a: list[dict]) -> tuple[float, dict[str, int]]:
    """Part (b)'s budget (static's training seconds in (a)) and each mode's steps = budget x its steps/s."""
    by_mode = {r["mode"]: r for r in rows_a}
    budget = by_mode["static"]["train_s"]
    return budget, {label: max(1, round(budget * r["steps_per_s"])) for label, r in by_mode.items()}


def equal_time(study: RunConfig, size: StudySize, out: Path, shared: Shared,
               rows_a: list[dict], rows: list[dict], done: Callable[[], None]) -> float:
    """Part (b) into rows: every mode for the steps it does in static's training time; close counts reuse (a)."""
    budget, plan = budget_plan(rows_a)
    log(f"(b) budget {budget:.0f} s of training per mode: steps {plan}")
    for row_a in rows_a:
        label, steps = row_a["mode"], plan[row_a["mode"]]
        if abs(steps - row_a["steps"]) <= REUSE_TOLERANCE * row_a["steps"]:
            log(f"(b) {label}: {steps} steps is within {REUSE_TOLERANCE:.0%} of (a)'s {row_a['steps']}: reusing (a)")
            rows.append({**row_a, "part": "b", "reused": True})
        else:
            rows.append(run_mode(mode_config(study, "b", label, steps, out, shared.warm), "b", label, size, shared))
        done()
    return budget


# -- the report -------------------------------------------------------------------------------------

def num(value: float, digits: int = 1) -> str:
    """A table cell: the number, or a dash where there is none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def arrow(start: float, end: float, digits: int) -> str:
    """`start -> end` cell."""
    return "–" if not math.isfinite(start) else f"{num(start, digits)} → {num(end, digits)}"


TABLE_HEAD = ("| mode | steps | steps/s | training s | MPJPE mm | PA-MPJPE mm | store fit error (synth-itw) start → end "
              "| valid fits start → end | fits' PA-MPJPE from truth, mm, start → end | loop improvements "
              "| loop fits read (async) | run |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
MEAN_POSE_ROW = "mean pose (untrained baseline)"
WARM_ROW = "warm start (every mode's start)"


def table(rows: list[dict], warm: dict | None = None) -> str:
    """The Markdown table of one part, with the mean-pose baseline and the warm start first."""
    if not rows:
        return "Not run."
    base = rows[0]
    lines = [TABLE_HEAD, f"| {MEAN_POSE_ROW} | 0 | – | – | {num(base['baseline_mpjpe'])} "
                         f"| {num(base['baseline_pa_mpjpe'])} | – | – | – | – | – | – |"]
    if warm:
        lines.append(f"| {WARM_ROW} | {warm['steps']} on synth-3d | – | {num(warm['train_s'], 0)} "
                     f"| {num(warm['mpjpe'])} | {num(warm['pa_mpjpe'])} | – | – | – | – | – | shared |")
    for r in rows:
        where = "reused from (a)" if r["reused"] else f"own run ({r['part']})"
        lines.append(
            f"| {r['mode']} | {r['steps']} | {num(r['steps_per_s'], 3)} | {num(r['train_s'], 0)} | {num(r['mpjpe'])} "
            f"| {num(r['pa_mpjpe'])} | {arrow(r['error_start'], r['error_end'], 1)} "
            f"| {arrow(r['valid_start'], r['valid_end'], 3)} "
            f"| {arrow(r.get('fit_pa_start', math.nan), r.get('fit_pa_end', math.nan), 1)} "
            f"| {r['loop_writes'] if r['mode'] in IN_LOOP else '–'} "
            f"| {num(r['loop_fits_used'], 0)} | {where} |")
    return "\n".join(lines)


def claims(rows_a: list[dict], rows_b: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The paper's claims on our numbers: (claim, held, evidence); held None where a run is missing."""
    a = {r["mode"]: r for r in rows_a}
    b = {r["mode"]: r for r in rows_b}
    out = []
    for claim, part, modes, check in claim_checks():
        rows = a if part == "a" else b
        if all(m in rows for m in modes):
            held, evidence = check(*(rows[m] for m in modes))
            out.append((claim, held, evidence))
        else:
            out.append((claim, None, "a run it compares is missing (not run, or not finished)"))
    return out


def _worse(worse: dict, better: dict) -> tuple[bool, str]:
    return (worse["pa_mpjpe"] > better["pa_mpjpe"],
            f"{worse['mode']} {num(worse['pa_mpjpe'])} mm vs {better['mode']} {num(better['pa_mpjpe'])} mm")


def _within_3_percent(candidate: dict, sync: dict) -> tuple[bool, str]:
    ratio = candidate["pa_mpjpe"] / sync["pa_mpjpe"]
    return ratio <= 1.03, (f"{candidate['mode']} {num(candidate['pa_mpjpe'])} mm vs sync {num(sync['pa_mpjpe'])} mm "
                           f"({100 * (ratio - 1):+.1f} %)")


def _better_in_budget(candidate: dict, sync: dict) -> tuple[bool, str]:
    return candidate["pa_mpjpe"] < sync["pa_mpjpe"], (
        f"{candidate['mode']} {num(candidate['pa_mpjpe'])} mm in {candidate['steps']} steps vs sync "
        f"{num(sync['pa_mpjpe'])} mm in {sync['steps']} steps")


def _store_improves(r: dict) -> tuple[bool, str]:
    return r["error_end"] < r["error_start"], (
        f"{num(r['error_start'])} → {num(r['error_end'])} (valid {num(r['valid_start'], 3)} → "
        f"{num(r['valid_end'], 3)}, {r['loop_writes']} loop improvements on synth-itw)")


def claim_checks() -> list[tuple[str, str, tuple[str, ...], Callable[..., tuple[bool, str]]]]:
    """(claim, part, modes it compares, check) for each of the issue's claims."""
    checks = [
        ("`2d` worse than `static` (PA-MPJPE, equal steps)", "a", ("2d", "static"), _worse),
        ("`static` worse than `sync` (PA-MPJPE, equal steps)", "a", ("static", "sync"), _worse),
    ]
    for mode in ("async", "async+lookahead"):
        checks.append((f"`{mode}` within 3 % of `sync` at equal steps", "a", (mode, "sync"), _within_3_percent))
        checks.append((f"`{mode}` better than `sync` at equal wall-clock", "b", (mode, "sync"), _better_in_budget))
    for mode in IN_LOOP:
        checks.append((f"the store's mean fit error falls during `{mode}` training", "a", (mode,), _store_improves))
    return checks


def section(results: dict, with_plots: bool) -> str:
    """The RESULTS.md section body: setup, both tables, the claims, the plots and the analysis."""
    size, rows_a, rows_b = results["size"], results["rows_a"], results["rows_b"]
    s, warm = results["study"], results.get("warm_start") or {}
    start = (f"Every mode starts from one warm start: {warm['steps']} steps of `2d` on synth-3d alone (ground "
             f"truth, no fits) at lr {warm['lr']:g} from random weights, as SPIN fine-tunes a pretrained HMR "
             "(network.init_checkpoint)." if warm else "Every mode starts from random weights.")
    lines = [
        results["machine"], f"Command: `{results['command']}` ({results['wall_s'] / 60:.0f} min in all).",
        f"Size `{size}`: configs/local.yaml with {s['backbone']} @ {s['img_res']} px, batch "
        f"{s['batch_size']}, lr {s['lr']:g}, seed {s['seed']} for every mode; synthetic splits "
        f"{s['synth']} (synth-3d has 3D and SMPL truth, synth-itw 2D keypoints only, synth-test held out); "
        f"SMPLify {s['iterations']} + {s['iterations']} iterations; async: one fitter actor on the other core, "
        f"lookahead {LOOKAHEAD_STEPS} steps. {start} Every store-backed mode starts from the same static fits of the mean "
        "pose. Store columns are over synth-itw, the split whose fits supervise (synth-3d uses its ground truth); "
        f"valid = ranking error below {s['threshold']:g}; fits' PA-MPJPE is against synth-itw's withheld truth "
        "(LSP-14 joints, never shown to training). steps/s over the training loop only; the 1-minute load "
        "average before and after each run is in results.json.",
        *([] if results.get("complete", True) else
          ["", "**Incomplete: the study was stopped before every run finished; missing runs are left out.**"]),
        "", f"### (a) Equal steps ({s['steps']} per mode)", "", table(rows_a, warm), "",
        "### (b) Equal wall-clock: " + (f"{results['budget_s']:.0f} s of training per mode"
                                         if math.isfinite(results["budget_s"]) else "not run"), "",
        "The budget is the training time of `static` in (a); each mode trains for budget x its steps/s from (a) "
        f"(no wall-clock stop); a mode within {REUSE_TOLERANCE:.0%} of its (a) step count reuses its (a) run.", "",
        table(rows_b, warm), "", "### The paper's claims on this benchmark", "",
    ]
    verdicts = {True: "held", False: "**did not hold**", None: "not measured"}
    lines += [f"- {verdicts[held]}: {claim}: {evidence}." for claim, held, evidence in claims(rows_a, rows_b)]
    if with_plots:
        lines += ["", "![PA-MPJPE per mode](fidelity/pa_mpjpe.png)", "",
                  "![store fit error and valid fits over training](fidelity/store_fits.png)"]
    analysis = HERE / "ANALYSIS.md"
    if size == "full" and analysis.is_file():
        lines += ["", "### Analysis", "", analysis.read_text().strip()]
    return "\n".join(lines)


def plot_pa_mpjpe(rows_a: list[dict], rows_b: list[dict], warm: dict, path: Path) -> None:
    """Bars: held-out PA-MPJPE per mode at equal steps and equal wall-clock; the mean pose as a line."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(MODES)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    for offset, rows, name in ((-0.2, rows_a, "equal steps"), (0.2, rows_b, "equal wall-clock")):
        by_mode = {r["mode"]: r["pa_mpjpe"] for r in rows}
        bars = ax.bar(x + offset, [by_mode.get(m, math.nan) for m in labels], width=0.4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    values = [r["pa_mpjpe"] for r in rows_a + rows_b if math.isfinite(r["pa_mpjpe"])]
    if rows_a:
        ax.axhline(rows_a[0]["baseline_pa_mpjpe"], color="grey", linestyle="--", label="mean pose")
        values.append(rows_a[0]["baseline_pa_mpjpe"])
    if warm and math.isfinite(warm.get("pa_mpjpe", math.nan)):
        ax.axhline(warm["pa_mpjpe"], color="black", linestyle=":", label="warm start")
        values.append(warm["pa_mpjpe"])
    if values:  # differences of a few mm: start the axis near the data, not at 0
        ax.set_ylim(math.floor(min(values)) - 5, math.ceil(max(values)) + 3)
    ax.set_xticks(x, labels)
    ax.set_ylabel("held-out PA-MPJPE (mm)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_store(rows_a: list[dict], path: Path) -> None:
    """The store's mean fit error, valid share and fits' PA-MPJPE from truth on synth-itw over training steps,
    per store-backed mode."""
    import matplotlib.pyplot as plt

    fig, (err_ax, valid_ax, truth_ax) = plt.subplots(1, 3, figsize=(12, 3.4))
    for r in rows_a:
        if not math.isfinite(r["error_start"]):
            continue
        columns = list(zip(*r["curve"]))
        err_ax.plot(columns[0], columns[1], label=r["mode"])
        valid_ax.plot(columns[0], columns[2], label=r["mode"])
        if len(columns) > 3:
            truth_ax.plot(columns[0], columns[3], label=r["mode"])
    err_ax.set(xlabel="trainer step", ylabel="mean ranking error", title="store fit error (synth-itw)")
    valid_ax.set(xlabel="trainer step", ylabel="share of samples", title="valid fits (synth-itw)")
    truth_ax.set(xlabel="trainer step", ylabel="PA-MPJPE (mm)", title="stored fits vs withheld truth (synth-itw)")
    err_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render(results: dict, out: Path, write_results: bool) -> str:
    """Plots and the section into OUT; with write_results also RESULTS.md and benchmarks/fidelity/*.png."""
    import matplotlib

    matplotlib.use("Agg")
    plot_pa_mpjpe(results["rows_a"], results["rows_b"], results.get("warm_start") or {}, out / PLOTS[0])
    plot_store(results["rows_a"], out / PLOTS[1])
    text = section(results, with_plots=write_results)
    (out / "section.md").write_text(f"{SECTION}\n\n{text}\n")
    if write_results:
        for name in PLOTS:
            shutil.copyfile(out / name, HERE / name)
        write_section(SECTION, text, RESULTS)
    return text


# -- main -------------------------------------------------------------------------------------------

def study_facts(study: RunConfig, size: StudySize) -> dict:
    """The settings the report names."""
    return {"steps": size.steps, "backbone": study.network.backbone, "img_res": study.data.img_res,
            "batch_size": study.train.batch_size,
            "lr": study.train.lr, "seed": study.seed, "synth": dict(size.synth), "iterations": size.iterations,
            "warm_steps": size.warm_steps, "warm_lr": size.warm_lr, "warm_seed": study.seed,
            "threshold": study.fitting.valid_error_threshold}


def run_study(size_name: str, size: StudySize, out: Path, budget: bool, command: str, seed: int | None = None,
              modes: tuple[str, ...] = tuple(MODES)) -> dict:
    """Both parts on one Ray and one embedded Redis; the results (also written to OUT/results.json)."""
    import ray
    import torch

    from spin_ray.body.body_model import BodyModel
    from spin_ray.cli.launch import prepare_data
    from spin_ray.store.server import EmbeddedRedis

    started = time.monotonic()
    torch.set_num_threads(1)  # the driver's static fits: one thread is the fastest (shared/FACTS.md)
    with EmbeddedRedis(out / "redis") as server:
        study = study_config(size, out, server.url)
        results = {"size": size_name, "command": command, "study": study_facts(study, size), "budget_s": math.nan,
                   "rows_a": [], "rows_b": [], "complete": False}

        def save() -> None:  # after every run: a study stopped early still reports what finished
            results.update(machine=machine_line(), wall_s=time.monotonic() - started)
            (out / "results.json").write_text(json.dumps(results, indent=1))

        log(f"size {size_name}: data {dict(size.synth)}, {size.steps} steps per mode, output {out}")
        prepare_data(study, progress=False)
        body_hash = BodyModel.from_config(study.body).identity
        fits = static_fits_file(study, body_hash, out)
        log(f"static fits of the mean pose ready ({time.monotonic() - started:.0f} s)")
        start_ray()
        try:
            warm, results["warm_start"] = warm_start(study, size, out)
            save()
            shared = Shared(body_hash, fits, warm, FitTruth(study))
            runs = study if seed is None else study.model_copy(update={"seed": seed})  # the warm start keeps its seed
            results["study"]["seed"] = runs.seed
            equal_steps(runs, size, out, shared, results["rows_a"], save, modes)
            if budget:
                results["budget_s"] = equal_time(runs, size, out, shared, results["rows_a"],
                                                 results["rows_b"], save)
        finally:
            ray.shutdown()
    results["complete"] = True
    save()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run (or re-render) the study and print its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True, help="smoke: minutes; full: the recorded study")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/fidelity-SIZE)")
    parser.add_argument("--write-results", action="store_true",
                        help="write the section of benchmarks/RESULTS.md and the PNGs in benchmarks/fidelity/")
    parser.add_argument("--steps", type=int, default=None, help="override the steps per mode of (a) (timing probes)")
    parser.add_argument("--no-budget", action="store_true", help="skip part (b) (timing probes)")
    parser.add_argument("--report-only", action="store_true", help="re-render OUT/results.json without training")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the mode runs (the warm start keeps the config's): repeats for the noise between seeds")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    if not args.no_budget and not args.report_only and set(modes) != set(MODES):
        parser.error("part (b) compares every mode: with a subset of --modes add --no-budget")
    out = (args.out or REPO / "outputs" / f"fidelity-{args.size}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES[args.size] if args.steps is None else replace(SIZES[args.size], steps=args.steps)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
    else:
        command = shlex.join(["python", "benchmarks/fidelity/run.py", *(argv if argv is not None else sys.argv[1:])])
        results = run_study(args.size, size, out, not args.no_budget, command, args.seed, modes)
    print(f"{SECTION}\n\n{render(results, out, args.write_results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
