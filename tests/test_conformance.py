"""docs/CONFORMANCE.md is the contract: configs/paper.yaml and the defaults carry the values its table names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from spin_ray.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|(?P<cells>.+)\|\s*$")


def table_rows() -> list[tuple[str, object, bool]]:
    """(config key, value, default differs) for every row of the values table that names a config key."""
    rows = []
    for line in (ROOT / "docs" / "CONFORMANCE.md").read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", match.group("cells"))]
        if len(cells) != 6:
            continue
        key = re.search(r"`([a-z_.0-9]+)`", cells[4])
        if key is None:
            continue
        rows.append((key.group(1), yaml.safe_load(cells[3]), "default differs" in cells[4]))
    return rows


def value_at(cfg: RunConfig, key: str) -> object:
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_the_table_covers_the_choices_the_issue_names():
    keys = {key for key, _, _ in table_rows()}
    assert len(keys) >= 30
    for wanted in ("fitting.ignored_joints", "fitting.gmof_sigma", "fitting.iterations_body",
                   "fitting.valid_error_threshold", "fitting.max_abs_beta", "train.loss.keypoint_loss_weight",
                   "train.loss.cam_loss_weight", "data.rot_factor", "data.noise_factor", "train.lr", "train.batch_size"):
        assert wanted in keys


@pytest.mark.parametrize("key, value, default_differs", table_rows(), ids=[r[0] for r in table_rows()])
def test_paper_config_matches_the_table(key, value, default_differs):
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert value_at(paper, key) == value, f"configs/paper.yaml {key}"
    assert key.split(".")[-1] in (ROOT / "configs" / "paper.yaml").read_text()  # written out, not inherited
    if not default_differs:
        assert value_at(RunConfig(), key) == value, f"default {key}"
    else:
        assert value_at(RunConfig(), key) != value


def test_every_check_of_spins_steps_names_a_test_that_exists():
    text = (ROOT / "docs" / "CONFORMANCE.md").read_text()
    section = text.split("## SPIN's files and steps, shown equal", 1)[1]
    named = re.findall(r"`(tests/\w+\.py)::(\w+)(?:\[[^`]*\])?`", section)
    assert len(named) >= 3
    for file, name in named:
        source = (ROOT / file).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"docs/CONFORMANCE.md names {file}::{name}, not found"
