"""`spin-ray fit`: offline SMPLify over a SPIN-format dataset, written as SPIN's static fits.

Rows with bad annotations (data/row_checks.py) are refused (data.bad_samples: raise) or not fitted
(skip): their rows of the (N, 82) file are NaN and their errors NaN ("no fit"), so `spin-ray store
import` leaves them out and nothing mistakes them for a fitted zero pose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from spin_ray.cli.arg_types import path_with_suffix, positive_int
from spin_ray.config import RunConfig, load_config, with_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand."""
    parser = subparsers.add_parser(
        "fit", help="fit a SPIN-format dataset's keypoints offline (static fits (N, 82) + errors)",
        description="Fit every sample of a SPIN-format .npz from the mean pose (or from given fits) and "
                    "write SPIN's static-fits file (N, 82) with its errors beside it (<out>.errors.npy). "
                    "Rows with bad annotations are refused or skipped as data.bad_samples says; skipped rows "
                    "are NaN in both files. Import it with `spin-ray store import` to give a fit store its "
                    "first contents.",
    )
    parser.add_argument("dataset", type=Path, help="SPIN-format dataset .npz (imgname, center, scale, part, ...)")
    parser.add_argument("--out", type=path_with_suffix(".npy"), required=True,
                        help="static-fits .npy to write ('.npy' is added to a name without a suffix)")
    parser.add_argument("--config", type=Path, default=None, help="run config (default: the embedded default)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder the dataset's imgname paths are relative to (default: the .npz's folder); "
                             "image sizes are read from it to check that each person box overlaps its image")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these (N, 82) fits instead of the mean pose")
    parser.add_argument("--limit", type=positive_int, default=None, help="fit only the first N samples")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--bad-samples", choices=("skip", "raise"), default=None,
                        help="rows with bad annotations: skip them or stop (default: data.bad_samples, skip)")
    parser.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from spin_ray.body.body_model import BodyModel
    from spin_ray.data.row_checks import check_rows, image_sizes
    from spin_ray.data.spin_format import load_spin_npz
    from spin_ray.errors import InputError
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.static_fits import canonical_crop_keypoints, fit_static
    from spin_ray.model.mean_params import mean_pose_axis_angle
    from spin_ray.store.files import errors_path_for, read_npy_fits

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config) if args.config else RunConfig()
    cfg = with_overrides(cfg, data={"bad_samples": args.bad_samples})
    root = args.image_root if args.image_root is not None else args.dataset.parent
    data = load_spin_npz(args.dataset, image_root=root)
    if len(data) == 0:
        raise InputError(f"{args.dataset}: nothing to fit, the dataset has no samples")
    data = data.head(len(data) if args.limit is None else args.limit)
    n = len(data)
    sizes = image_sizes(data)
    unknown = int(np.isnan(sizes).any(axis=1).sum())
    if unknown:
        print(f"note: {unknown} of {n} images not found under {root}: their boxes are checked only against the "
              "image's top-left corner (give --image-root to check them fully)", file=sys.stderr)
    usable = check_rows(data, sizes).enforce(cfg.data.bad_samples, report=lambda m: print(f"warning: {m}",
                                                                                          file=sys.stderr))
    if not usable.any():
        raise InputError(f"{args.dataset}: nothing to fit, all {n} selected rows have bad annotations "
                         "(see the warning above)")
    keypoints = canonical_crop_keypoints(data.keypoints49(), data.center, data.scale, cfg.camera.crop_size)
    body = BodyModel.from_config(cfg.body)
    prior = load_pose_prior(cfg.fitting)
    if args.init is not None:
        table, _ = read_npy_fits(args.init, errors=float("inf"))
        if len(table) < n:
            raise InputError(f"--init {args.init} has {len(table)} rows, the dataset needs {n}")
        broken = usable & ~np.isfinite(table[:n, :72 + body.num_betas]).all(axis=1)
        if broken.any():
            raise InputError(f"--init {args.init} row {int(np.flatnonzero(broken)[0])} holds NaN or inf "
                             f"({int(broken.sum())} such rows to fit); give fits for every row, or no --init")
        pose, betas = torch.from_numpy(table[:n, :72]), torch.from_numpy(table[:n, 72:72 + body.num_betas])
    else:
        pose, betas = mean_pose_axis_angle(cfg)
    fits = fit_static(body, prior, torch.from_numpy(keypoints), pose, betas, cfg.fitting, cfg.camera,
                      fit_rows=usable)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, fits.table())
    np.save(errors_path_for(args.out), np.where(fits.failed | ~fits.fitted, np.nan, fits.error))
    ok = fits.fitted & ~fits.failed
    valid = ok & (fits.error < cfg.fitting.valid_error_threshold)
    median = float(np.median(fits.error[ok])) if ok.any() else float("nan")
    skipped = f", {int((~fits.fitted).sum())} skipped (bad annotations)" if not fits.fitted.all() else ""
    print(f"fitted {int(fits.fitted.sum())} of {n} samples of {args.dataset.name}: {int(fits.failed.sum())} failed"
          f"{skipped}, median error {median:.2f}, {int(valid.sum())} valid (< {cfg.fitting.valid_error_threshold:g})")
    print(f"wrote {args.out} and {errors_path_for(args.out)}")
    return 0
