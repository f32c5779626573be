"""`spin-ray synth`: generate (or find cached) synthetic SPIN-format datasets, or draw a preview grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from spin_ray.cli.arg_types import non_negative_int
from spin_ray.config import RunConfig, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `synth` to the spin-ray parser."""
    synth = subparsers.add_parser(
        "synth", help="generate the synthetic datasets (synth-3d, synth-itw, synth-test), cached by settings"
    )
    synth.add_argument("--config", type=Path, default=None, help="run config YAML (default: built-in defaults)")
    synth.add_argument("--out", type=Path, default=None, help="cache folder (default: synth.cache_dir or <cache_dir>/synth)")
    synth.add_argument("--sizes", default=None, metavar="SPLIT=N,...",
                       help="split sizes, e.g. synth-3d=1000,synth-itw=1000,synth-test=200 (others from the config)")
    synth.add_argument("--seed", type=non_negative_int, default=None, help="seed of the synthetic data")
    synth.add_argument("--workers", type=non_negative_int, default=None, help="generator processes (0: every core)")
    synth.add_argument("--preview", type=Path, default=None, metavar="PNG",
                       help="only draw a grid of samples with their keypoints to this image file")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from spin_ray.config import with_overrides
    from spin_ray.data.synth import ensure_synthetic_data, parse_sizes, write_preview

    cfg = load_config(args.config) if args.config is not None else RunConfig()
    sizes = None if args.sizes is None else {**cfg.synth.sizes, **parse_sizes(args.sizes)}
    cfg = with_overrides(cfg, synth={"sizes": sizes, "seed": args.seed, "workers": args.workers,
                                     "cache_dir": None if args.out is None else str(args.out)})
    if args.preview is not None:
        print(write_preview(cfg, args.preview))
        return 0
    paths = ensure_synthetic_data(cfg, progress=not args.quiet)
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"image root: {next(iter(paths.values())).parent}")
    return 0
