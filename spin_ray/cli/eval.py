"""`spin-ray eval`: MPJPE, PA-MPJPE and PVE of a checkpoint (and the mean-pose baseline) on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spin_ray.cli.arg_types import positive_int
from spin_ray.config import DatasetEntry, RunConfig, load_config, with_overrides
from spin_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on a SPIN-format dataset (MPJPE, PA-MPJPE, PVE in mm)",
        description="Evaluate a training checkpoint and the mean-pose baseline on a SPIN-format evaluation set "
                    "(14 LSP joints via the body model's H36M regressor, pelvis-centred; PVE where ground-truth "
                    "SMPL exists). Prints a table; --json writes the numbers.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `spin-ray train` (.pt)")
    parser.add_argument("--dataset", required=True,
                        help="a dataset name from the config (data.datasets, train.heldout, or a synthetic split "
                             "such as synth-test) or the path of a SPIN-format .npz")
    parser.add_argument("--config", type=Path, default=None, help="run config (default: the checkpoint's own)")
    parser.add_argument("--image-root", type=Path, default=None, help="image folder of a .npz path (default: its folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--bad-samples", choices=("skip", "raise"), default=None,
                        help="rows with bad annotations or images: leave them out (counted in the report) or "
                             "stop (default: data.bad_samples of the config)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the mean-pose baseline")
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
    from spin_ray.errors import ModelError
    from spin_ray.eval.evaluate import (
        evaluate,
        evaluation_dataset,
        format_table,
        mean_params_predictor,
        model_predictor,
    )
    from spin_ray.model.hmr import HMR
    from spin_ray.train.checkpoint import checkpoint_config, load_checkpoint

    payload = load_checkpoint(args.checkpoint)
    cfg = load_config(args.config) if args.config else checkpoint_config(payload, args.checkpoint)
    cfg = with_overrides(cfg, data={"bad_samples": args.bad_samples})
    body = BodyModel.from_config(cfg.body)
    saved_body = payload.get("identity", {}).get("body_model")
    if saved_body is not None and saved_body != body.identity:
        raise ModelError(f"{args.checkpoint} was trained with body model {saved_body}, the config gives "
                         f"{body.identity}: evaluate with the config the checkpoint was trained with")
    model = HMR.from_config(cfg.network, cfg.body.num_betas)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ModelError(f"{args.checkpoint}: weights do not fit the configured network: {err}") from None
    entry = resolve_dataset(args.dataset, cfg, args.image_root)
    dataset = evaluation_dataset(entry.npz, entry.image_root, cfg.data.img_res, name=entry.name,
                                 bad_samples=cfg.data.bad_samples)
    with torch.no_grad():
        results = [evaluate(model_predictor(model), body, dataset, args.batch_size, args.limit, name="model")]
        if not args.no_baseline:
            results.append(evaluate(mean_params_predictor(model), body, dataset, args.batch_size, args.limit,
                                    name="mean-pose"))
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"checkpoint": str(args.checkpoint), "step": int(payload.get("step", 0)),
               "results": [r.summary() for r in results]}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0
