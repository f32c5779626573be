"""`spin-ray store export | import | check | migrate`: fits to and from files, and finding and repairing corrupt records."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from spin_ray.cli.arg_types import non_negative_float, non_negative_int, positive_int
from spin_ray.cli.store_common import add_location_flags, data_locations, open_store
from spin_ray.errors import FitStoreError, StoreFullError
from spin_ray.store.files import read_parquet_hash

SHOWN = 10  # keys listed per kind of fault by `check`
PROGRESS_MIN = 10_000  # scans at least this big show a progress bar (on a terminal)


def register(sub: argparse._SubParsersAction, connected: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add export, import and check to `spin-ray store`; `connected` makes a parser with --url/--namespace/--timeout."""
    export = connected("export", "write fits to SPIN's .npy (one dataset) or Parquet (all fields)")
    export.add_argument("out", type=Path, help="output .npy or .parquet file")
    export.add_argument("--dataset", action="append", help="dataset(s) to export; .npy needs exactly one")
    export.add_argument("--size", type=positive_int, default=None, help=".npy rows (dataset length; default max index + 1)")
    export.add_argument(
        "--with-paths", action="store_true", help="Parquet: add image_path, center, scale columns (needs --data or --config)"
    )
    export.add_argument(
        "--skip-corrupt", action="store_true",
        help="write the sound records and count the corrupt ones (default: refuse to export a store with corrupt records)",
    )  # fmt: skip
    add_location_flags(export)
    export.set_defaults(func=_export)

    imp = connected("import", "import SPIN .npy fits (N, 82) or a Parquet export, keeping the better fit per sample")
    imp.add_argument("path", type=Path, help="input .npy or .parquet file")
    imp.add_argument("--dataset", default=None, help="dataset the .npy rows belong to")
    imp.add_argument("--errors", type=Path, default=None, help="errors .npy (N,) for a .npy import (NaN = no fit)")
    imp.add_argument("--error", type=non_negative_float, default=None, help="one error (finite, >= 0) for every row of a .npy import")
    imp.add_argument("--source", default="static", choices=("static", "loop", "gt"), help="source of .npy fits")
    imp.add_argument("--step", type=non_negative_int, default=0, help="trainer step recorded for .npy fits")
    imp.add_argument(
        "--body-model-hash", default=None,
        help="hex identity of the body model of these fits (default: the namespace's, or the Parquet file's)",
    )  # fmt: skip
    imp.set_defaults(func=_import)

    check = connected("check", "scan every record: count corrupt records and orphaned index entries (exit 1 if any)")
    check.add_argument(
        "--repair", action="store_true",
        help="move corrupt records to <namespace>:quarantine:... (kept) and remove orphaned index entries",
    )  # fmt: skip
    check.add_argument("--all-namespaces", action="store_true", help="check every namespace on the server")
    check.set_defaults(func=_check)

    migrate = connected("migrate", "move a namespace of the schema-1 key layout to schema 2 (once, on the same Redis)")
    migrate.set_defaults(func=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from spin_ray.cli.store_common import store_server
    from spin_ray.store.migrate import migrate_schema1
    from spin_ray.store.server import connect, redis_errors

    with store_server(args) as url:
        client = connect(url, args.timeout)
        try:
            with redis_errors(url, f"migrating namespace {args.namespace}"):
                done = migrate_schema1(client, args.namespace)
        finally:
            client.close()
    print(f"namespace {done.namespace}: {done.records} records and {done.index_entries} index entries of "
          f"{done.datasets} dataset(s) moved to schema 2")
    return 0


def _export(args: argparse.Namespace) -> int:
    from spin_ray.cli.outputs import writable_output
    from spin_ray.store import exports
    from spin_ray.store.files import errors_path_for

    suffix = args.out.suffix.lower()
    if suffix in (".npy", ".parquet"):  # before reading the store: as `fit --out`, parents are created
        writable_output(args.out, "store export")
        if suffix == ".npy":
            writable_output(errors_path_for(args.out), "store export (errors file)")
    with open_store(args) as store:
        if suffix == ".npy":
            if args.with_paths:
                raise FitStoreError("--with-paths adds columns to a Parquet export: name the output .parquet")
            if not args.dataset or len(args.dataset) != 1:
                raise FitStoreError("a .npy export holds one dataset: pass exactly one --dataset")
            report = exports.export_npy(store, args.dataset[0], args.out, args.size, args.skip_corrupt)
            print(f"wrote {report.path} and {report.path.with_name(report.path.stem + '.errors.npy')}")
        elif suffix == ".parquet":
            locations = data_locations(args) if args.with_paths else None
            report = exports.export_parquet(store, args.out, args.dataset, args.skip_corrupt)
            if locations is not None:
                from spin_ray.curate.sample_paths import add_image_paths

                add_image_paths(report.path, locations)
            print(f"wrote {report.path}" + (" (with image_path, center, scale)" if locations is not None else ""))
        else:
            raise FitStoreError(f"cannot tell the format of {args.out}: name it .npy (SPIN) or .parquet")
    print(f"{report.rows} records written", file=sys.stderr)
    if report.corrupt:
        print(f"skipped {len(report.corrupt)} corrupt record(s) (--skip-corrupt); "
              f"`spin-ray store check --repair` quarantines them", file=sys.stderr)
    if report.orphans:
        print(f"left out {report.orphans} index entr(ies) without a record (orphans); "
              f"`spin-ray store check --repair` removes them", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    suffix = args.path.suffix.lower()
    body_hash = args.body_model_hash
    if body_hash is None and suffix == ".parquet":
        body_hash = read_parquet_hash(args.path)
    if body_hash is None:
        with open_store(args) as reader:
            meta = reader.meta
        if meta is None:
            raise FitStoreError(
                f"namespace {args.namespace!r} is new: pass --body-model-hash so its fits are tied to a body model"
            )
        body_hash = meta.body_model_hash
    with open_store(args, body_model_hash=body_hash) as store:
        if suffix == ".npy":
            if not args.dataset:
                raise FitStoreError("a .npy import needs --dataset (the dataset its rows belong to)")
            if args.errors is not None and args.error is not None:
                raise FitStoreError("pass --errors FILE or --error VALUE, not both")
            with _says_how_many_went_in(args.path):
                written = store.import_npy(
                    args.dataset, args.path, args.errors if args.errors is not None else args.error, args.source, args.step
                )
            print(f"{args.dataset}: wrote {int(written.sum())} of {written.size} rows (others had a better stored fit or no fit)")
        elif suffix == ".parquet":
            with _says_how_many_went_in(args.path):
                total = store.import_parquet(args.path)
            print(f"wrote {total} records")
        else:
            raise FitStoreError(f"cannot tell the format of {args.path}: expected .npy (SPIN) or .parquet")
    return 0


@contextlib.contextmanager
def _says_how_many_went_in(path: Path) -> Iterator[None]:
    """A full Redis stops an import part way: say how many rows of the file are in the store."""
    try:
        yield
    except StoreFullError as full:
        kept = f"{full.written} row(s) of {path} went in before it filled and are kept" if full.written is not None \
            else f"part of {path} may have gone in"
        raise StoreFullError(f"import stopped: {kept}; {full}", full.written) from None


def _listed(keys: list[str]) -> str:
    more = len(keys) - SHOWN
    return ", ".join(keys[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def _check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from spin_ray.cli.store_common import store_server
    from spin_ray.store import integrity
    from spin_ray.store.server import connect, redis_errors

    with store_server(args) as url:
        # A bare client, not a FitStore: opening a FitStore refuses a namespace of another schema, which
        # is one of the faults a check reports.
        client = connect(url, args.timeout)
        problems = False
        try:
            with redis_errors(url, "checking the store"):
                names = integrity.namespaces(client) if args.all_namespaces else [args.namespace]
                if not names:
                    print("no namespaces on this server")
                for name in names:
                    problems |= _check_namespace(client, url, name, args.repair, tqdm)
        finally:
            client.close()
    if problems and not args.repair:
        print("to quarantine corrupt records, drop orphaned index entries and re-index: spin-ray store check --repair",
              file=sys.stderr)
    return 1 if problems else 0


def _check_namespace(client, url: str, name: str, repair: bool, tqdm) -> bool:
    """Scan (and repair) one namespace and print what was found; True if a problem is left."""
    from spin_ray.store import integrity
    from spin_ray.store.server import redis_errors

    total = integrity.scan_size(client, name)
    with tqdm(total=total, desc=f"checking {name}", unit="entry", disable=None if total >= PROGRESS_MIN else True) as bar:
        report = integrity.scan(client, name, on_progress=bar.update)
    print(f"namespace {name}: {report.good} good, {len(report.corrupt)} corrupt, "
          f"{len(report.orphans)} orphaned index entries, {len(report.unindexed)} unindexed records, "
          f"{len(report.mismatched)} index scores unlike their record's error")
    if report.meta_problem:
        print(f"  metadata: {report.meta_problem}")
    if report.wrong_type:
        print("  wrong Redis type: " + _listed([report.describe_wrong_type(k) for k in report.wrong_type]))
    if report.corrupt:
        print("  corrupt by reason: " + ", ".join(f"{r} {n}" for r, n in report.by_reason().items()))
        print("  corrupt: " + _listed([str(b) for b in report.corrupt]))
    if report.orphans:
        print("  orphaned (indexed, no record): " + _listed(report.orphans))
    if report.unindexed:
        print("  unindexed (record, no index entry): " + _listed(report.unindexed))
    if report.mismatched:
        print("  index score unlike the record's error: " + _listed([report.describe_mismatch(k) for k in report.mismatched]))
    left = not report.clean
    if repair and not report.clean:
        try:
            with redis_errors(url, f"repairing namespace {name}"):
                integrity.repair(client, report)
        except StoreFullError as full:
            print(f"  repair could not write: {full}")
        _print_repairs(report)
        fixed = (len(report.quarantined) == len(report.corrupt) and report.orphans_removed == len(report.orphans)
                 and report.indexed == len(report.unindexed) and report.reindexed == len(report.mismatched)
                 and len(report.moved) == len(report.wrong_type))
        if report.meta_problem:
            print("  metadata is not repaired (it binds the namespace to its schema and body model): "
                  "export the fits with matching code and import them into a new namespace")
        left = not fixed or report.meta_problem is not None
    try:
        with redis_errors(url, f"saving the summary of namespace {name}"):
            integrity.save_summary(client, name, report.summary(repair))
    except StoreFullError:
        print("  (summary not kept for `store stats`: Redis is full)")
    return left


def _print_repairs(report) -> None:
    moved = [f"{k} -> {q}" for k, q in report.quarantined.items()]
    line = (f"  repaired: quarantined {len(moved)} record(s)" + (f" ({_listed(moved)})" if moved else "")
            + f"; removed {report.orphans_removed} orphaned index entries; indexed {report.indexed} records")
    if report.mismatched:
        line += f"; re-indexed {report.reindexed} record(s) from their error"
    if report.wrong_type:
        keys = [f"{k} -> {q}" for k, q in report.moved.items()]
        line += (f"; moved {len(keys)} key(s) of the wrong type aside ({_listed(keys)})"
                 + (f", rebuilt {report.stats_rebuilt} stats hash(es) from the records (step history restarts)"
                    if report.stats_rebuilt else ""))
    print(line)
