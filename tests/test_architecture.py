"""The layering of docs/ARCHITECTURE.md holds: import-linter's contracts in pyproject.toml, and what they must catch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 400


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)  # the packages under root, before any installed copy
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    for name in ("spin_ray", "spin_ray_sim"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "4 kept" in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_floors(tmp_path):
    root = _copy(tmp_path)
    geometry = root / "spin_ray" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n\ndef _upwards():\n    from spin_ray.train import run  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "spin_ray's parts import only downwards BROKEN" in result.stdout
    assert "spin_ray.geometry -> spin_ray.train.run" in result.stdout


def test_a_cycle_inside_a_part_is_caught(tmp_path):
    root = _copy(tmp_path)
    records = root / "spin_ray" / "store" / "records.py"
    records.write_text(records.read_text() + "\n\ndef _back():\n    from spin_ray.store import fit_store  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "no import cycle between the modules of any part BROKEN" in result.stdout


def test_the_pool_importing_train_breaks_its_contract(tmp_path):
    root = _copy(tmp_path)
    pool = root / "spin_ray" / "pipeline" / "pool.py"
    pool.write_text(pool.read_text() + "\n\ndef _trainer():\n    from spin_ray.train import supervision  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "of pipeline, only the trainer actor and the Ray Train workers import train BROKEN" in result.stdout


def test_the_product_never_imports_the_development_package(tmp_path):
    root = _copy(tmp_path)
    pool = root / "spin_ray" / "pipeline" / "pool.py"
    pool.write_text(pool.read_text() + "\n\ndef _sim():\n    import spin_ray_sim.standin  # noqa\n")
    result = _lint(root)
    assert "the product never imports the development package BROKEN" in result.stdout


def test_no_test_or_simulation_code_in_the_product():
    offenders = []
    for path in sorted((ROOT / "spin_ray").rglob("*.py")):
        text = path.read_text().lower()
        offenders += [f"{path.relative_to(ROOT)}: {word}" for word in ("tests only", "stand-in", "fake cluster")
                      if word in text]
    assert not offenders, offenders


@pytest.mark.parametrize("path", sorted((ROOT / "spin_ray").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_long_modules_say_why(path):
    lines = path.read_text().splitlines()
    if len(lines) > MAX_LINES:
        head = "\n".join(lines[:40])
        assert "Long because" in head, f"{len(lines)} lines: split it, or say why in its docstring ('Long because ...')"
