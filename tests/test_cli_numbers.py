"""Command-line numbers that make no sense end the command with one line on stderr, before any work."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from spin_ray.cli import main
from spin_ray.cli.arg_types import non_negative_float, path_with_suffix, positive_float

# id -> (argv, the words the one line must hold)
BAD_NUMBERS = {
    "fit-threads-0": (["fit", "d.npz", "--out", "f.npy", "--threads", "0"], "--threads: must be a whole number >= 1"),
    "fit-threads-negative": (["fit", "d.npz", "--out", "f.npy", "--threads", "-2"], "got '-2'"),
    "fit-limit-0": (["fit", "d.npz", "--out", "f.npy", "--limit", "0"], "--limit: must be a whole number >= 1"),
    "fit-limit-not-a-number": (["fit", "d.npz", "--out", "f.npy", "--limit", "ten"], "--limit: must be a whole number"),
    "fit-out-other-suffix": (["fit", "d.npz", "--out", "fits.npz"], "--out: must be a .npy file, got 'fits.npz'"),
    "fit-out-upper-case-suffix": (["fit", "d.npz", "--out", "fits.NPY"], "--out: must be a .npy file"),
    "eval-batch-size-0": (["eval", "c.pt", "--dataset", "d.npz", "--batch-size", "0"], "--batch-size: must be a whole"),
    "eval-batch-size-negative": (["eval", "c.pt", "--dataset", "d.npz", "--batch-size", "-8"], "got '-8'"),
    "eval-limit-0": (["eval", "c.pt", "--dataset", "d.npz", "--limit", "0"], "--limit: must be a whole number >= 1"),
    "train-steps-negative": (["train", "run.yaml", "--steps", "-1"], "--steps: must be a whole number >= 0"),
    "train-steps-fraction": (["train", "run.yaml", "--steps", "2.5"], "--steps: must be a whole number"),
    "synth-workers-negative": (["synth", "--workers", "-1"], "--workers: must be a whole number >= 0"),
    "synth-seed-negative": (["synth", "--seed", "-3"], "--seed: must be a whole number >= 0"),
    "demo-person-negative": (["demo", "i.png", "--keypoints", "k.json", "--person", "-1"], "--person: must be a whole"),
    "demo-bbox-nan": (["demo", "i.png", "--keypoints", "k.json", "--bbox", "0", "0", "nan", "10"],
                      "--bbox: must be a finite number, got 'nan'"),
    "demo-bbox-inf": (["demo", "i.png", "--keypoints", "k.json", "--bbox", "0", "inf", "10", "10"], "got 'inf'"),
}


@pytest.mark.parametrize("argv, words", list(BAD_NUMBERS.values()), ids=list(BAD_NUMBERS))
def test_a_bad_number_is_one_line_and_exit_code_2(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"spin-ray {argv[0]}: error: argument ") and words in lines[0]
    assert lines[0].endswith(f"(see spin-ray {argv[0]} --help)")


def test_fit_out_names_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "d.npz", "--out", str(tmp_path)])
    assert "--out: must name a .npy file, got the folder" in capsys.readouterr().err


def test_fit_out_without_suffix_gets_npy_and_other_types_hold_their_bounds():
    assert path_with_suffix(".npy")("out/fits").as_posix() == "out/fits.npy"
    assert path_with_suffix(".npy")("fits.v2.npy").name == "fits.v2.npy"
    assert positive_float("0.5") == 0.5 and non_negative_float("0") == 0.0
    for parse, text in ((positive_float, "0"), (non_negative_float, "-1e-9"), (positive_float, "-inf")):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number"):
            parse(text)


def test_the_console_script_prints_one_line_for_a_bad_number():
    # The real entry point in a fresh interpreter: exit code and stderr as a shell sees them.
    done = subprocess.run([sys.executable, "-m", "spin_ray.cli", "fit", "d.npz", "--out", "f.npy", "--threads", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("spin-ray fit: error: argument --threads: must be a whole number >= 1, got '0' "
                                   "(see spin-ray fit --help)")


STORE_CASES = {  # id: the arguments of `spin-ray store ...`; each is refused when parsed, before any connection
    "serve-port-0": ["serve", "--port", "0"],
    "serve-port-too-big": ["serve", "--port", "70000"],
    "stats-timeout-0": ["stats", "--timeout", "0"],
    "stats-threshold-nan": ["stats", "--threshold", "nan"],
    "worst-k-0": ["worst", "--k", "0"],
    "filter-max-error-negative": ["filter", "--max-error", "-1"],
    "gallery-worst-0": ["gallery", "--worst", "0"],
    "export-size-0": ["export", "out.parquet", "--size", "0"],
    "import-error-negative": ["import", "in.npy", "--error", "-5"],
    "import-step-negative": ["import", "in.npy", "--step", "-1"],
}


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_a_bad_store_number_is_one_line_and_exit_code_2(case, capsys):
    from spin_ray.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["store", *STORE_CASES[case]])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "must be" in err
