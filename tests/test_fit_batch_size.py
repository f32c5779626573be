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


def test_a_batch_that_does_not_fit_in_memory_is_one_input_error(compiling):
    import torch

    from spin_ray.body.body_model import BodyModel
    from spin_ray.errors import InputError
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.recipes import fit
    from spin_ray.fitting.smplify import SmplifyParams

    cfg = RunConfig()
    body = BodyModel.embedded()
    n = 2_000_000_000  # expanded views: no memory until the fit's first copy (~1 TB) is refused by the allocator
    keypoints = torch.ones(1, 49, 3).expand(n, 49, 3)
    init = SmplifyParams(*(torch.zeros(1, w).expand(n, w) for w in (3, 69, body.num_betas, 3)))
    for compiled in (False, True):
        fitting = cfg.fitting.model_copy(update={"compiled": compiled})
        with pytest.raises(InputError) as err:
            fit(body, load_pose_prior(cfg.fitting), keypoints, init, fitting, cfg.camera)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"fitting {n} samples at once ran out of memory")
        assert message.endswith("lower fitting.batch_size (spin-ray fit --batch-size)")
