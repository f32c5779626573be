"""`spin-ray fit`: offline SMPLify over a SPIN-format dataset, written as SPIN's static fits."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from spin_ray.config import RunConfig, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand."""
    parser = subparsers.add_parser(
        "fit", help="fit a SPIN-format dataset's keypoints offline (static fits (N, 82) + errors)",
        description="Fit every sample of a SPIN-format .npz from the mean pose (or from given fits) and "
                    "write SPIN's static-fits file (N, 82) with its errors beside it (<out>.errors.npy). "
                    "Import it with `spin-ray store import` to give a fit store its first contents.",
    )
    parser.add_argument("dataset", type=Path, help="SPIN-format dataset .npz (imgname, center, scale, part, ...)")
    parser.add_argument("--out", type=Path, required=True, help="static-fits .npy to write")
    parser.add_argument("--config", type=Path, default=None, help="run config (default: the embedded default)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these (N, 82) fits instead of the mean pose")
    parser.add_argument("--limit", type=int, default=None, help="fit only the first N samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from spin_ray.body.body_model import BodyModel
    from spin_ray.data.spin_format import load_spin_npz
    from spin_ray.errors import InputError
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.static_fits import canonical_crop_keypoints, fit_static
    from spin_ray.model.mean_params import mean_pose_axis_angle
    from spin_ray.store.files import errors_path_for, read_npy_fits

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config) if args.config else RunConfig()
    data = load_spin_npz(args.dataset, image_root=args.dataset.parent)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    if n <= 0:
        raise InputError(f"{args.dataset}: nothing to fit (--limit {args.limit}, {len(data)} samples)")
    keypoints = canonical_crop_keypoints(
        data.keypoints49()[:n], data.center[:n], data.scale[:n], cfg.camera.crop_size
    )
    body = BodyModel.from_config(cfg.body)
    prior = load_pose_prior(cfg.fitting)
    if args.init is not None:
        table, _ = read_npy_fits(args.init, errors=float("inf"))
        if len(table) < n:
            raise InputError(f"--init {args.init} has {len(table)} rows, the dataset needs {n}")
        pose, betas = torch.from_numpy(table[:n, :72]), torch.from_numpy(table[:n, 72:72 + body.num_betas])
    else:
        pose, betas = mean_pose_axis_angle(cfg)
    fits = fit_static(body, prior, torch.from_numpy(keypoints), pose, betas, cfg.fitting, cfg.camera)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, fits.table())
    np.save(errors_path_for(args.out), np.where(fits.failed, np.nan, fits.error))
    ok = ~fits.failed
    valid = ok & (fits.error < cfg.fitting.valid_error_threshold)
    median = float(np.median(fits.error[ok])) if ok.any() else float("nan")
    print(f"fitted {n} samples of {args.dataset.name}: {int(fits.failed.sum())} failed, median error "
          f"{median:.2f}, {valid.mean():.1%} valid (< {cfg.fitting.valid_error_threshold:g})")
    print(f"wrote {args.out} and {errors_path_for(args.out)}")
    return 0
