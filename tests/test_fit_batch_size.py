"""`spin-ray fit --batch-size N`: the samples fitted together reach fitting.batch_size; 0 is a one-line error."""

from __future__ import annotations

import pytest

from spin_ray.cli import build_parser, main
from spin_ray.cli.fit import _config
from spin_ray.config import RunConfig


def test_batch_size_reaches_the_fitting_config():
    parser = build_parser()
    given = _config(parser.parse_args(["fit", "d.npz", "--out", "f.npy", "--batch-size", "1024"]))
    default = _config(parser.parse_args(["fit", "d.npz", "--out", "f.npy"]))
    assert given.fitting.batch_size == 1024
    assert default.fitting.batch_size == RunConfig().fitting.batch_size == 256
    assert given.fitting.recipe == default.fitting.recipe  # nothing else moved


@pytest.mark.parametrize("value", ["0", "-64", "many"])
def test_a_batch_size_that_is_no_positive_whole_number_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "d.npz", "--out", "f.npy", "--batch-size", value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("spin-ray fit: error: argument --batch-size: must be a whole number")
