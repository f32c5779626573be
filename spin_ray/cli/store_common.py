"""What the `spin-ray store` subcommand modules share: opening the store the flags name, dataset-location flags."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from spin_ray.errors import FitStoreError
from spin_ray.store.server import URL_ENV, url_override

# What an embedded server's data dir holds (spin_ray/store/embedded.py): its append-only file(s) and config.
EMBEDDED_STORE_FILES = ("appendonlydir", "appendonly.aof", "redis.conf")


def store_url_from(args: argparse.Namespace) -> str:
    """--url, else $SPIN_RAY_REDIS_URL; FitStoreError saying how to get one if neither is set."""
    url = url_override(args.url)
    if not url:
        raise FitStoreError(
            f"no Redis URL: pass --url or set {URL_ENV} (start a server with `spin-ray store serve`)"
        )
    return url


@contextlib.contextmanager
def store_server(args: argparse.Namespace) -> Iterator[str]:
    """The Redis URL of the flags' store for the block: --url (or $SPIN_RAY_REDIS_URL), or --data-dir's.

    --data-dir DIR is an embedded store's folder (`spin-ray fit` keeps one in OUTPUT_DIR/redis): its
    redis-server is started here under the folder's owner lock and stopped after the block, so a
    folder another process serves is refused with the message that says to use --url.
    """
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None:
        yield store_url_from(args)
        return
    if args.url:
        raise FitStoreError(f"give --url or --data-dir, not both: --data-dir {data_dir} starts that folder's own "
                            "server, --url connects to a running one")
    if not any((data_dir / name).exists() for name in EMBEDDED_STORE_FILES):
        raise FitStoreError(f"--data-dir {data_dir} is not an embedded store's folder (no append-only file or "
                            "redis.conf in it); `spin-ray fit` keeps its store in OUTPUT_DIR/redis")
    from spin_ray.store.embedded import EmbeddedRedis

    with EmbeddedRedis(data_dir) as server:
        yield server.url


@contextlib.contextmanager
def open_store(args: argparse.Namespace, body_model_hash: str | None = None) -> Iterator:
    """The FitStore of --url or --data-dir, --namespace and --timeout; writable when given the body-model hash."""
    from spin_ray.store.fit_store import FitStore

    with store_server(args) as url, FitStore.open(url, args.namespace, body_model_hash=body_model_hash,
                                                  connect_timeout_s=args.timeout) as store:
        yield store


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
