"""`spin-ray store ...`: serve an embedded Redis, and curate a namespace's fits (stats, worst, filter, plot, gallery).

Import, export and check live in `cli/store_admin.py`.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from spin_ray.config import FittingConfig, StoreConfig
from spin_ray.curate.plots import plot_fit_errors
from spin_ray.cli.arg_types import non_negative_float, positive_float, positive_int, tcp_port
from spin_ray.cli.store_common import add_location_flags, data_locations, open_store
from spin_ray.errors import FitStoreError, FitStoreUnavailable
from spin_ray.store.server import URL_ENV

PASSWORD_ENV = "SPIN_RAY_REDIS_PASSWORD"
_DEFAULT_THRESHOLD = FittingConfig().valid_error_threshold
_DEFAULT_STORE = StoreConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `store` and its subcommands to the spin-ray parser."""
    from spin_ray.cli import store_admin

    store = subparsers.add_parser("store", help="the Redis fit store: serve, inspect, curate, import/export")
    sub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)

    serve = sub.add_parser("serve", help="run an embedded redis-server (127.0.0.1, AOF) until Ctrl-C")
    serve.add_argument("--data-dir", type=Path, default=Path("outputs/redis"), help="folder of the AOF and log")
    serve.add_argument("--port", type=tcp_port, default=None, help="port on 127.0.0.1 (default: a free one, never 6379)")
    serve.add_argument(
        "--password-env", default=None, metavar="VAR",
        help=f"require the password held in this environment variable (e.g. {PASSWORD_ENV}); never typed on the command line",
    )  # fmt: skip
    serve.set_defaults(func=_serve)

    def connected(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--url", default=None, help=f"redis:// or rediss:// URL (default: ${URL_ENV})")
        parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                            help="an embedded store's folder (spin-ray fit's OUTPUT_DIR/redis): its server is started "
                                 "for this command and stopped after, instead of --url")
        parser.add_argument("--namespace", default=_DEFAULT_STORE.namespace, help="fit-store namespace (one per run)")
        parser.add_argument(
            "--timeout", type=positive_float, default=_DEFAULT_STORE.connect_timeout_s, help="seconds to keep trying to connect"
        )
        return parser

    stats = connected("stats", "counts per dataset and source, error quantiles, improvements over steps")
    stats.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    stats.add_argument("--threshold", type=positive_float, default=_DEFAULT_THRESHOLD, help="valid-fit error threshold")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=_stats)

    worst = connected("worst", "samples with the highest errors, by dataset, and how many are above the threshold")
    worst.add_argument("--k", type=positive_int, default=20, help="samples per dataset")
    worst.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    worst.add_argument("--threshold", type=positive_float, default=_DEFAULT_THRESHOLD, help="valid-fit error threshold")
    worst.set_defaults(func=_worst)

    filt = connected("filter", "write the ids of samples to keep (error <= --max-error, not in --exclude) as CSV")
    filt.add_argument("--max-error", type=non_negative_float, default=None, help="keep samples whose fit error is at most this")
    filt.add_argument(
        "--exclude", type=Path, default=None, metavar="FILE",
        help="ids file (CSV dataset,index, e.g. the gallery's download) of samples to drop",
    )  # fmt: skip
    filt.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    filt.add_argument("--out", type=Path, default=None, help="CSV file dataset,index,error (default: stdout)")
    filt.set_defaults(func=_filter)

    store_admin.register(sub, connected)

    plot = connected("plot", "PNG: histogram of errors per dataset and mean error over training steps")
    plot.add_argument("--out", type=Path, default=Path("fit_errors.png"), help="PNG file to write")
    plot.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    plot.add_argument("--threshold", type=positive_float, default=_DEFAULT_THRESHOLD, help="valid-fit threshold line")
    plot.set_defaults(func=_plot)

    gallery = connected("gallery", "static HTML page of fits drawn over their images: sort, filter, mark ids to exclude")
    which = gallery.add_mutually_exclusive_group()
    which.add_argument("--worst", type=positive_int, default=None, metavar="K", help="the K highest-error fits per dataset (default 24)")
    which.add_argument("--best", type=positive_int, default=None, metavar="K", help="the K lowest-error fits per dataset")
    which.add_argument("--ids", type=Path, default=None, metavar="FILE", help="ids file (CSV dataset,index) of samples to show")
    gallery.add_argument("--dataset", action="append", help="only this dataset (repeatable; with --worst/--best)")
    gallery.add_argument("--out", type=Path, default=Path("gallery"), help="folder for index.html and images/")
    gallery.add_argument("--threshold", type=positive_float, default=_DEFAULT_THRESHOLD, help="valid-fit threshold (error colours)")
    gallery.add_argument(
        "--checkpoint", type=Path, default=None, help="training checkpoint: show the network's prediction beside the fit"
    )
    add_location_flags(gallery)
    gallery.set_defaults(func=_gallery)


def _datasets(store, wanted: list[str] | None) -> list[str]:
    names = wanted or store.datasets()
    if not names:
        raise FitStoreError(f"namespace {store.namespace!r} holds no fits yet (wrong --namespace or --url?)")
    return names


# -- subcommands ----------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from spin_ray.store.server import EmbeddedRedis

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            raise FitStoreError(f"--password-env {args.password_env}: that environment variable is empty or unset")

    def on_sigterm(signum, frame):  # a service manager's stop should unwind like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Python leaves SIGINT alone when it starts with SIGINT ignored (a job started with `&` by a
    # non-interactive shell): install the handler explicitly so Ctrl-C or kill -INT always stops.
    signal.signal(signal.SIGINT, on_sigterm)
    # The whole block is inside the try: a signal may land between any two lines, and the `with`
    # stops the server on the way out wherever it lands.
    try:
        with EmbeddedRedis(args.data_dir, port=args.port, password=password) as server:
            # Never print the password: show the variable that holds it instead.
            shown = server.url if password is None else f"redis://:${args.password_env}@127.0.0.1:{server.port}/0"
            print(f"redis-server (pid {server.pid}) serving {shown} with data in {server.data_dir}", flush=True)
            print(f"export {URL_ENV}={shown}", flush=True)
            status = server.wait()
    except KeyboardInterrupt:
        print("stopped redis-server (AOF flushed)", flush=True)
        return 0
    raise FitStoreError(f"redis-server exited on its own with status {status}; see {args.data_dir / 'redis.log'}")


def _stats(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stats = store.stats(threshold=args.threshold, datasets=_datasets(store, args.dataset))
    if args.json:
        print(stats.model_dump_json(indent=2))
        return 0
    meta = stats.meta
    print(f"namespace {stats.namespace}" + (f" (schema {meta.schema_version}, body model {meta.body_model_hash})" if meta else ""))
    for ds in stats.datasets:
        sources = ", ".join(f"{k} {v}" for k, v in sorted(ds.by_source.items()))
        share = 100.0 * ds.above_threshold / ds.count if ds.count else 0.0
        print(f"\n{ds.dataset}: {ds.count} fits ({sources}); {ds.total_updates} writes in all")
        print("  error " + "  ".join(f"{k} {v:.3g}" for k, v in ds.error_quantiles.items()))
        print(f"  above threshold {ds.threshold:g}: {ds.above_threshold} ({share:.1f} %)")
        for problem in ds.problems:
            print(f"  DAMAGED: {problem}")
        if ds.improvements_by_step:
            print("  fits written over training steps (step range: writes, mean error):")
            for lo, hi, n, mean in _bin_steps(ds.improvements_by_step):
                print(f"    {lo:>8}-{hi:<8} {n:>8}  {mean:.3g}")
    print("\n" + integrity_note(stats))
    return 0


def integrity_note(stats) -> str:
    """One line on the namespace's health from what stats read cheaply (bad index errors, the last check)."""
    poisoned = sum(ds.bad_errors for ds in stats.datasets)
    last = stats.last_check
    if poisoned:
        return f"integrity: CORRUPT: {poisoned} fit(s) have a negative or infinite error; run `spin-ray store check --repair`"
    if last is None:
        return "integrity: never checked (stats does not read records); `spin-ray store check` scans every record"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last.time))
    found = last.corrupt + last.orphans + last.unindexed + last.mismatched + last.wrong_type + bool(last.meta_problem)
    note = (f"integrity: last check {when}: {last.good} good, {last.corrupt} corrupt, {last.orphans} orphaned, "
            f"{last.unindexed} unindexed"
            + (f", {last.mismatched} index scores unlike their record" if last.mismatched else "")
            + (f", {last.wrong_type} keys of the wrong type" if last.wrong_type else "")
            + (f", metadata: {last.meta_problem}" if last.meta_problem else "")
            + (" (repaired)" if last.repaired else ""))
    return note + ("; run `spin-ray store check --repair`" if found and not last.repaired else "")


def _bin_steps(progress: list[tuple[int, int, float]], bins: int = 10) -> list[tuple[int, int, int, float]]:
    """Group (step, count, mean) into at most `bins` step ranges: (first, last, count, mean error)."""
    steps = np.array([p[0] for p in progress])
    counts = np.array([p[1] for p in progress], dtype=np.float64)
    sums = np.array([p[1] * p[2] for p in progress])
    edges = np.linspace(steps.min(), steps.max() + 1, min(bins, len(steps)) + 1)
    which = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in np.unique(which):
        sel = which == b
        out.append((int(steps[sel].min()), int(steps[sel].max()), int(counts[sel].sum()), float(sums[sel].sum() / counts[sel].sum())))
    return out


def _worst(args: argparse.Namespace) -> int:
    unranked = 0
    with open_store(args) as store:
        for name in _datasets(store, args.dataset):
            whole = store.stats(threshold=args.threshold, datasets=[name])
            stats = whole.datasets[0]
            for problem in stats.problems:
                print(f"{name}: DAMAGED: {problem}", file=sys.stderr)
            try:
                indices, errors = store.worst(name, args.k)
            except FitStoreUnavailable:
                raise
            except FitStoreError as err:  # this dataset's index cannot be read; the others may be fine
                print(f"{name}: cannot rank its fits: {err}", file=sys.stderr)
                unranked += 1
                continue
            print(f"{name}: {stats.above_threshold} of {stats.count} fits above {args.threshold:g}; worst {len(indices)}:")
            fits = store.read(name, indices, skip_corrupt=True)  # k records: cheap, and worst shows what they hold
            why = {bad.key: f"CORRUPT ({bad.reason}: {bad.found})" for bad in fits.corrupt}
            for index, error, found in zip(indices.tolist(), errors.tolist(), fits.found.tolist()):
                state = "" if found else " " + why.get(store.record_key(name, index), "ORPHAN (index entry without a record)")
                print(f"  {name} {index} {error:.4g}{state}")
            print(integrity_note(whole))
    print(
        f"\nto keep only fits at or below the threshold: spin-ray store filter --max-error {args.threshold:g} "
        f"--namespace {args.namespace}" + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --out keep.csv"
    )
    return 1 if unranked else 0


def _filter(args: argparse.Namespace) -> int:
    from spin_ray.curate.sample_ids import read_ids

    if args.max_error is None and args.exclude is None:
        raise FitStoreError("filter needs --max-error E, --exclude FILE, or both")
    excluded = set(read_ids(args.exclude)) if args.exclude is not None else set()
    max_error = float("inf") if args.max_error is None else args.max_error
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        with open_store(args) as store:
            writer = csv.writer(out)
            writer.writerow(["dataset", "index", "error"])
            names = _datasets(store, args.dataset)
            for name in names:
                indices, errors = store.filter(name, max_error) if args.max_error is not None else _by_index(store, name)
                keep = np.array([(name, i) not in excluded for i in indices.tolist()], dtype=bool)
                dropped = int((~keep).sum())
                indices, errors = indices[keep], errors[keep]
                writer.writerows((name, i, repr(e)) for i, e in zip(indices.tolist(), errors.tolist()))
                rule = f"error <= {args.max_error:g}" if args.max_error is not None else "any error"
                note = f", {dropped} excluded" if args.exclude is not None else ""
                print(f"{name}: keep {len(indices)} of {store.count(name)} fits ({rule}{note})", file=sys.stderr)
            unknown = _not_stored(store, names, excluded)
            if unknown:
                shown = ", ".join(f"{d}:{i}" for d, i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                print(f"warning: {len(unknown)} excluded id(s) have no stored fit here (other dataset or namespace?): {shown}", file=sys.stderr)
    finally:
        if args.out:
            out.close()
    return 0


def _plot(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        out = plot_fit_errors(store, _datasets(store, args.dataset), args.threshold, args.out)
    print(f"wrote {out}")
    return 0


# -- curation with images ---------------------------------------------------------------------------


def _by_index(store, name: str) -> tuple[np.ndarray, np.ndarray]:
    indices, errors = store.all_errors(name)
    order = np.argsort(indices, kind="stable")
    return indices[order], errors[order]


def _not_stored(store, names: list[str], ids: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ids without a stored fit among the datasets `names`, sorted."""
    missing = [i for i in ids if i[0] not in names]
    for name in names:
        indices = np.array(sorted(i for d, i in ids if d == name), dtype=np.int64)
        if indices.size:
            found = store.read(name, indices).found
            missing += [(name, int(i)) for i in indices[~found]]
    return sorted(missing)


def _gallery(args: argparse.Namespace) -> int:
    from spin_ray.curate.gallery import Selection, build_gallery
    from spin_ray.curate.gallery_page import write_page
    from spin_ray.curate.sample_ids import read_ids
    from spin_ray.train.checkpoint import load_predictor

    if args.ids is not None:
        if args.dataset:
            raise FitStoreError("--dataset picks datasets for --worst/--best; an --ids file names its own datasets")
        selection = Selection("ids", ids=tuple(read_ids(args.ids)))
    else:
        mode, k = ("best", args.best) if args.best is not None else ("worst", args.worst or 24)
        if k < 1:
            raise FitStoreError(f"--{mode} {k}: show at least one sample per dataset")
        selection = Selection(mode, k=k, datasets=tuple(args.dataset or ()))
    locations = data_locations(args)
    body, camera, fitting = _gallery_body(args)
    predictor = load_predictor(args.checkpoint, camera) if args.checkpoint is not None else None
    with open_store(args) as store:
        data = build_gallery(store, selection, locations, args.out, body, camera, args.threshold, predictor, fitting)
    page = write_page(data, args.out)
    print(f"wrote {page} ({len(data.cards)} cards" + (f", {len(data.notices)} notices" if data.notices else "") + ")")
    for notice in data.notices:
        print(f"  note: {notice}", file=sys.stderr)
    return 0


def _gallery_body(args: argparse.Namespace):
    """The body model, crop camera and fitting config of the run config, or the embedded model and defaults."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import CameraConfig, FittingConfig, load_config

    if args.config is None:
        return BodyModel.embedded(), CameraConfig(), FittingConfig()
    cfg = load_config(args.config)
    return BodyModel.from_config(cfg.body), cfg.camera, cfg.fitting
