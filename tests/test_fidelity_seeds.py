"""The seeds study (benchmarks/fidelity/seeds.py): claims against the noise between seeds, and run cache keys."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fidelity" / "seeds.py"


def load_seeds():
    spec = importlib.util.spec_from_file_location("fidelity_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def runs(values, key="pa_mpjpe"):
    return {seed: {key: value} for seed, value in enumerate(values)}


def test_a_difference_holds_only_beyond_two_standard_errors_of_the_per_seed_differences():
    seeds = load_seeds()
    held, evidence = seeds.compare(runs([65.0, 65.2, 64.9]), runs([62.5, 62.6, 62.4]))
    assert held is True and "beyond the noise" in evidence
    held, evidence = seeds.compare(runs([63.0, 62.0, 64.0]), runs([62.5, 62.6, 62.4]))  # +0.5 mean, spread 1
    assert held is False and "within the noise" in evidence
    held, evidence = seeds.compare(runs([61.0, 61.1, 60.9]), runs([62.5, 62.6, 62.4]))
    assert held is False and "opposite direction" in evidence
    assert seeds.compare(runs([61.0]), {})[0] is None  # no common seed: not measured


def test_within_three_percent_and_fits_improving_read_the_right_direction():
    seeds = load_seeds()
    assert seeds.within(runs([64.0, 64.2]), runs([62.5, 62.6]), 0.03)[0] is True  # +2.5 %
    assert seeds.within(runs([65.0, 65.2]), runs([62.5, 62.6]), 0.03)[0] is False  # +4.1 %
    better = {0: {"error_start": 31.9, "error_end": 8.6, "fit_pa_start": 88.1, "fit_pa_end": 48.4}}
    worse = {0: {**better[0], "fit_pa_end": 90.0}}
    assert seeds.improves(better)[0] is True and seeds.improves(worse)[0] is False


def test_a_run_key_ignores_where_it_writes_and_new_defaults_but_not_its_settings(tmp_path):
    seeds = load_seeds()
    from spin_ray.config import RunConfig

    base = RunConfig()
    a = seeds.run_config(base, "paired", 0, "a", "sync", 300, tmp_path / "one")
    moved = seeds.run_config(base, "paired", 0, "a", "sync", 300, tmp_path / "two")
    assert seeds.run_key(a) == seeds.run_key(moved)
    for other in (seeds.run_config(base, "paired", 1, "a", "sync", 300, tmp_path),
                  seeds.run_config(base, "unpaired", 0, "a", "sync", 300, tmp_path),
                  seeds.run_config(base, "better", 0, "a", "sync", 300, tmp_path),
                  seeds.run_config(base, "paired", 0, "a", "sync", 299, tmp_path)):
        assert seeds.run_key(other) != seeds.run_key(a)
