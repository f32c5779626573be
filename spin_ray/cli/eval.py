"""`spin-ray eval`: SPIN's evaluation of a checkpoint (and the mean-pose baseline) on one or more datasets.

MPJPE, PA-MPJPE and PVE (3DPW, H36M protocols 1 and 2), PCK and AUC without and with rigid alignment
(MPI-INF-3DHP), foreground and part segmentation accuracy and F1 (LSP), each where the dataset has
the ground truth it needs; a table per dataset in the paper's layout, every number in --json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from spin_ray.cli.arg_types import positive_int
from spin_ray.config import DatasetEntry, RunConfig, load_config, with_overrides
from spin_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on SPIN-format datasets (MPJPE, PA-MPJPE, PVE, PCK, AUC, segmentation)",
        description="Evaluate a training checkpoint and the mean-pose baseline on SPIN-format evaluation sets as "
                    "SPIN does: MPJPE and PA-MPJPE on 14 joints (H36M regressor, hip-centred), PVE where "
                    "ground-truth SMPL exists (3DPW: gender models from body.model_path_male/female), PCK/AUC "
                    "on the 17 3DHP joints where 3D joints exist, and LSP foreground/part segmentation where "
                    "the dataset names masks (maskname/partname). Prints a table per dataset; --json writes "
                    "every number.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `spin-ray train` (.pt)")
    parser.add_argument("--dataset", required=True, action="append",
                        help="a dataset name from the config (data.datasets, train.heldout, or a synthetic split "
                             "such as synth-test) or the path of a SPIN-format .npz; repeat for several")
    parser.add_argument("--config", type=Path, default=None, help="run config (default: the checkpoint's own)")
    parser.add_argument("--image-root", type=Path, default=None, help="image folder of a .npz path (default: its folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--bad-samples", choices=("skip", "raise"), default=None,
                        help="rows with bad annotations or images: leave them out (counted in the report) or "
                             "stop (default: data.bad_samples of the config)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the mean-pose baseline")
    parser.add_argument("--no-segmentation", action="store_true",
                        help="skip the segmentation scores even where the dataset has masks (they render every row)")
    parser.set_defaults(func=_eval)


def resolve_dataset(spec: str, cfg: RunConfig, image_root: Path | None = None) -> DatasetEntry:
    """A dataset named in the config, a synthetic split, or a .npz path."""
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise ConfigError(f"--dataset {spec}: no such file")
        return DatasetEntry(name=path.stem, npz=path, image_root=image_root or path.parent)
    entries = list(cfg.data.datasets) + ([cfg.train.heldout] if cfg.train.heldout is not None else [])
    for entry in entries:
        if entry.name == spec:
            return entry
    from spin_ray.config import SYNTH_SPLITS
    if spec in SYNTH_SPLITS:
        from spin_ray.data.synth import ensure_synthetic_data
        npz = ensure_synthetic_data(cfg)[spec]
        return DatasetEntry(name=spec, npz=npz, image_root=npz.parent)
    known = [e.name for e in entries] + list(SYNTH_SPLITS)
    raise ConfigError(f"--dataset {spec!r} is neither a .npz path nor a dataset of the config (known: {known})")


def _eval(args: argparse.Namespace) -> int:
    from spin_ray.body.body_model import BodyModel
    from spin_ray.eval.evaluate import (
        EvalBodies,
        evaluate,
        evaluation_dataset,
        mean_params_predictor,
        model_predictor,
    )
    from spin_ray.eval.table import format_table
    from spin_ray.train.checkpoint import checkpoint_config, checkpoint_network, load_checkpoint

    payload = load_checkpoint(args.checkpoint)
    cfg = load_config(args.config) if args.config else checkpoint_config(payload, args.checkpoint)
    cfg = with_overrides(cfg, data={"bad_samples": args.bad_samples})
    body = BodyModel.from_config(cfg.body)
    against = f"--config {args.config}" if args.config else "its saved config"
    model = checkpoint_network(payload, cfg, body, str(args.checkpoint), against,
                               "evaluate with the config the checkpoint was trained with (leave out --config)")
    bodies = EvalBodies.from_config(cfg.body, body)
    predictors = [("model", model_predictor(model))] + ([] if args.no_baseline else
                                                         [("mean-pose", mean_params_predictor(model))])
    results = []
    for spec in args.dataset:
        entry = resolve_dataset(spec, cfg, args.image_root)
        dataset = evaluation_dataset(entry.npz, entry.image_root, cfg.data.img_res, name=entry.name,
                                     bad_samples=cfg.data.bad_samples)
        with torch.no_grad():
            results += [evaluate(predict, bodies, dataset, args.batch_size, args.limit, name=name,
                                 segmentation=not args.no_segmentation, camera=cfg.camera)
                        for name, predict in predictors]
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"checkpoint": str(args.checkpoint), "step": int(payload.get("step", 0)),
               "results": [_json_safe(r.summary()) for r in results]}
        args.json.write_text(json.dumps(out, indent=2, allow_nan=False))
        print(f"wrote {args.json}")
    return 0


def _json_safe(value):
    """NaN (a metric without ground truth) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
