"""Sending a validated batch to the keep-best script: pipelined EVALSHA calls, a bounded number of rows a round trip."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import redis

from spin_ray.errors import FitStoreError, StoreFullError
from spin_ray.store import records as rec
from spin_ray.store.records import SCHEMA_VERSION
from spin_ray.store.server import first_line, is_store_full, store_full
from spin_ray.store.validation import WriteBatch

PIPELINE_CHUNK = 1024  # rows per round trip for bulk writes, reads and exports; bounds client memory


@dataclass(frozen=True)
class WriteTarget:
    """The keys one dataset's keep-best writes touch, and the body model the namespace must hold."""

    record_prefix: str  # record key = record_prefix + index
    index_key: str
    stats_key: str
    meta_key: str
    body_model_hash: str


def send_keep_best(
    client: redis.Redis,
    sha: str,
    batch: WriteBatch,
    target: WriteTarget,
    rows: np.ndarray,
    written: np.ndarray,
    on_script_error: Callable[[Exception], NoReturn],
) -> np.ndarray:
    """Pipeline the rows' keep-best calls, fill `written`; return the rows that hit NOSCRIPT.

    Every reply of a chunk is counted before its first error is raised (through `on_script_error`),
    so `written` says which rows went in when a write fails part way (e.g. Redis filled up).
    """
    schema = str(SCHEMA_VERSION)
    pb, bb = rec.POSE_BYTES, rec.BETAS_BYTES
    noscript: list[int] = []
    for start in range(0, rows.size, PIPELINE_CHUNK):
        chunk = rows[start : start + PIPELINE_CHUNK].tolist()
        pipe = client.pipeline(transaction=False)
        for i in chunk:
            index = int(batch.indices[i])
            pipe.evalsha(
                sha, 4,
                f"{target.record_prefix}{index}", target.index_key, target.stats_key, target.meta_key,
                batch.errors[i], batch.pose_bytes[i * pb : (i + 1) * pb], batch.betas_bytes[i * bb : (i + 1) * bb],
                batch.steps[i], batch.sources[i], batch.times[i], index, schema, target.body_model_hash,
                batch.updates[i],
            )  # fmt: skip
        replies = pipe.execute(raise_on_error=False)
        failed: Exception | None = None
        for i, reply in zip(chunk, replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                noscript.append(i)
            elif isinstance(reply, Exception):
                failed = failed or reply
            else:
                written[i] = bool(reply)
        if failed is not None:
            on_script_error(failed)
    return np.asarray(noscript, dtype=np.int64)


def script_error(reply: Exception, url: str, namespace: str, body_model_hash: str | None, what: str,
                 written: int) -> FitStoreError:
    """The error a failed keep-best reply stands for: a full Redis, a refused row, or a namespace changed under us."""
    if is_store_full(reply):
        return store_full(url, what, written)
    text = first_line(reply)
    if "SPINRAY_BAD" in text:
        return FitStoreError(f"the keep-best script refused a write: {text.split('SPINRAY_BAD ')[-1]}")
    if "SPINRAY_META" in text:
        return FitStoreError(
            f"namespace {namespace!r} changed under this writer ({text.split('SPINRAY_META ')[-1]}; "
            f"expected schema {SCHEMA_VERSION}, body model {body_model_hash}): it was dropped "
            f"or re-created for another body model; reopen the store"
        )
    return FitStoreError(f"keep-best script failed: {text}")


@contextlib.contextmanager
def counting_rows_before(done: Callable[[], int]) -> Iterator[None]:
    """A StoreFullError from the block counts `done()` rows written by earlier calls of the same batch too."""
    try:
        yield
    except StoreFullError as full:
        raise StoreFullError(str(full), done() + (full.written or 0)) from None
