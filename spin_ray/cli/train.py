"""`spin-ray train`: a training run from a run config (sync, static, 2d in one process; async on Ray)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from spin_ray.cli.arg_types import non_negative_int
from spin_ray.config import MODES, load_config, with_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the regressor (sync, static, 2d in one process; async on Ray like spin_ray.launch)",
        description="Train as the config says: data, fit store (embedded Redis unless store.url is set), "
                    "checkpoints and TensorBoard scalars under output_dir, then a held-out evaluation and a "
                    "PNG report. Mode async runs on the Ray pipeline, exactly as python -m spin_ray.launch CONFIG.",
    )
    parser.add_argument("config", type=Path, help="run config YAML (see configs/)")
    parser.add_argument("--mode", choices=MODES, default=None, help="override train.mode")
    parser.add_argument("--steps", type=non_negative_int, default=None, help="override train.steps")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue from this checkpoint (e.g. OUTPUT_DIR/checkpoints/last.pt)")
    parser.add_argument("--init-static-fits", action="store_true",
                        help="fit datasets without stored fits from the mean pose before training")
    parser.add_argument("--bad-samples", choices=("skip", "raise"), default=None,
                        help="override data.bad_samples: rows with bad annotations or images are skipped or stop the run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from spin_ray.cli.launch import launch, print_summary
    from spin_ray.train.run import run_training

    cfg = with_overrides(load_config(args.config), train={
        "mode": args.mode, "steps": args.steps, "init_store_from_static_fits": True if args.init_static_fits else None},
        data={"bad_samples": args.bad_samples})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if cfg.train.uses_fitter_pool:
        # async needs the fitter pool: the same run on Ray, as `python -m spin_ray.launch CONFIG`.
        summary = launch(cfg, args.resume, progress=not args.no_progress)
    else:
        summary = asdict(run_training(cfg, resume=args.resume, progress=not args.no_progress))
    print_summary(summary)
    return 0
