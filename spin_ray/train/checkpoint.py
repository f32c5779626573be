"""Training checkpoints: written atomically, read without running code, refused for another config.

A checkpoint holds the model, the optimiser, the step, the stream position of the data, the run
config, the identity of what the weights mean (backbone, body model, ...) and every RNG state, so a
resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, RunConfig, config_from_dict
from spin_ray.errors import ConfigError, ModelError
from spin_ray.model.hmr import HMR
from spin_ray.model.mean_params import load_mean_params
from spin_ray.model.pretrained import is_pretrained_file, load_pretrained, pretrained_identity
from spin_ray.model.spin_layout import (
    SPIN_BACKBONE,
    SPIN_IEF_ITERATIONS,
    SPIN_IMG_RES,
    SPIN_NUM_BETAS,
    from_spin_state_dict,
    is_spin_checkpoint,
    to_spin_state_dict,
)

CHECKPOINT_FORMAT = 1
# A checkpoint's mean parameters agree with a configured file when no value differs by more than this.
MEAN_PARAMS_ATOL = 1e-5


def run_identity(cfg: RunConfig, body_identity: str) -> dict[str, Any]:
    """What must match for a checkpoint to continue under cfg: a change here is a different run."""
    return {
        "backbone": cfg.network.backbone,
        "ief_iterations": cfg.network.ief_iterations,
        "mean_params_path": str(cfg.network.mean_params_path),
        "body_model": body_identity,
        "num_betas": cfg.body.num_betas,
        "img_res": cfg.data.img_res,
        "mode": cfg.train.mode,
        "batch_size": cfg.train.batch_size,
        "seed": cfg.seed,
    }


def rng_states() -> dict[str, Any]:
    """torch, numpy and python RNG states in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of rng_states."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write payload to path via a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint (weights only: a checkpoint never runs code)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object: unpickling it could run code
        raise ModelError(f"{path}: not a readable spin-ray checkpoint: it holds objects other than tensors and "
                         f"numbers, which could run code when loaded, and is refused ({_unsafe_global(err)})") from None
    except Exception as err:  # torch raises several types for corrupt files
        raise ModelError(f"{path}: not a readable spin-ray checkpoint ({type(err).__name__}: {_first_line(err)})") from None
    if is_spin_checkpoint(payload):
        return spin_payload(payload)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelError(f"{path}: checkpoint format {found!r}, this code reads format {CHECKPOINT_FORMAT} "
                         "and SPIN's model_checkpoint.pt layout")
    return payload


def _first_line(err: Exception) -> str:
    """An exception's message cut to its first line (torch's load errors run to a page)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _unsafe_global(err: Exception) -> str:
    """The object torch's weights-only loader refused, from its page-long message."""
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip().rstrip(".")
    return "an object weights_only does not allow"


def spin_payload(spin: dict[str, Any]) -> dict[str, Any]:
    """SPIN's checkpoint as a spin-ray payload: its network under spin-ray's names and what it was trained for.

    It has no run config, optimiser state in spin-ray's parameter order, data position or RNG
    states, so it can start a run or be evaluated but never be resumed (check_identity refuses it).
    """
    shape = spin["model"].get("init_shape")
    num_betas = int(shape.shape[-1]) if isinstance(shape, torch.Tensor) and shape.ndim >= 1 else SPIN_NUM_BETAS
    step = spin.get("total_step_count")
    return {
        "format": CHECKPOINT_FORMAT,
        "origin": "spin",
        "model": from_spin_state_dict(spin["model"]),
        "spin_model": spin["model"],
        "identity": {"origin": "spin", "backbone": SPIN_BACKBONE, "img_res": SPIN_IMG_RES, "num_betas": num_betas,
                     "ief_iterations": SPIN_IEF_ITERATIONS},
        "step": int(step) if isinstance(step, int) else 0,
    }


def spin_run_config() -> RunConfig:
    """The run config of SPIN's network where no other is given: resnet50 at 224 px, its mean from the checkpoint."""
    return RunConfig.model_validate({"data": {"img_res": SPIN_IMG_RES}, "network": {"backbone": SPIN_BACKBONE}})


def checkpoint_config(payload: dict[str, Any], path: str | Path) -> RunConfig:
    """The run config saved in a checkpoint (SPIN's checkpoints have none: spin_run_config)."""
    if payload.get("origin") == "spin":
        return spin_run_config()
    try:
        return config_from_dict(payload["config"], source=f"{path} (saved config)")
    except (KeyError, ConfigError) as err:
        raise ModelError(f"{path}: the saved run config is missing or invalid: {err}") from None


def check_identity(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise ModelError listing every identity field where a checkpoint differs from the current run."""
    if saved.get("origin") == "spin":
        raise ModelError(f"{path} is a SPIN checkpoint: it holds SPIN's network but no spin-ray training state "
                         "(optimiser, step, data position, RNG) to resume; start a new run from it with "
                         f"network.init_checkpoint: {path}")
    diffs = [f"{key}: checkpoint has {saved.get(key)!r}, config has {value!r}"
             for key, value in current.items() if saved.get(key) != value]
    if diffs:
        raise ModelError(f"{path} was written by a different run config and cannot be resumed under this one ("
                         + "; ".join(diffs) + "); use the checkpoint's own config or start a new run")


def check_resumable(path: str | Path, cfg: RunConfig) -> None:
    """Refuse in one line, before a run does any work, a checkpoint cfg cannot resume (unreadable, SPIN's, another run's).

    Trainer.resume checks the same again where the trainer is built (a Ray actor, a Ray Train worker);
    this early call spares the minute of data, Redis and Ray start-up before it.
    """
    payload = load_checkpoint(path)
    check_identity(payload.get("identity", {}), run_identity(cfg, BodyModel.from_config(cfg.body).identity), path)


def checkpoint_network(
    payload: dict[str, Any], cfg: RunConfig, body: BodyModel, what: str, config_name: str, fix: str,
) -> HMR:
    """cfg's network with a checkpoint's weights (spin-ray's or SPIN's), refused in one line naming what differs.

    The one home of this check for network.init_checkpoint, `eval`, load_regressor (`demo
    --checkpoint`, dataset fits) and resume: the checkpoint's identity names the body model, backbone,
    input size, betas and IEF iterations its weights were trained for; weights that still do not load
    (a checkpoint without that identity) are summarised by count, never listed key by key, in the
    checkpoint's own key names. The mean parameters are the checkpoint's; where cfg names a mean
    parameter file that exists and disagrees, the checkpoint is refused rather than either silently
    winning. `what` names the checkpoint ("network.init_checkpoint X"), `config_name` the config it is
    compared with ("this run"), `fix` what to do.
    """
    if payload.get("origin") == "spin":
        what = f"{what} (SPIN's checkpoint)"
    saved = payload.get("identity") or {}
    saved_body = saved.get("body_model")
    if saved_body is not None and saved_body != body.identity:
        raise ModelError(f"{what} was trained with body model {saved_body}, {config_name} uses {body.identity} "
                         f"({body.source}): {fix}")
    expected = pretrained_identity(cfg, body.identity)
    diffs = [f"{key}: checkpoint has {saved[key]!r}, config has {value!r}"
             for key, value in expected.items() if key in saved and saved[key] != value]
    if diffs:
        raise ModelError(f"{what} was trained with another network than {config_name} gives ({'; '.join(diffs)}): "
                         f"{fix}")
    model = network_from_weights(payload, cfg, what, config_name, fix)
    check_mean_params(model, cfg, what, config_name)
    return model


def network_from_weights(payload: dict[str, Any], cfg: RunConfig, what: str, config_name: str, fix: str) -> HMR:
    """cfg's network holding a payload's weights; a misfit is refused naming the first tensor that differs."""
    if not isinstance(payload.get("model"), dict):
        raise ModelError(f"{what} has no 'model' weights (keys: {sorted(payload)})")
    # Every weight and mean-parameter buffer comes from the checkpoint: the files the network was first
    # built from (ImageNet weights, SPIN's mean parameters) are neither read nor needed.
    network = cfg.network.model_copy(update={"pretrained_path": None, "mean_params_path": None})
    model = HMR.from_config(network, cfg.body.num_betas)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError:
        if payload.get("origin") == "spin":  # name the tensors as the user's file names them
            misfit = weights_misfit(to_spin_state_dict(model.state_dict()), payload["spin_model"])
        else:
            misfit = weights_misfit(model.state_dict(), payload["model"])
        raise ModelError(f"{what} does not fit {config_name}'s network ({misfit}): {fix}") from None
    return model


def check_mean_params(model: HMR, cfg: RunConfig, what: str, config_name: str) -> None:
    """Refuse a checkpoint whose mean parameters differ from network.mean_params_path's, saying which would win.

    A null path, or a file that is not there (a config moved to another machine), takes the
    checkpoint's mean without comparing: the weights were trained from it.
    """
    path = cfg.network.mean_params_path
    if path is None or not Path(path).is_file():
        return
    configured = load_mean_params(path, cfg.body.num_betas)
    for name, ours, theirs in (("pose", model.init_pose, configured.pose_6d), ("shape", model.init_betas,
                               configured.betas), ("cam", model.init_camera, configured.camera)):
        gap = float((ours - theirs.to(ours.dtype)).abs().max())
        if gap > MEAN_PARAMS_ATOL:
            raise ModelError(f"{what} has other mean parameters than {config_name}'s network.mean_params_path {path} "
                             f"('{name}' differs by up to {gap:.3g}); the checkpoint's would win, as its weights were "
                             "trained from them: set network.mean_params_path to null to use them, or name the "
                             "file the checkpoint was trained with")


def weights_misfit(network: dict[str, Any], saved: dict[str, Any]) -> str:
    """How a state dict misses a network's, in one line: counts, each with its first example."""
    missing = [key for key in network if key not in saved]
    unexpected = [key for key in saved if key not in network]
    shape = lambda value: tuple(getattr(value, "shape", ()))  # noqa: E731
    reshaped = [key for key in network if key in saved and shape(saved[key]) != shape(network[key])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the network's {len(network)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} not the network's (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (e.g. {key}: checkpoint {shape(saved[key])}, "
                     f"network {shape(network[key])})")
    return ", ".join(parts) or "the weights do not load"


def export_spin_checkpoint(source: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's network in SPIN's model_checkpoint.pt layout, loadable by SPIN's demo.py and eval.py.

    SPIN's network is one shape (resnet50 at 224 px, 10 betas, 3 IEF iterations): any other is refused
    before anything is written. The file holds 'model' and SPIN's counters; no 'optimizer' (spin-ray's
    optimiser state is in another parameter order), so SPIN resuming from it starts a fresh optimiser.
    """
    source, out = Path(source), Path(out)
    payload = load_checkpoint(source)
    cfg = checkpoint_config(payload, source)
    shape = {"network.backbone": (cfg.network.backbone, SPIN_BACKBONE), "data.img_res": (cfg.data.img_res, SPIN_IMG_RES),
             "body.num_betas": (cfg.body.num_betas, SPIN_NUM_BETAS),
             "network.ief_iterations": (cfg.network.ief_iterations, SPIN_IEF_ITERATIONS)}
    for key, (ours, spins) in shape.items():
        if ours != spins:
            raise ModelError(f"{source} has {key} {ours!r}; SPIN's network has {spins!r} only, so it cannot be "
                             "exported in SPIN's layout")
    if out.resolve() == source.resolve():
        raise ModelError(f"--out {out} is the checkpoint being exported; name another file")
    model = network_from_weights(payload, cfg, str(source), "its saved config",
                                 "export a checkpoint that a spin-ray run wrote")
    step = int(payload.get("step", 0))
    spin = {"model": to_spin_state_dict(model.state_dict()), "epoch": 0, "batch_idx": 0,
            "batch_size": cfg.train.batch_size, "total_step_count": step}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        torch.save(spin, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def initial_network(cfg: RunConfig, body: BodyModel) -> HMR:
    """The network a new run starts from: the configured HMR, with network.init_checkpoint's weights when set
    (a resumed or evaluated checkpoint brings its own weights and never reads the init checkpoint)."""
    path = cfg.network.init_checkpoint
    if path is None:
        return HMR.from_config(cfg.network, cfg.body.num_betas)
    if is_pretrained_file(path):  # shipped weights (make pretrained), fp16 with their identity
        weights = load_pretrained(path, pretrained_identity(cfg, body.identity))
        model = HMR.from_config(cfg.network, cfg.body.num_betas)
        model.load_state_dict(weights)
        return model
    try:
        payload = load_checkpoint(path)
    except ModelError as err:
        raise ModelError(f"network.init_checkpoint: {err} (name a checkpoint a spin-ray run wrote, e.g. "
                         "OUTPUT/checkpoints/last.pt, or null to start from pretrained_path or random weights)") from None
    return checkpoint_network(
        payload, cfg, body, f"network.init_checkpoint {path}", "this run",
        "start from a checkpoint of the same body model and network (backbone, data.img_res, head), or set "
        "network.init_checkpoint to null")


def load_regressor(path: str | Path) -> tuple[HMR, RunConfig, BodyModel]:
    """A checkpoint's network in eval mode, with its saved run config and the body model it was trained with."""
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload, path)
    body = BodyModel.from_config(cfg.body)
    model = checkpoint_network(payload, cfg, body, str(path), "its saved config",
                               "restore the body model file it was trained with, or use the checkpoint a run wrote")
    return model.eval(), cfg, body


def load_predictor(path: str | Path, camera: CameraConfig):
    """A function from RGB crops (N,S,S,3) uint8 to the checkpoint's prediction: pose (N,72), betas, camera_t (N,3).

    Crops of any size are resized to the network's input size; camera_t is the translation of the
    crop camera (focal length and crop size from `camera`), as the gallery and the store use.
    """
    import cv2

    from spin_ray.data.dataset import normalise_crop
    from spin_ray.train.supervision import smplify_terms

    model, cfg, _ = load_regressor(path)
    res = cfg.data.img_res

    def predict(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ModelError(f"predictor takes RGB crops (N, S, S, 3), got {crops.shape}")
        batch = torch.stack([normalise_crop(cv2.resize(c, (res, res), interpolation=cv2.INTER_AREA)) for c in crops])
        with torch.no_grad():
            pose, betas, camera_t = smplify_terms(model(batch), camera)
        return pose.numpy(), betas.numpy(), camera_t.numpy()

    return predict
