"""The fidelity study (benchmarks/fidelity/run.py): its bookkeeping, and the smoke size end to end."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fidelity" / "run.py"
MODES = ("2d", "static", "sync", "async", "async+lookahead")


def load_study():
    spec = importlib.util.spec_from_file_location("fidelity_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def fake_row(mode, pa, steps=100, seconds=100.0, part="a", error=(60.0, 50.0)):
    store = mode != "2d"
    return {"part": part, "mode": mode, "steps": steps, "train_s": seconds, "steps_per_s": steps / seconds,
            "mpjpe": 2 * pa, "pa_mpjpe": pa, "baseline_mpjpe": 250.0, "baseline_pa_mpjpe": 120.0,
            "error_start": error[0] if store else math.nan, "error_end": error[1] if store else math.nan,
            "valid_start": 0.7 if store else math.nan, "valid_end": 0.8 if store else math.nan,
            "loop_writes": 5, "loop_fits_used": math.nan, "dropped": 0, "final_loss": 1.0, "curve": [], "reused": False}


def test_budget_gives_each_mode_static_seconds_times_its_own_rate():
    study = load_study()
    rows = [fake_row("static", 90, steps=100, seconds=100.0), fake_row("sync", 80, steps=100, seconds=200.0),
            fake_row("async", 80, steps=100, seconds=125.0)]
    budget, plan = study.budget_plan(rows)
    assert budget == 100.0
    assert plan == {"static": 100, "sync": 50, "async": 80}


def test_claims_read_the_right_direction():
    study = load_study()
    a = [fake_row("2d", 100), fake_row("static", 90, error=(60.0, 60.0)), fake_row("sync", 80),
         fake_row("async", 83), fake_row("async+lookahead", 82.3, error=(60.0, 61.0))]
    b = [{**r, "part": "b"} for r in a]
    b[2] = {**fake_row("sync", 85, steps=50), "part": "b"}
    verdicts = {claim: held for claim, held, _ in study.claims(a, b)}
    assert verdicts["`2d` worse than `static` (PA-MPJPE, equal steps)"] is True
    assert verdicts["`static` worse than `sync` (PA-MPJPE, equal steps)"] is True
    assert verdicts["`async` within 3 % of `sync` at equal steps"] is False  # +3.75 %
    assert verdicts["`async+lookahead` within 3 % of `sync` at equal steps"] is True  # +2.9 %
    assert verdicts["`async` better than `sync` at equal wall-clock"] is True  # 83 < 85
    assert verdicts["the store's mean fit error falls during `sync` training"] is True
    assert verdicts["the store's mean fit error falls during `async+lookahead` training"] is False


def test_a_missing_run_is_reported_not_measured():
    study = load_study()
    a = [fake_row("2d", 100), fake_row("static", 90)]
    verdicts = {claim: held for claim, held, _ in study.claims(a, [])}
    assert verdicts["`2d` worse than `static` (PA-MPJPE, equal steps)"] is True
    assert verdicts["`static` worse than `sync` (PA-MPJPE, equal steps)"] is None
    assert study.table([]) == "Not run."


def test_table_has_the_baseline_and_a_row_per_mode_with_dashes_for_2d_store():
    study = load_study()
    text = study.table([fake_row(m, 90) for m in MODES])
    lines = text.splitlines()
    assert lines[2].startswith("| mean pose (untrained baseline) | 0 |") and "| 120.0 |" in lines[2]
    two_d = next(line for line in lines if line.startswith("| 2d |"))
    assert "60.0 → 50.0" not in two_d and "| – |" in two_d
    assert "| 60.0 → 50.0 | 0.700 → 0.800 |" in next(line for line in lines if line.startswith("| sync |"))


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """mode -> cells of the Markdown table under heading."""
    body = text.split(heading, 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| mode") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--size", "smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = (tmp_path / "section.md").read_text()
    assert section.startswith("## Fidelity study (benchmarks/fidelity/run.py)")
    assert "![" not in section  # plots are linked only when RESULTS.md is written
    for heading in ("### (a) Equal steps", "### (b) Equal wall-clock"):
        rows = table_rows(section, heading)
        assert set(MODES) | {"mean pose (untrained baseline)", "warm start (every mode's start)"} == set(rows)
        for mode in MODES:
            mpjpe, pa_mpjpe = float(rows[mode][4]), float(rows[mode][5])
            assert math.isfinite(mpjpe) and math.isfinite(pa_mpjpe) and 0 < pa_mpjpe <= mpjpe
    assert section.count("\n- held: ") + section.count("\n- **did not hold**: ") == 9

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and math.isfinite(results["budget_s"]) and results["budget_s"] > 0
    a = {r["mode"]: r for r in results["rows_a"]}
    b = {r["mode"]: r for r in results["rows_b"]}
    assert set(a) == set(b) == set(MODES)
    assert all(r["steps"] == 6 and r["steps_per_s"] > 0 for r in a.values())
    assert b["static"]["reused"] and b["static"]["steps"] == 6  # the budget is static's own time
    assert math.isnan(a["2d"]["error_start"])
    for mode in MODES[1:]:
        r = a[mode]
        assert math.isfinite(r["error_start"]) and 0 <= r["valid_start"] <= 1 and 0 <= r["valid_end"] <= 1
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == 6
    assert a["static"]["error_end"] == a["static"]["error_start"]  # static fits never change
    assert a["static"]["fit_pa_end"] == a["static"]["fit_pa_start"]
    # Fits are scored against the withheld truth: plausible millimetres, the same start for every mode.
    assert len({a[m]["fit_pa_start"] for m in MODES[1:]}) == 1 and 10 < a["sync"]["fit_pa_start"] < 300
    assert all(len(point) == 4 for point in a["sync"]["curve"])
    # Every mode starts from the shared warm start, trained and evaluated once.
    warm = results["warm_start"]
    assert warm["steps"] == 4 and math.isfinite(warm["pa_mpjpe"])
    assert (tmp_path / "runs").is_dir() and len(list(tmp_path.glob("warm-start-*/checkpoints/last.pt"))) == 1
    # Every store-backed mode starts from the same static fits.
    assert len({a[m]["error_start"] for m in MODES[1:]}) == 1
    # In-loop fits reach the store.
    assert a["sync"]["loop_writes"] > 0 and a["sync"]["error_end"] < a["sync"]["error_start"]
    assert a["async"]["loop_writes"] > 0
    for name in ("pa_mpjpe.png", "store_fits.png"):
        assert (tmp_path / name).stat().st_size > 1000
