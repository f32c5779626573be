"""Sending a validated batch to the keep-best script: FITS_PER_CALL fits an EVALSHA, pipelined, a bounded number of rows a round trip."""

from __future__ import annotations

import contextlib
import re
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
# Fits per keep-best script call: the per-call costs (meta check, ZADD, stats) are shared by this many
# fits, and Redis serves nothing else while a call runs (~0.5 ms for 64).
FITS_PER_CALL = 64
_REFUSED_FIT = re.compile(r"\(fit (\d+) of \d+ in the call\)$")


@dataclass(frozen=True)
class WriteTarget:
    """The keys one dataset's keep-best writes touch, and the body model the namespace must hold."""

    record_prefix: str  # record key = record_prefix + index
    index_key: str
    stats_key: str
    meta_key: str
    body_model_hash: str


def keep_best_calls(batch: WriteBatch, target: WriteTarget, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list]]:
    """(rows, EVALSHA keys-and-args) of each keep-best script call: FITS_PER_CALL rows a call, in order."""
    schema = str(SCHEMA_VERSION)
    pb, bb = rec.POSE_BYTES, rec.BETAS_BYTES
    pose, betas = batch.pose_bytes, batch.betas_bytes
    for start in range(0, rows.size, FITS_PER_CALL):
        call = rows[start : start + FITS_PER_CALL]
        row_list = call.tolist()
        index_text = [str(i) for i in batch.indices[call].tolist()]
        args: list = [target.record_prefix + i for i in index_text]
        args += (target.index_key, target.stats_key, target.meta_key)
        for i, index in zip(row_list, index_text):
            args += (batch.errors[i], pose[i * pb : (i + 1) * pb], betas[i * bb : (i + 1) * bb], batch.steps[i],
                     batch.sources[i], batch.times[i], index)  # fmt: skip
        args += (schema, target.body_model_hash)
        args += [batch.updates[i] for i in row_list]
        yield call, [len(row_list) + 3, *args]


def send_keep_best(
    client: redis.Redis,
    sha: str,
    batch: WriteBatch,
    target: WriteTarget,
    rows: np.ndarray,
    written: np.ndarray,
    on_script_error: Callable[[Exception, np.ndarray], NoReturn],
) -> np.ndarray:
    """Send the rows to the keep-best script, FITS_PER_CALL a call and about PIPELINE_CHUNK a round trip;
    fill `written`; return the rows of calls that hit NOSCRIPT.

    Every reply of a round trip is counted before its first error is raised (through `on_script_error`,
    with the rows of the failed call), so `written` says which rows went in when a write fails part way
    (e.g. Redis filled up: a call goes in whole or not at all).
    """
    noscript: list[np.ndarray] = []
    calls = keep_best_calls(batch, target, rows)
    while True:
        pipe = client.pipeline(transaction=False)
        sent: list[np.ndarray] = []
        for call, args in calls:
            pipe.evalsha(sha, *args)
            sent.append(call)
            if len(sent) * FITS_PER_CALL >= PIPELINE_CHUNK:
                break
        if not sent:
            break
        replies = pipe.execute(raise_on_error=False)
        failed: tuple[Exception, np.ndarray] | None = None
        for call, reply in zip(sent, replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                noscript.append(call)
            elif isinstance(reply, Exception):
                failed = failed or (reply, call)
            else:
                mask = np.frombuffer(reply, dtype=np.uint8)
                if mask.size != call.size:
                    raise FitStoreError(f"the keep-best script answered {reply[:80]!r} for {call.size} fits")
                written[call] = mask == ord("1")
        if failed is not None:
            on_script_error(*failed)
    return np.concatenate(noscript) if noscript else np.zeros(0, dtype=np.int64)


def script_error(reply: Exception, url: str, namespace: str, body_model_hash: str | None, what: str,
                 written: int, call_rows: np.ndarray | None = None) -> FitStoreError:
    """The error a failed keep-best reply stands for: a full Redis, a refused row, or a namespace changed under us.

    `call_rows` are the batch rows of the failed call: a refused fit is named by its row of the batch.
    """
    if is_store_full(reply):
        return store_full(url, what, written)
    text = first_line(reply)
    if "SPINRAY_BAD" in text:
        detail = text.split("SPINRAY_BAD ")[-1]
        fit = _REFUSED_FIT.search(detail)
        if fit and call_rows is not None and int(fit[1]) <= call_rows.size:
            detail = f"{detail[: fit.start()]}(row {int(call_rows[int(fit[1]) - 1])} of the batch)"
        return FitStoreError(f"the keep-best script refused a write: {detail}")
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
