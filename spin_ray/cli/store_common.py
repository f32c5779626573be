"""What the `spin-ray store` subcommand modules share: opening the store the flags name, dataset-location flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from spin_ray.errors import FitStoreError
from spin_ray.store.server import URL_ENV, url_override


def store_url_from(args: argparse.Namespace) -> str:
    """--url, else $SPIN_RAY_REDIS_URL; FitStoreError saying how to get one if neither is set."""
    url = url_override(args.url)
    if not url:
        raise FitStoreError(
            f"no Redis URL: pass --url or set {URL_ENV} (start a server with `spin-ray store serve`)"
        )
    return url


def open_store(args: argparse.Namespace, body_model_hash: str | None = None):
    """The FitStore of --url/--namespace/--timeout; writable when given the body-model hash."""
    from spin_ray.store.fit_store import FitStore

    return FitStore.open(store_url_from(args), args.namespace, body_model_hash=body_model_hash, connect_timeout_s=args.timeout)


def add_location_flags(parser: argparse.ArgumentParser) -> None:
    """--config / --data: where each dataset's npz and images are (the store holds no paths)."""
    parser.add_argument("--config", type=Path, default=None, help="run config whose data.datasets name the npz files and image roots")
    parser.add_argument(
        "--data", action="append", default=[], metavar="NAME=NPZ[:IMAGE_ROOT]",
        help="where dataset NAME's npz and images are (IMAGE_ROOT defaults to the npz's folder; repeatable; overrides "
             "--config); NPZ may be the keypoint file or OpenPose folder it was imported from with `spin-ray data import`",
    )  # fmt: skip


def data_locations(args: argparse.Namespace):
    """Dataset locations from --config and --data (--data wins)."""
    from spin_ray.curate.sample_paths import locations_from_config, merge_locations, parse_data_flag

    from_config = locations_from_config(args.config) if args.config is not None else []
    return merge_locations(from_config, [parse_data_flag(text) for text in args.data])
