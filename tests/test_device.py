"""resolve_device: the config's device checked in the process that uses it; one line naming the key."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from spin_ray.errors import ConfigError
from spin_ray.model.device import resolve_device

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # what a machine without a GPU looks like to torch, anywhere


def test_cpu_resolves_and_other_kinds_are_refused_by_key():
    assert resolve_device("cpu", "device") == torch.device("cpu")
    for name in ("gpu", "mps", "meta", "cuda0"):
        with pytest.raises(ConfigError, match=rf"^pipeline.fitter_device: '{name}' is not a device spin-ray runs on"):
            resolve_device(name, "pipeline.fitter_device")


def test_cuda_where_no_gpu_is_visible_is_one_line_naming_the_key():
    code = textwrap.dedent("""
        from spin_ray.errors import ConfigError
        from spin_ray.model.device import resolve_device
        for name in ("cuda", "cuda:1"):
            try:
                resolve_device(name, "device")
            except ConfigError as err:
                print(err)
    """)
    done = subprocess.run([sys.executable, "-c", code], env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout
    for name, line in zip(("cuda", "cuda:1"), lines):
        assert line.startswith(f"device: {name}, but no CUDA device is visible to this process ("), line
        assert line.endswith("set device: cpu, or run where a GPU is"), line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a visible CUDA device")
def test_a_cuda_index_beyond_the_visible_gpus_is_refused():
    count = torch.cuda.device_count()
    assert resolve_device("cuda", "device").type == "cuda"
    assert resolve_device(f"cuda:{count - 1}", "device").index == count - 1
    with pytest.raises(ConfigError, match=rf"^device: cuda:{count}, but this process sees {count} CUDA device"):
        resolve_device(f"cuda:{count}", "device")


def test_train_2d_on_cuda_without_a_gpu_is_one_line_before_any_data_is_built(tmp_path):
    """Issue 26 item 8: `spin-ray train --mode 2d` with device: cuda on a machine without CUDA gave a traceback."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cuda", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "synth": {"sizes": {"synth-3d": 4, "synth-itw": 0, "synth-test": 4}, "image_size": 64, "workers": 1},
        "network": {"backbone": "resnet18"}, "data": {"img_res": 64},
        "train": {"steps": 1, "batch_size": 2},
    }))
    done = subprocess.run([sys.executable, "-m", "spin_ray.cli", "train", str(config), "--mode", "2d", "--no-progress"],
                          env=NO_GPU, capture_output=True, text=True, timeout=300, cwd=ROOT)
    err = [line for line in done.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert done.returncode == 1 and len(err) == 1, done.stderr[-3000:]
    assert err[0].startswith("spin-ray train: ConfigError: device: cuda, but no CUDA device is visible"), err
    synth = tmp_path / "cache" / "synth"
    assert not synth.exists() or not any(synth.iterdir())
