"""`spin-ray fit`: SMPLify over every sample of a SPIN-format dataset, by the Ray fitter pool into the fit store.

The pool (pipeline/dataset_fit.py) writes each fit with keep-best as soon as it is found and sends
only the rows that have no stored fit (or, with --refit-above, a worse one), so a fit that was killed
finishes when the same command runs again. Without --store the fits go to an embedded Redis under
--output-dir/redis, which the next run finds again. `--local` is the old single-process path: one
process fits everything and writes SPIN's static-fits file (N, 82) with its errors beside it.

Rows with bad annotations (data/row_checks.py) are refused (data.bad_samples: raise) or not fitted
(skip): no fit is stored for them, and in a `--local` file their rows and errors are NaN ("no fit"),
so `spin-ray store import` leaves them out and nothing mistakes them for a fitted zero pose.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from spin_ray.cli.arg_types import non_negative_float, non_negative_int, path_with_suffix, positive_int
from spin_ray.config import RECIPES, RunConfig, StoreConfig, load_config, with_overrides, with_store_url

_DEFAULT_NAMESPACE = StoreConfig().namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fit` subcommand."""
    parser = subparsers.add_parser(
        "fit", help="fit a SPIN-format dataset's keypoints (Ray fitter pool into the fit store, resumable; or --local)",
        description="Fit every sample of a SPIN-format .npz with SMPLify from the mean pose, given fits (--init) or "
                    "a trained network's predictions (--checkpoint). By default a pool of Ray fitter actors writes "
                    "each fit to the fit store (--store URL, else an embedded Redis under --output-dir) with "
                    "keep-best as it is found; run the same command again after a stop and it fits only what is "
                    "missing. --local fits in this process and writes SPIN's static-fits file (N, 82) and "
                    "<out>.errors.npy. Rows with bad annotations are refused or skipped as data.bad_samples says.",
    )
    parser.add_argument("dataset", type=Path, help="SPIN-format dataset .npz (imgname, center, scale, part, ...)")
    parser.add_argument("--out", type=path_with_suffix(".npy"), default=None,
                        help="static-fits .npy to write ('.npy' is added to a name without a suffix); needed by "
                             "--local, else the store's fits are exported there at the end. Without --store and "
                             "--namespace it means --local, as before the pool existed")
    parser.add_argument("--local", action="store_true", help="fit in this process, no Ray and no store (needs --out)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="redis:// or rediss:// URL of the fit store (default: the config's store.url or "
                             "store.url_env, else $SPIN_RAY_REDIS_URL, else an embedded Redis under --output-dir/redis)")
    parser.add_argument("--namespace", default=None, help=f"fit-store namespace (default: {_DEFAULT_NAMESPACE!r})")
    parser.add_argument("--dataset-name", "--name", dest="name", default=None,
                        help="the dataset's name in the store (default: the .npz's stem); a name is bound to its "
                             "dataset's content, so another dataset under a taken name is refused")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where an embedded store keeps its data (default: outputs/fit-NAMESPACE)")
    parser.add_argument("--fitters", type=positive_int, default=None, help="fitter actors (default: pipeline.num_fitters)")
    parser.add_argument("--fitter-gpus", type=non_negative_float, default=None,
                        help="GPUs per fitter actor, fractions below 1 allowed (default: pipeline.fitter_num_gpus)")
    parser.add_argument("--refit-above", type=non_negative_float, default=None, metavar="E",
                        help="also fit rows whose stored error is above E (keep-best keeps the better fit)")
    parser.add_argument("--config", type=Path, default=None, help="run config (default: the embedded default)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder the dataset's imgname paths are relative to (default: the .npz's folder); "
                             "image sizes are read from it to check that each person box overlaps its image")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init", type=Path, default=None, help="start from these (N, 82) fits instead of the mean pose")
    start.add_argument("--checkpoint", type=Path, default=None,
                       help="start from this trained checkpoint's predictions on each canonical crop")
    parser.add_argument("--iterations", type=non_negative_int, default=None,
                        help="Adam iterations of each stage of the recipe: spin's camera and body stages, staged's "
                             "camera stage and each body step, multistart's screening stages and each refinement "
                             "step (default: the config's fitting.* iterations)")
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="fitting recipe (default: multistart from the mean pose, staged from --init or "
                             "--checkpoint; each measured better than spin, the paper's SMPLify, from such starts at "
                             "under 2x its cost: benchmarks/RESULTS.md, 'Fit quality')")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                        help="each Adam iteration one torch.compile program: 1.4-2.8x the eager fits/s after a "
                             "compile of 15-100 s in each new process (default: fitting.compiled, auto: compiled "
                             "where a process fits at least fitting.compile_min_samples, 20,000); --no-compiled fits "
                             "on the eager stages (spin: SPIN's SMPLify to the bit)")
    parser.add_argument("--limit", type=positive_int, default=None, help="fit only the first N samples")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="samples fitted together, per request to a fitter (default: fitting.batch_size, 256; "
                             "fits/s per batch size: benchmarks/RESULTS.md, 'SMPLify')")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads of this process")
    parser.add_argument("--bad-samples", choices=("skip", "raise"), default=None,
                        help="rows with bad annotations: skip them or stop (default: data.bad_samples, skip)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_fit)


def default_recipe(args: argparse.Namespace) -> str:
    """The recipe for the start: multistart from the mean pose (a far start), staged from given fits or a network."""
    return "staged" if args.init is not None or args.checkpoint is not None else "multistart"


def _config(args: argparse.Namespace) -> RunConfig:
    from spin_ray.fitting.recipes import iteration_overrides
    from spin_ray.store.server import url_override

    cfg = load_config(args.config) if args.config else RunConfig()
    recipe = args.recipe or default_recipe(args)
    # As `spin-ray store ...` does: a job on a cluster names its Redis in the environment.
    url = url_override(args.store, cfg.store)
    iterations = {} if args.iterations is None else iteration_overrides(recipe, args.iterations)
    fitting = {"recipe": recipe, "batch_size": args.batch_size, "compiled": args.compiled, **iterations}
    return with_overrides(cfg, data={"bad_samples": args.bad_samples}, fitting=fitting,
                          store={"url": url, "namespace": args.namespace})


def _prepare(args: argparse.Namespace, cfg: RunConfig):
    """(the dataset fit: keypoints, usable rows, starts; the body model) from the flags."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.data.identity import dataset_fingerprint
    from spin_ray.data.row_checks import check_rows, image_sizes
    from spin_ray.data.spin_format import load_spin_npz
    from spin_ray.errors import InputError
    from spin_ray.fitting.static_fits import canonical_crop_keypoints
    from spin_ray.model.mean_params import mean_pose_axis_angle
    from spin_ray.pipeline.dataset_fit import DatasetFit
    from spin_ray.store.files import read_npy_fits

    root = args.image_root if args.image_root is not None else args.dataset.parent
    data = load_spin_npz(args.dataset, image_root=root, name=args.name, given_by="the DATASET argument")
    if len(data) == 0:
        raise InputError(f"{args.dataset}: nothing to fit, the dataset has no samples")
    fingerprint = dataset_fingerprint(data)  # of the whole file: --limit fits its first rows, not another dataset
    data = data.head(len(data) if args.limit is None else args.limit)
    n = len(data)
    sizes = image_sizes(data)
    unknown = int(np.isnan(sizes).any(axis=1).sum())
    if unknown:
        fix = "check --image-root" if args.image_root is not None else "give --image-root"
        print(f"note: {unknown} of {n} images not found under {root}: their boxes are checked only against the "
              f"image's top-left corner ({fix} to check them fully)", file=sys.stderr)
    usable = check_rows(data, sizes).enforce(cfg.data.bad_samples, report=lambda m: print(f"warning: {m}",
                                                                                          file=sys.stderr))
    if not usable.any():
        raise InputError(f"{args.dataset}: nothing to fit, all {n} selected rows have bad annotations "
                         "(see the warning above)")
    keypoints = canonical_crop_keypoints(data.keypoints49(), data.center, data.scale, cfg.camera.crop_size)
    body = BodyModel.from_config(cfg.body)
    mean_pose, mean_betas = (t.numpy() for t in mean_pose_axis_angle(cfg))
    pose, betas, step = mean_pose, mean_betas, 0
    if args.init is not None:
        table, _ = read_npy_fits(args.init, errors=float("inf"))
        if len(table) < n:
            raise InputError(f"--init {args.init} has {len(table)} rows, the dataset needs {n}")
        broken = usable & ~np.isfinite(table[:n, :72 + body.num_betas]).all(axis=1)
        if broken.any():
            raise InputError(f"--init {args.init} row {int(np.flatnonzero(broken)[0])} holds NaN or inf "
                             f"({int(broken.sum())} such rows to fit); give fits for every row, or no --init")
        pose, betas = table[:n, :72], table[:n, 72:72 + body.num_betas]
    elif args.checkpoint is not None:
        pose, betas, step, missed = network_starts(args.checkpoint, np.flatnonzero(usable), args.dataset, root,
                                                   data.name, body.identity, cfg.fitting.batch_size)
        pose, betas = pose[:n], betas[:n]  # --limit: the checkpoint saw the first n rows only
        unpredicted = np.isnan(pose).any(axis=1) | np.isnan(betas).any(axis=1)
        pose[unpredicted], betas[unpredicted] = mean_pose[0], mean_betas[0]
        if missed:
            print(f"note: {missed} rows have no readable image under {root}: they start from the mean pose",
                  file=sys.stderr)
    return DatasetFit(data.name, keypoints, usable, pose, betas, step, fingerprint, str(args.dataset)), body


def network_starts(checkpoint: Path, job_rows: np.ndarray, npz: Path, image_root: Path, name: str,
                   body_identity: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A trained checkpoint's predictions on the canonical crops of `job_rows`: (pose, betas, step, rows missed).

    pose (N, 72) and betas (N, B) cover every dataset row; rows not predicted (not in job_rows, or
    their image cannot be read) hold NaN, for the caller to start from the mean pose.
    """
    from tqdm import tqdm

    from spin_ray.config import DataConfig
    from spin_ray.data.dataset import SpinImageDataset
    from spin_ray.data.spin_format import load_spin_npz
    from spin_ray.errors import InputError
    from spin_ray.train.checkpoint import load_checkpoint, load_regressor
    from spin_ray.train.supervision import smplify_terms

    model, ckpt_cfg, ckpt_body = load_regressor(checkpoint)
    if ckpt_body.identity != body_identity:
        raise InputError(f"--checkpoint {checkpoint} was trained with body model {ckpt_body.identity}, but the fit "
                         f"uses {body_identity}: fit with the checkpoint's config (--config) or another checkpoint")
    step = int(load_checkpoint(checkpoint).get("step", 0))
    images = SpinImageDataset(load_spin_npz(npz, image_root, name=name),
                              DataConfig(img_res=ckpt_cfg.data.img_res, bad_samples="skip"), train=False)
    n = len(images)
    pose = np.full((n, 72), np.nan, np.float32)
    betas = np.full((n, ckpt_body.num_betas), np.nan, np.float32)
    for begin in tqdm(range(0, len(job_rows), batch_size), desc="predicting", unit="batch", leave=False):
        items = [images[int(r)] for r in job_rows[begin:begin + batch_size]]
        # A row whose image cannot be read comes back as the next readable row: leave it unpredicted.
        items = [(int(r), item) for r, item in zip(job_rows[begin:begin + batch_size], items)
                 if int(item["index"]) == int(r)]
        if not items:
            continue
        with torch.no_grad():
            out = model(torch.stack([item["img"] for _, item in items]))
        rows = np.array([r for r, _ in items])
        # No camera: each row's start camera comes from its keypoints, as with --init.
        pose[rows], betas[rows], _ = (t.numpy() for t in smplify_terms(out, ckpt_cfg.camera))
    missed = int(np.isnan(pose[job_rows]).any(axis=1).sum())
    return pose, betas, step, missed


def _fit(args: argparse.Namespace) -> int:
    from spin_ray.cli.outputs import writable_output
    from spin_ray.errors import InputError

    torch.set_num_threads(args.threads)
    local = args.local or (args.out is not None and args.store is None and args.namespace is None)
    if local and args.out is None:
        raise InputError("--local writes SPIN's static-fits file: give it with --out FITS.npy")
    if local and (args.fitters or args.fitter_gpus is not None or args.refit_above is not None):
        raise InputError("--fitters, --fitter-gpus and --refit-above are for the fitter pool: leave out --local")
    if local and args.name is not None:
        raise InputError("--dataset-name names the dataset in the fit store; a local fit writes only --out (give "
                         "--store or --namespace to fit into the store)")
    if not local:
        from spin_ray.store.records import check_name

        check_name("dataset", args.name or args.dataset.stem)  # before the store is reached or anything is fitted
    cfg = _config(args)
    if args.out is not None:
        writable_output(args.out, "--out")  # before the fitting: hours of fits must not be lost to a bad folder
    job, body = _prepare(args, cfg)
    return _fit_local(args, cfg, job, body) if local else _fit_into_store(args, cfg, job, body)


def _fit_local(args: argparse.Namespace, cfg: RunConfig, job, body) -> int:
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.static_fits import fit_static
    from spin_ray.store.files import errors_path_for

    if cfg.device != "cpu":
        print(f"note: --local fits on this process's CPU; the config's device: {cfg.device} is the trainer's (to fit "
              "on GPUs, leave out --local: the fitter pool places fitters on GPUs with --fitter-gpus G)",
              file=sys.stderr)
    cfg = resolved_compiled(cfg, int(np.count_nonzero(job.usable)))
    fits = fit_static(body, load_pose_prior(cfg.fitting), torch.from_numpy(job.keypoints),
                      torch.from_numpy(np.asarray(job.init_pose, np.float32)),
                      torch.from_numpy(np.asarray(job.init_betas, np.float32)), cfg.fitting, cfg.camera,
                      progress=not args.no_progress, fit_rows=job.usable)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, fits.table())
    np.save(errors_path_for(args.out), np.where(fits.failed | ~fits.fitted, np.nan, fits.error))
    n = len(job.usable)
    ok = fits.fitted & ~fits.failed
    valid = ok & (fits.error < cfg.fitting.valid_error_threshold)
    median = float(np.median(fits.error[ok])) if ok.any() else float("nan")
    skipped = f", {int((~fits.fitted).sum())} skipped (bad annotations)" if not fits.fitted.all() else ""
    rejected = int((ok & ~valid).sum())
    print(f"fitted {int(fits.fitted.sum())} of {n} samples of {args.dataset.name} ({stages(cfg)}): "
          f"{int(fits.failed.sum())} failed{skipped}, median error {median:.2f}, {int(valid.sum())} valid "
          f"(< {cfg.fitting.valid_error_threshold:g}), {rejected} rejected "
          "(error above it: training will not use them)")
    print(f"wrote {args.out} and {errors_path_for(args.out)}")
    return 0


def _fit_into_store(args: argparse.Namespace, cfg: RunConfig, job, body) -> int:
    from spin_ray.pipeline.session import ray_session, stop_on_signals
    from spin_ray.pipeline.dataset_fit import dataset_fit_config, fit_dataset
    from spin_ray.pipeline.pool import FitterPool
    from spin_ray.redact import redact_url
    from spin_ray.store.fit_store import FitStore
    from spin_ray.store.server import resolve_url, store_url

    namespace = cfg.store.namespace
    redis_dir = (args.output_dir or Path("outputs") / f"fit-{namespace}") / "redis"
    embedded = resolve_url(cfg.store) is None
    where = f"the embedded store in {redis_dir}" if embedded else f"namespace {namespace!r} of the store"
    pool_cfg = dataset_fit_config(cfg, args.fitters, args.fitter_gpus)
    share = -(-int(np.count_nonzero(job.usable)) // pool_cfg.pipeline.num_fitters)  # a fitter's rows, at most
    pool_cfg, cfg = resolved_compiled(pool_cfg, share), resolved_compiled(cfg, share)
    received: list[int] = []
    try:
        with stop_on_signals() as received, store_url(cfg.store, redis_dir) as url:
            if embedded:
                print(f"fit store: embedded Redis at {redact_url(url)}, data in {redis_dir} (kept for the next run)",
                      file=sys.stderr, flush=True)
            run_cfg = with_store_url(pool_cfg, url)
            with FitStore.from_config(run_cfg.store, body.identity, url=url) as store:
                store.bind_dataset(job.dataset, job.fingerprint, job.source)  # refused before Ray starts
                with ray_session(run_cfg):
                    summary = fit_dataset(lambda: FitterPool(run_cfg, store.address, name=f"fit-{job.dataset}"),
                                          store, body, job, run_cfg, args.refit_above, progress=not args.no_progress)
                    exported = store.export_npy(job.dataset, args.out, len(job.usable)) if args.out else None
    except KeyboardInterrupt as stopped:
        signum = received[0] if received else getattr(stopped, "signum", signal.SIGINT)
        print(f"spin-ray fit: stopped by {signal.Signals(signum).name}; every fit found so far is in {where}; run "
              "the same command again to fit the rest", file=sys.stderr)
        return 128 + signum
    _print_summary(summary, cfg, where)
    if exported is not None:
        print(f"wrote {exported} and {exported.with_name(exported.stem + '.errors.npy')}")
    return 0


def resolved_compiled(cfg: RunConfig, samples_per_process: int) -> RunConfig:
    """cfg with fitting.compiled auto decided for processes that each fit samples_per_process samples."""
    from spin_ray.fitting.compiled_stage import compiles

    compiled = compiles(cfg.fitting, samples_per_process)
    return cfg.model_copy(update={"fitting": cfg.fitting.model_copy(update={"compiled": compiled})})


def stages(cfg: RunConfig) -> str:
    """The recipe and how its stages ran (compiled, or eager: fitting.compiled off or TORCH_COMPILE_DISABLE set)."""
    from spin_ray.fitting.compiled_stage import compiling_disabled

    compiled = cfg.fitting.compiled and not compiling_disabled()
    return f"{cfg.fitting.recipe} recipe, {'compiled' if compiled else 'eager'} stages"


def _print_summary(summary, cfg: RunConfig, where: str) -> None:
    s = summary
    skipped = s.rows - s.usable
    retry = s.failed + s.unfinished
    print(f"{s.dataset}: {s.stored_before} of {s.usable} usable rows had a fit already; fitted {s.fitted} of {s.sent} "
          f"sent in {s.seconds:.1f} s ({s.fits_per_s:.1f} fits/s, {s.fitters} fitters, {stages(cfg)}), "
          f"{s.failed} failed, "
          f"{s.written} improved the store" + (f", {s.unfinished} unfinished" if s.unfinished else ""))
    print(f"{s.dataset}: {s.stored_after} of {s.usable} usable rows have a fit in {where}, median error "
          f"{s.median_error:.2f}, {s.valid} valid (< {cfg.fitting.valid_error_threshold:g}), "
          f"{s.stored_after - s.valid} rejected (error above it: training will not use them; "
          "`spin-ray store worst` lists them)"
          + (f"; {skipped} rows skipped (bad annotations)" if skipped else "")
          + (f"; run again to retry the {retry} rows without a fit" if retry else ""))
