"""Batch reads of records: one READ script call per index group, a bounded number of rows a round trip (per shard)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import redis

from spin_ray.errors import FitStoreError
from spin_ray.store.keys import KeyLayout
from spin_ray.store.records import RECORD_FIELDS

Fields = tuple[bytes | None, ...]


def _read_calls(client: redis.Redis, sha: str, calls: list[tuple[np.ndarray, list[str]]]) -> list:
    """The READ script's reply for each (rows, keys), pipelined; errors in place."""
    pipe = client.pipeline(transaction=False)
    for _, keys in calls:
        pipe.evalsha(sha, len(keys), *keys)
    return pipe.execute(raise_on_error=False) if calls else []


def read_fields(
    client: redis.Redis,
    sha: Callable[[], str],
    layout: KeyLayout,
    dataset: str,
    idx: np.ndarray,
    chunk: int,
    reload_scripts: Callable[[], None],
    retrying: Callable[[Callable[[], list]], list],
) -> list[Fields]:
    """The RECORD_FIELDS of each sample's record (7 Nones where it has none), `chunk` rows a round trip.

    `sha()` names the loaded READ script; after a NOSCRIPT reply `reload_scripts()` runs and the chunk is
    read again once; `retrying(send)` sends (again, through a cluster's failover).
    """
    width = len(RECORD_FIELDS)
    replies: list[Fields] = [()] * idx.shape[0]
    for start in range(0, idx.shape[0], chunk):
        part = idx[start : start + chunk]
        calls = [(start + rows, [layout.record(dataset, int(i)) for i in part[rows].tolist()])
                 for rows in layout.by_group(part).values()]
        for _attempt in range(2):
            flats = retrying(lambda: _read_calls(client, sha(), calls))
            if not any(isinstance(f, redis.exceptions.NoScriptError) for f in flats):
                break
            reload_scripts()
        for (rows, keys), flat in zip(calls, flats):
            if isinstance(flat, Exception):
                raise flat
            if len(flat) != width * len(keys):
                raise FitStoreError(f"batch read returned {len(flat)} fields for {len(keys)} records, expected {width} each")
            for row, fields in zip(rows.tolist(), zip(*[iter(flat)] * width)):
                replies[row] = fields
    return replies
