"""`spin-ray train`: a single-process training run (modes sync, static, 2d) from a run config."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spin_ray.config import load_config
from spin_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the regressor in one process (modes sync, static, 2d)",
        description="Train as the config says: data, fit store (embedded Redis unless store.url is set), "
                    "checkpoints and TensorBoard scalars under output_dir, then a held-out evaluation and a "
                    "PNG report. Mode async runs on the Ray pipeline instead: python -m spin_ray.launch CONFIG.",
    )
    parser.add_argument("config", type=Path, help="run config YAML (see configs/)")
    parser.add_argument("--mode", choices=("sync", "static", "2d"), default=None, help="override train.mode")
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
    if cfg.train.mode == "async":
        raise ConfigError(f"{args.config}: train.mode is async, which needs the Ray fitter pool: run "
                          f"`python -m spin_ray.launch {args.config}`, or pass --mode sync|static|2d")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run_training(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"{summary.mode}: {summary.steps} steps, loss {summary.first_loss:.3f} -> {summary.final_loss:.3f}, "
          f"{summary.nan_skipped} NaN samples skipped")
    for label, result in (("model", summary.evaluation), ("mean pose", summary.baseline)):
        if result:
            print(f"  {label:<9} on {result['dataset']}: MPJPE {result['mpjpe_mm']:.1f} mm, "
                  f"PA-MPJPE {result['pa_mpjpe_mm']:.1f} mm, PVE {result['pve_mm']:.1f} mm")
    print(f"checkpoint {summary.checkpoint}" + (f", report {summary.report}" if summary.report else ""))
    return 0
