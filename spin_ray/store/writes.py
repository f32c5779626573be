"""Sending a validated batch to the keep-best script: one index group and FITS_PER_CALL fits an EVALSHA, pipelined."""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import hiredis
import numpy as np
import redis

from spin_ray.errors import FitStoreError, StoreFullError
from spin_ray.store.cluster import is_cluster
from spin_ray.store.keys import KeyLayout
from spin_ray.store.lua import STAMP_LUA
from spin_ray.store.namespace import META_FIELDS, check_meta
from spin_ray.store.records import SCHEMA_VERSION
from spin_ray.store.server import first_line, is_store_full, store_full
from spin_ray.store.validation import WriteBatch

log = logging.getLogger(__name__)

PIPELINE_CHUNK = 1024  # rows per round trip for bulk writes, reads and exports; bounds client memory
# Fits per keep-best script call: the per-call costs (meta check, ZADD, stats) are shared by this many
# fits, and Redis serves nothing else while a call runs (~0.5 ms for 64).
FITS_PER_CALL = 64
# On a cluster a write batch is acknowledged once every master it touched has it on this many replicas
# (WAIT), so a replica promoted after its master dies holds every acknowledged fit (docs/STORE.md).
CLUSTER_REPLICA_ACKS = 1
REPLICA_WAIT_MS = 2000
REPLICA_COUNT_TTL_S = 1.0  # a master's in-sync replicas are asked again after this long
_REFUSED_FIT = re.compile(r"\(fit (\d+) of \d+ in the call\)$")


@dataclass(frozen=True)
class WriteTarget:
    """The keys one dataset's keep-best writes touch (by index group), and the body model the namespace must hold."""

    layout: KeyLayout
    dataset: str
    body_model_hash: str


@dataclass
class SendResult:
    """Rows to send again: those of calls that hit NOSCRIPT, and those of groups whose stats have no metadata stamp."""

    noscript: list[np.ndarray] = field(default_factory=list)
    unstamped: dict[int, list[np.ndarray]] = field(default_factory=dict)  # group -> rows
    touched: set[str] = field(default_factory=set)  # an index key of every group a call went to

    def retry_rows(self) -> np.ndarray:
        """Every row to send again, in batch order."""
        parts = self.noscript + [r for rows in self.unstamped.values() for r in rows]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _column(values: list[str], rows: list[int]) -> str:
    """One list argument of the keep-best script: the values of `rows` separated by spaces, or the one value
    every row shares (none: empty)."""
    if len(values) <= 1:
        return values[0] if values else ""
    return " ".join([values[i] for i in rows])


def keep_best_calls(batch: WriteBatch, target: WriteTarget, rows: np.ndarray) -> Iterator[tuple[np.ndarray, int, list]]:
    """(rows, group, EVALSHA keys-and-args) of each keep-best script call: one index group a call, FITS_PER_CALL rows at most."""
    schema = str(SCHEMA_VERSION)
    layout, dataset = target.layout, target.dataset
    for group, positions in layout.by_group(batch.indices[rows]).items():
        group_rows = rows[positions]  # stable: duplicates of a sample keep their order
        prefix = layout.record_prefix(dataset, group)
        tail = (layout.index(dataset, group), layout.stats(dataset, group))
        for start in range(0, group_rows.size, FITS_PER_CALL):
            call = group_rows[start : start + FITS_PER_CALL]
            row_list = call.tolist()
            index_text = list(map(str, batch.indices[call].tolist()))
            yield call, group, [
                len(row_list) + 2, *[prefix + i for i in index_text], *tail,
                schema, target.body_model_hash, batch.fits[call].tobytes(), _column(batch.errors, row_list),
                _column(batch.steps, row_list), _column(batch.sources, row_list), _column(batch.times, row_list),
                " ".join(index_text), _column(batch.updates, row_list),
            ]  # fmt: skip


def send_keep_best(
    client: redis.Redis,
    sha: str,
    batch: WriteBatch,
    target: WriteTarget,
    rows: np.ndarray,
    written: np.ndarray,
    on_script_error: Callable[[Exception, np.ndarray], NoReturn],
) -> SendResult:
    """Send the rows to the keep-best script, one call per index group and FITS_PER_CALL rows, about
    PIPELINE_CHUNK rows a round trip (on a cluster, a round trip per shard); fill `written`; return the
    rows to send again.

    Every reply of a round trip is counted before its first error is raised (through `on_script_error`,
    with the rows of the failed call), so `written` says which rows went in when a write fails part way
    (e.g. Redis filled up: a call goes in whole or not at all).
    """
    result = SendResult()
    calls = keep_best_calls(batch, target, rows)
    send = _send_cluster if is_cluster(client) else _send_streamed
    while (first := next(calls, None)) is not None:  # no connection is taken for an empty round
        sent, replies = send(client, sha, itertools.chain([first], calls))
        failed: tuple[Exception, np.ndarray] | None = None
        for (call, group), reply in zip(sent, replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                result.noscript.append(call)
            elif isinstance(reply, Exception) and "SPINRAY_NOMETA" in str(reply):
                result.unstamped.setdefault(group, []).append(call)
            elif isinstance(reply, Exception):
                failed = failed or (reply, call)
            else:
                mask = np.frombuffer(reply, dtype=np.uint8)
                if mask.size != call.size:
                    raise FitStoreError(f"the keep-best script answered {reply[:80]!r} for {call.size} fits")
                written[call] |= mask == ord("1")  # a row resent after a failover answers '0' (equal)
                result.touched.add(target.layout.index(target.dataset, group))
        if failed is not None:
            on_script_error(*failed)
    return result


Calls = Iterator[tuple[np.ndarray, int, list]]


def _send_cluster(client: redis.Redis, sha: str, calls: Calls) -> tuple[list[tuple[np.ndarray, int]], list]:
    """About PIPELINE_CHUNK rows of calls as one cluster pipeline (one round trip per shard); replies, errors in place."""
    pipe = client.pipeline(transaction=False)
    sent: list[tuple[np.ndarray, int]] = []
    for call, group, args in calls:
        pipe.evalsha(sha, *args)
        sent.append((call, group))
        if sum(c.size for c, _ in sent) >= PIPELINE_CHUNK:
            break
    return sent, (pipe.execute(raise_on_error=False) if sent else [])


def _send_streamed(client: redis.Redis, sha: str, calls: Calls) -> tuple[list[tuple[np.ndarray, int]], list]:
    """About PIPELINE_CHUNK rows of calls on one connection of a single node, each sent as soon as it is packed
    (hiredis, in C), so Redis runs a call while the next is packed; then every reply, errors in place."""
    conn = client.connection_pool.get_connection()
    sent: list[tuple[np.ndarray, int]] = []
    try:
        rows = 0
        for call, group, args in calls:
            conn.send_packed_command([hiredis.pack_command(("EVALSHA", sha, *args))], check_health=not sent)
            sent.append((call, group))
            rows += call.size
            if rows >= PIPELINE_CHUNK:
                break
        replies: list = []
        for _ in sent:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as err:  # an error reply is a whole reply: the connection stays in step
                replies.append(err)
        return sent, replies
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this connection out again as it is
        raise
    finally:
        client.connection_pool.release(conn)


class ReplicaCounts:
    """How many in-sync replicas each cluster master has, from its INFO replication, asked again after REPLICA_COUNT_TTL_S.

    The cluster client's topology is learnt once and refreshed only on a redirection, so it misses a replica
    that joins later (a restarted master rejoining as its successor's replica): the master itself is asked.
    """

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._warned: dict[str, float] = {}  # node -> when a batch it acknowledged alone was last logged

    def warn_alone(self, names: list[str]) -> None:
        """Log masters that acknowledged a batch with no replica holding it, each at most once a minute."""
        now = time.monotonic()
        fresh = [n for n in names if now - self._warned.get(n, -1e9) >= 60.0]
        if fresh:
            self._warned.update({n: now for n in fresh})
            log.warning("Redis Cluster master(s) %s acknowledged write batches that no replica holds yet (no live "
                        "replica?): those fits live on the master alone until a replica catches up (logged once a "
                        "minute)", ", ".join(fresh))

    def of(self, client: redis.Redis, node) -> int:
        """In-sync (online) replicas of `node`."""
        count, until = self._counts.get(node.name, (0, 0.0))
        if time.monotonic() >= until:
            info = client.info("replication", target_nodes=node)
            count = sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                        and v.get("state") == "online")
            self._counts[node.name] = (count, time.monotonic() + REPLICA_COUNT_TTL_S)
        return count


def wait_for_replicas(client: redis.Redis, index_keys: set[str], counts: ReplicaCounts) -> None:
    """WAIT on every cluster master that holds one of the keys until CLUSTER_REPLICA_ACKS replicas have its writes.

    A client's WAIT covers the writes sent on its own connection; redis-py's cluster client hands a thread
    the node's connection it used last, so this follows the pipeline that wrote. A master without an
    in-sync replica (none configured, just promoted, or still syncing) acknowledges alone, with a warning.
    """
    nodes = {node.name: node for node in (client.get_node_from_key(key) for key in index_keys)}
    short = []
    for name, node in nodes.items():
        wanted = min(CLUSTER_REPLICA_ACKS, counts.of(client, node))
        if wanted < CLUSTER_REPLICA_ACKS or (
            int(client.execute_command("WAIT", wanted, REPLICA_WAIT_MS, target_nodes=node)) < wanted
        ):
            short.append(name)
    if short:
        counts.warn_alone(short)


def stamp_groups(client: redis.Redis, layout: KeyLayout, dataset: str, groups: list[int], body_model_hash: str) -> None:
    """Copy the namespace's schema and body model into the groups' stats, after checking the metadata still holds them."""
    raw = client.hmget(layout.meta, *META_FIELDS)
    meta = None
    with contextlib.suppress(FitStoreError):
        meta = check_meta(layout.namespace, layout.meta, raw, None)
    if meta is None or meta.body_model_hash != body_model_hash:
        found = "missing" if raw[0] is None else (f"schema {raw[0].decode(errors='replace')}, body model "
                                                  f"{(raw[1] or b'?').decode(errors='replace')}")
        raise FitStoreError(
            f"namespace {layout.namespace!r} changed under this writer (namespace metadata is {found}; expected "
            f"schema {SCHEMA_VERSION}, body model {body_model_hash}): it was dropped "
            f"or re-created for another body model; reopen the store"
        )
    pipe = client.pipeline(transaction=False)
    for group in groups:  # rare (a group's first write): EVAL, no script to load
        pipe.execute_command("EVAL", STAMP_LUA, 1, layout.stats(dataset, group), SCHEMA_VERSION, meta.body_model_hash)
    pipe.execute()


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
