"""`spin-ray export-checkpoint`: a spin-ray network in another project's checkpoint layout (SPIN's today)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export-checkpoint` subcommand."""
    parser = subparsers.add_parser(
        "export-checkpoint", help="write a checkpoint's network in SPIN's model_checkpoint.pt layout",
        description="Write the network of a spin-ray checkpoint (backbone resnet50, 224 px, 10 betas, 3 IEF "
                    "iterations) in SPIN's layout: {'model': state dict in SPIN's key names with the init_pose, "
                    "init_shape and init_cam buffers, 'epoch', 'batch_idx', 'batch_size', 'total_step_count'}, "
                    "so SPIN's demo.py and eval.py load it. Other networks are refused; nothing is written then.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `spin-ray train` (.pt)")
    parser.add_argument("--format", choices=("spin",), required=True, help="the layout to write (spin: SPIN's)")
    parser.add_argument("--out", type=Path, required=True, help="file to write, e.g. model_checkpoint.pt")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from spin_ray.train.checkpoint import export_spin_checkpoint

    out = export_spin_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} (SPIN's layout: load it with SPIN's demo.py --checkpoint {out})")
    return 0
