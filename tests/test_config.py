"""Run config: defaults, YAML loading and errors that name the key."""

from pathlib import Path

import pytest

from spin_ray.config import RunConfig, config_from_dict, load_config
from spin_ray.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_values():
    cfg = RunConfig()
    assert cfg.camera.focal_length == 5000 and cfg.camera.crop_size == 224
    f = cfg.fitting
    assert (f.iterations_camera, f.iterations_body, f.lr, f.gmof_sigma) == (50, 50, 1e-2, 100)
    assert (f.pose_prior_weight, f.angle_prior_weight, f.shape_prior_weight) == (4.78, 15.2, 5.0)
    assert f.valid_error_threshold == 100 and f.max_abs_beta == 3


def test_typo_names_the_key_path():
    with pytest.raises(ConfigError, match=r"unknown key 'fitting.iteration_body'"):
        config_from_dict({"fitting": {"iteration_body": 3}})


def test_bad_value_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"camera.focal_length: .*greater than 0.*-1"):
        config_from_dict({"camera": {"focal_length": -1}})


BAD_CONFIG_FILES = {  # id: (file content, or None for no file / "DIR" for a folder; what the message says)
    "missing": (None, "does not exist"),
    "folder": ("DIR", "is a folder"),
    "not-yaml": ("fitting: [1, 2\n", "not valid YAML"),
    "scalar": ("3\n", "mapping"),
    "empty": ("", "empty or only comments"),
    "comments-only": ("# name: mine\n# train: {steps: 3}\n", "empty or only comments"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a text file"),
    "typo": ("fitting: {iteration_body: 3}\n", "unknown key 'fitting.iteration_body'"),
    "bad-value": ("camera: {focal_length: -1}\n", "camera.focal_length"),
    "bad-mode": ("train: {mode: asink}\n", "train.mode"),
    "device-gpu": ("device: gpu\n", "device: Value error, 'gpu' is not a device spin-ray runs on"),
    "fitter-device-gpu": ("pipeline: {fitter_device: gpu}\n", "pipeline.fitter_device: Value error, 'gpu' is not"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIG_FILES))
def test_a_bad_config_file_is_one_line_that_names_the_fault(tmp_path, capsys, kind):
    from spin_ray.cli.launch import main as launch_main

    content, message = BAD_CONFIG_FILES[kind]
    path = tmp_path / "run.yaml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert launch_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert message.split("'")[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_explicit_empty_mapping_is_every_default():
    assert load_config_text("{}\n") == RunConfig()


def load_config_text(text: str) -> RunConfig:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_text(text)
        return load_config(path)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    load_config(CONFIGS / name)


def test_command_line_overrides_are_validated_like_the_file():
    from spin_ray.config import with_overrides

    cfg = with_overrides(RunConfig(), train={"mode": "static", "steps": 7, "init_store_from_static_fits": None},
                         synth={"seed": 3})
    assert (cfg.train.mode, cfg.train.steps, cfg.synth.seed) == ("static", 7, 3)
    assert with_overrides(cfg, train={"mode": None}).train.mode == "static"  # None leaves the value alone
    with pytest.raises(ConfigError, match="train.steps"):
        with_overrides(cfg, train={"steps": -1})
    with pytest.raises(ConfigError, match="train.mode"):
        with_overrides(cfg, train={"mode": "bogus"})
    with pytest.raises(ConfigError, match="no config section 'trian'"):
        with_overrides(cfg, trian={"steps": 1})


def test_fitter_class_must_name_a_module_and_a_class():
    with pytest.raises(ConfigError, match="pipeline.fitter_class.*'module:Class'"):
        config_from_dict({"pipeline": {"fitter_class": "spin_ray.pipeline.fitter.FitterActor"}})
    assert config_from_dict({"pipeline": {"fitter_class": "a.b:C"}}).pipeline.fitter_class == "a.b:C"


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml", "paper.yaml"])
def test_an_override_changes_only_its_value(name):
    from spin_ray.config import with_overrides

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    changed = with_overrides(cfg, train={"steps": cfg.train.steps + 1})
    assert changed.train.steps == cfg.train.steps + 1
    assert changed.model_copy(update={"train": cfg.train}) == cfg


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_spellings_are_checked_not_the_machine(device):
    """The config only checks the spelling: a driver without a GPU must load a GPU cluster's config."""
    cfg = config_from_dict({"device": device, "pipeline": {"fitter_device": device}})
    assert cfg.device == device and cfg.pipeline.fitter_device == device


@pytest.mark.parametrize("device", ["gpu", "GPU", "gpu:0", "cuda0", "mps", "cuda:", " cpu", "cuda:-1"])
def test_a_device_spin_ray_does_not_run_on_is_refused_by_key(device):
    with pytest.raises(ConfigError, match=r"^config: device: .*is not a device spin-ray runs on: use cpu, cuda or cuda:N"):
        config_from_dict({"device": device})
    with pytest.raises(ConfigError, match=r"^config: pipeline.fitter_device: .*is not a device spin-ray runs on"):
        config_from_dict({"pipeline": {"fitter_device": device}})
