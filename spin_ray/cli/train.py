"""`spin-ray train`: a training run from a run config (sync, static, 2d in one process; async on Ray)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spin_ray.config import load_config
from spin_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the regressor (sync, static, 2d in one process; async on Ray like spin_ray.launch)",
        description="Train as the config says: data, fit store (embedded Redis unless store.url is set), "
                    "checkpoints and TensorBoard scalars under output_dir, then a held-out evaluation and a "
                    "PNG report. Mode async runs on the Ray pipeline, exactly as python -m spin_ray.launch CONFIG.",
    )
    parser.add_argument("config", type=Path, help="run config YAML (see configs/)")
    parser.add_argument("--mode", choices=("sync", "async", "static", "2d"), default=None, help="override train.mode")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue from this checkpoint (e.g. OUTPUT_DIR/checkpoints/last.pt)")
    parser.add_argument("--init-static-fits", action="store_true",
                        help="fit datasets without stored fits from the mean pose before training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from spin_ray.train.run import run_training

    cfg = load_config(args.config)
    train = cfg.train
    if args.mode is not None:
        train = train.model_copy(update={"mode": args.mode})
    if args.steps is not None:
        if args.steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {args.steps}")
        train = train.model_copy(update={"steps": args.steps})
    if args.init_static_fits:
        train = train.model_copy(update={"init_store_from_static_fits": True})
    cfg = cfg.model_copy(update={"train": train})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if cfg.train.mode == "async":
        # async needs the fitter pool: the same run on Ray, as `python -m spin_ray.launch CONFIG`.
        from spin_ray.launch import launch, print_summary

        print_summary(launch(cfg, args.resume, progress=not args.no_progress))
        return 0
    summary = run_training(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"{summary.mode}: {summary.steps} steps, loss {summary.first_loss:.3f} -> {summary.final_loss:.3f}, "
          f"{summary.nan_skipped} NaN samples skipped")
    for label, result in (("model", summary.evaluation), ("mean pose", summary.baseline)):
        if result:
            print(f"  {label:<9} on {result['dataset']}: MPJPE {result['mpjpe_mm']:.1f} mm, "
                  f"PA-MPJPE {result['pa_mpjpe_mm']:.1f} mm, PVE {result['pve_mm']:.1f} mm")
    print(f"checkpoint {summary.checkpoint}" + (f", report {summary.report}" if summary.report else ""))
    return 0
