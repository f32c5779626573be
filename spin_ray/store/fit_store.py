"""FitStore: the fit dictionary in Redis, with atomic keep-best writes, batch reads and curation queries.

Keys of a namespace NS (every name is checked by `records.check_name`, so ':' only separates parts):
- `spinray:NS:meta`            hash: schema version, body-model hash, creation time
- `spinray:NS:fit:DS:I`        hash: one record (pose/betas as raw float32 LE bytes, decimal fields)
- `spinray:NS:idx:DS`          sorted set: member I, score = error of the stored record
- `spinray:NS:stats:DS`        hash: `src:S` records per source, `n:STEP` / `s:STEP` count and error sum
                               of the fits written at each trainer step (improvements over time)

A FitStore holds only its address and a client, so it pickles to its address and reconnects on the
other side (a Ray actor or another process gets a working store from the same object).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from pydantic import ValidationError

from spin_ray.errors import FitStoreError, FitStoreUnavailable
from spin_ray.store import records as rec
from spin_ray.store.records import (
    BETAS_SIZE,
    POSE_SIZE,
    SCHEMA_VERSION,
    DatasetStats,
    FitStoreAddress,
    NamespaceMeta,
    StoreStats,
)
from spin_ray.store.server import connect, redact_url

if TYPE_CHECKING:
    from spin_ray.config import StoreConfig

# One keep-best write. Every comparison goes through tonumber(): Lua compares strings otherwise.
# KEYS: record, error index, dataset stats, namespace meta
# ARGV: error, pose, betas, step, source, time, index, schema, body hash, updates ('' = old + 1)
KEEP_BEST_LUA = """
local meta = redis.call('HMGET', KEYS[4], 'schema_version', 'body_model_hash')
if not meta[1] then
  return redis.error_reply('SPINRAY_META namespace metadata is missing')
end
if meta[1] ~= ARGV[8] or meta[2] ~= ARGV[9] then
  return redis.error_reply('SPINRAY_META namespace metadata is schema ' .. meta[1] .. ', body model ' .. tostring(meta[2]))
end
local new = tonumber(ARGV[1])
local old = redis.call('HMGET', KEYS[1], 'error', 'updates', 'source')
local updates = 1
if old[1] then
  if new >= tonumber(old[1]) then
    return 0
  end
  updates = tonumber(old[2]) + 1
  redis.call('HINCRBY', KEYS[3], 'src:' .. old[3], -1)
end
if ARGV[10] ~= '' then
  updates = tonumber(ARGV[10])
end
redis.call('HSET', KEYS[1], 'pose', ARGV[2], 'betas', ARGV[3], 'error', ARGV[1], 'step', ARGV[4],
           'source', ARGV[5], 'updates', updates, 'time', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[7])
redis.call('HINCRBY', KEYS[3], 'src:' .. ARGV[5], 1)
redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[4], 1)
redis.call('HINCRBYFLOAT', KEYS[3], 's:' .. ARGV[4], ARGV[1])
return 1
"""

# Batch read: every record's fields, flattened, in one command (pipelined HMGETs cost ~3x more client CPU).
# KEYS: records. Missing fields come back as nil, so a missing record is 7 nils.
READ_LUA = """
local out = {}
for _, key in ipairs(KEYS) do
  local fields = redis.call('HMGET', key, 'pose', 'betas', 'error', 'step', 'source', 'updates', 'time')
  for j = 1, 7 do
    out[#out + 1] = fields[j]
  end
end
return out
"""

# Create the namespace metadata if absent, then return it, atomically (two writers may open at once).
INIT_META_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'schema_version', ARGV[1], 'body_model_hash', ARGV[2], 'created', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'schema_version', 'body_model_hash', 'created')
"""

PIPELINE_CHUNK = 1024  # rows per round trip for bulk imports and exports; bounds client memory
QUANTILES: tuple[float, ...] = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)


@dataclass(frozen=True)
class StoredFits:
    """A batch read: row i is sample indices[i]; rows with found[i] False hold zeros / NaN / -1."""

    indices: np.ndarray  # (N,) int64
    found: np.ndarray  # (N,) bool
    pose: np.ndarray  # (N, 72) float32 axis-angle, canonical frame
    betas: np.ndarray  # (N, 10) float32
    error: np.ndarray  # (N,) float64, NaN where missing
    step: np.ndarray  # (N,) int64, -1 where missing
    source: np.ndarray  # (N,) str, '' where missing
    updates: np.ndarray  # (N,) int64, 0 where missing
    time: np.ndarray  # (N,) float64, NaN where missing


def _as_numpy(value: Any, dtype: Any, name: str) -> np.ndarray:
    """Array from numpy input or a (possibly CUDA) torch tensor, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise FitStoreError(f"{name} cannot be read as {np.dtype(dtype).name} numbers: {err}") from None


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True)
class _Batch:
    """A validated batch of rows ready to be sent; built only when every row passed its checks."""

    indices: np.ndarray
    pose_bytes: bytes
    betas_bytes: bytes
    errors: list[str]
    steps: list[str]
    sources: list[str]
    times: list[str]
    updates: list[str]


def _validate_rows(
    dataset: str,
    indices: Any,
    poses: Any,
    betas: Any,
    errors: Any,
    step: Any,
    source: str | Sequence[str],
    times: Any = None,
    updates: Any = None,
) -> _Batch:
    """Check a whole batch and pack it; raise FitStoreError naming the first bad row, before any write."""
    rec.check_name("dataset", dataset)
    idx = _as_numpy(indices, np.int64, "indices").reshape(-1)
    n = idx.shape[0]
    pose = _as_numpy(poses, np.float32, "poses")
    shape = _as_numpy(betas, np.float32, "betas")
    err = _as_numpy(errors, np.float64, "errors").reshape(-1)
    if pose.ndim != 2 or pose.shape != (n, POSE_SIZE):
        raise FitStoreError(
            f"poses has shape {tuple(pose.shape)}, expected ({n}, {POSE_SIZE}): "
            f"axis-angle of 24 joints for each of the {n} indices"
        )
    if shape.ndim != 2 or shape.shape != (n, BETAS_SIZE):
        raise FitStoreError(f"betas has shape {tuple(shape.shape)}, expected ({n}, {BETAS_SIZE})")
    if err.shape != (n,):
        raise FitStoreError(f"errors has {err.shape[0]} values, expected one per index ({n})")
    if (idx < 0).any():
        row = _first_bad_row(idx < 0)
        raise FitStoreError(f"indices[{row}] is {idx[row]}: sample indices are rows of a dataset, >= 0")
    if not np.isfinite(err).all():
        row = _first_bad_row(~np.isfinite(err))
        raise FitStoreError(
            f"errors[{row}] (sample {dataset}:{idx[row]}) is {err[row]}: errors must be finite "
            f"(do not write failed fits)"
        )
    for name, arr in (("poses", pose), ("betas", shape)):
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            row = _first_bad_row(bad)
            raise FitStoreError(f"{name}[{row}] (sample {dataset}:{idx[row]}) holds NaN or inf")
    steps = _as_numpy(step, np.int64, "step")
    steps = np.broadcast_to(steps, (n,)) if steps.ndim == 0 else steps.reshape(-1)
    if steps.shape != (n,) or (steps < 0).any():
        raise FitStoreError(f"step must be one integer >= 0 or one per index ({n}), got {step!r}")
    sources = [source] * n if isinstance(source, str) else [str(s) for s in source]
    if len(sources) != n:
        raise FitStoreError(f"source must be one name or one per index ({n}), got {len(sources)}")
    for s in set(sources):
        rec.check_source(s)
    if times is None:
        time_list = [rec.format_float(time.time())] * n
    else:
        t = _as_numpy(times, np.float64, "times").reshape(-1)
        if t.shape != (n,) or not np.isfinite(t).all():
            raise FitStoreError(f"times must be {n} finite Unix times")
        time_list = [rec.format_float(v) for v in t.tolist()]
    if updates is None:
        update_list = [""] * n
    else:
        u = _as_numpy(updates, np.int64, "updates").reshape(-1)
        if u.shape != (n,) or (u < 1).any():
            raise FitStoreError(f"updates must be {n} integers >= 1")
        update_list = [str(v) for v in u.tolist()]
    return _Batch(
        indices=idx,
        pose_bytes=np.ascontiguousarray(pose, dtype=rec.FLOAT32_LE).tobytes(),
        betas_bytes=np.ascontiguousarray(shape, dtype=rec.FLOAT32_LE).tobytes(),
        errors=[rec.format_float(v) for v in err.tolist()],
        steps=[str(v) for v in steps.tolist()],
        sources=sources,
        times=time_list,
        updates=update_list,
    )


class FitStore:
    """The fit dictionary of one namespace; trainers read batches, fitters keep_best from any process."""

    def __init__(self, address: FitStoreAddress) -> None:
        self.address = address
        self.namespace = address.namespace
        self._url = address.url.get_secret_value()
        self._prefix = f"spinray:{self.namespace}:"
        self._client = connect(self._url, address.connect_timeout_s)
        # Scripts are sent by SHA inside our own pipelines: a redis-py pipeline given a Script object
        # asks SCRIPT EXISTS first, which would cost a second round trip per batch.
        self._keep_best = self._client.register_script(KEEP_BEST_LUA)
        self._read_batch = self._client.register_script(READ_LUA)
        self._init_meta = self._client.register_script(INIT_META_LUA)
        self._meta: NamespaceMeta | None = None
        with self._redis_errors("opening the namespace"):
            self._load_scripts()
            self._meta = self._open_namespace()

    @classmethod
    def open(
        cls,
        url: str,
        namespace: str = "default",
        body_model_hash: str | None = None,
        connect_timeout_s: float = 30.0,
    ) -> "FitStore":
        """Connect to the namespace at `url`; with a body-model hash the store can write."""
        try:
            address = FitStoreAddress(
                url=url, namespace=namespace, body_model_hash=body_model_hash, connect_timeout_s=connect_timeout_s
            )
        except ValidationError as err:
            # Field messages only: the input values could include the URL's password.
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise FitStoreError(f"bad fit-store address: {problems}") from None
        return cls(address)

    @classmethod
    def from_config(cls, config: "StoreConfig", body_model_hash: str | None, url: str | None = None) -> "FitStore":
        """Open the store a run config names; `url` (e.g. an embedded server's) overrides the config."""
        url = url or resolve_url(config)
        if url is None:
            raise FitStoreError(
                "the store config names no Redis (store.url and store.url_env are unset): "
                "start an EmbeddedRedis and pass its url, or set store.url"
            )
        return cls.open(url, config.namespace, body_model_hash, config.connect_timeout_s)

    def __reduce__(self) -> tuple:
        # Pickle the address only: the other process opens its own connection.
        return (FitStore, (self.address,))

    def __repr__(self) -> str:
        return f"FitStore({redact_url(self._url)!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> "FitStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_scripts(self) -> None:
        """Make the server know our scripts (again, after a restart or SCRIPT FLUSH)."""
        for script in (self._keep_best, self._read_batch):
            script.sha = self._client.script_load(script.script)

    @property
    def client(self) -> redis.Redis:
        """The underlying client (for tests and benchmarks; other code goes through FitStore)."""
        return self._client

    @contextlib.contextmanager
    def _redis_errors(self, what: str) -> Iterator[None]:
        """Turn Redis failures into FitStoreError with the (redacted) address and the operation."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise FitStoreUnavailable(
                f"lost Redis at {redact_url(self._url)} while {what}: {type(err).__name__}: "
                f"{_first_line(err)} (is the server still running?)"
            ) from None
        except redis.ResponseError as err:
            raise FitStoreError(f"Redis refused a command while {what}: {_first_line(err)}") from None

    # -- keys ---------------------------------------------------------------------------------------

    def _meta_key(self) -> str:
        return f"{self._prefix}meta"

    def record_key(self, dataset: str, index: int) -> str:
        """Redis key of the record of sample (dataset, index)."""
        return f"{self._prefix}fit:{dataset}:{index}"

    def _index_key(self, dataset: str) -> str:
        return f"{self._prefix}idx:{dataset}"

    def _stats_key(self, dataset: str) -> str:
        return f"{self._prefix}stats:{dataset}"

    # -- namespace metadata -------------------------------------------------------------------------

    def _open_namespace(self) -> NamespaceMeta | None:
        """Create or check the namespace metadata against this store's schema and body model."""
        if self.address.body_model_hash is not None:
            raw = self._init_meta(
                keys=[self._meta_key()],
                args=[SCHEMA_VERSION, self.address.body_model_hash, rec.format_float(time.time())],
            )
        else:
            raw = self._client.hmget(self._meta_key(), "schema_version", "body_model_hash", "created")
        if raw[0] is None:
            return None
        meta = self._parse_meta(raw)
        if meta.schema_version != SCHEMA_VERSION:
            raise FitStoreError(
                f"namespace {self.namespace!r} was written with fit-store schema {meta.schema_version}, "
                f"this code reads schema {SCHEMA_VERSION}: use another namespace or export/import with matching code"
            )
        wanted = self.address.body_model_hash
        if wanted is not None and meta.body_model_hash != wanted:
            raise FitStoreError(
                f"namespace {self.namespace!r} holds fits of body model {meta.body_model_hash}, "
                f"but this store was opened for body model {wanted}: fits of different body models "
                f"cannot be mixed; use another namespace"
            )
        return meta

    def _parse_meta(self, raw: Sequence[bytes | None]) -> NamespaceMeta:
        key = self._meta_key()
        return NamespaceMeta(
            schema_version=rec.parse_number(key, "schema_version", raw[0], int),
            body_model_hash=(raw[1] or b"").decode("ascii", errors="replace"),
            created=rec.parse_number(key, "created", raw[2], float),
        )

    @property
    def meta(self) -> NamespaceMeta | None:
        """The namespace's metadata, or None for a namespace nothing was written to."""
        if self._meta is None:
            with self._redis_errors("reading namespace metadata"):
                self._meta = self._open_namespace()
        return self._meta

    # -- writes -------------------------------------------------------------------------------------

    def keep_best(
        self,
        dataset: str,
        indices: Any,
        poses: Any,
        betas: Any,
        errors: Any,
        step: Any,
        source: str | Sequence[str] = "loop",
    ) -> np.ndarray:
        """Write each row whose error is strictly lower than the stored one (or none is); mask of rows written."""
        return self._write(_validate_rows(dataset, indices, poses, betas, errors, step, source), dataset)

    def _write(self, batch: _Batch, dataset: str) -> np.ndarray:
        """Send a validated batch as pipelined EVALSHA calls (one round trip per chunk)."""
        if self.address.body_model_hash is None:
            raise FitStoreError(
                f"this FitStore for namespace {self.namespace!r} was opened without a body-model hash, "
                f"so it is read-only: pass body_model_hash to write"
            )
        n = batch.indices.shape[0]
        written = np.zeros(n, dtype=bool)
        pending = np.arange(n)
        with self._redis_errors(f"writing {n} fits of {dataset}"):
            for _attempt in range(2):
                retry = self._send(batch, dataset, pending, written)
                if retry.size == 0:
                    return written
                # The script cache was flushed (server restart, SCRIPT FLUSH): reload once, resend those rows.
                self._load_scripts()
                pending = retry
        raise FitStoreError("Redis keeps forgetting the keep-best script (NOSCRIPT twice); is a SCRIPT FLUSH looping?")

    def _send(self, batch: _Batch, dataset: str, rows: np.ndarray, written: np.ndarray) -> np.ndarray:
        """Pipeline the rows, fill `written`; return rows that hit NOSCRIPT."""
        meta_key, index_key, stats_key = self._meta_key(), self._index_key(dataset), self._stats_key(dataset)
        schema, body_hash = str(SCHEMA_VERSION), self.address.body_model_hash
        pb, bb = rec.POSE_BYTES, rec.BETAS_BYTES
        noscript: list[int] = []
        for start in range(0, rows.size, PIPELINE_CHUNK):
            chunk = rows[start : start + PIPELINE_CHUNK].tolist()
            pipe = self._client.pipeline(transaction=False)
            for i in chunk:
                index = int(batch.indices[i])
                pipe.evalsha(
                    self._keep_best.sha, 4,
                    f"{self._prefix}fit:{dataset}:{index}", index_key, stats_key, meta_key,
                    batch.errors[i], batch.pose_bytes[i * pb : (i + 1) * pb], batch.betas_bytes[i * bb : (i + 1) * bb],
                    batch.steps[i], batch.sources[i], batch.times[i], index, schema, body_hash, batch.updates[i],
                )  # fmt: skip
            replies = pipe.execute(raise_on_error=False)
            for i, reply in zip(chunk, replies):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    noscript.append(i)
                elif isinstance(reply, Exception):
                    self._raise_script_error(reply)
                else:
                    written[i] = bool(reply)
        return np.asarray(noscript, dtype=np.int64)

    def _raise_script_error(self, reply: Exception) -> None:
        text = _first_line(reply)
        if "SPINRAY_META" in text:
            self._meta = None
            raise FitStoreError(
                f"namespace {self.namespace!r} changed under this writer ({text.split('SPINRAY_META ')[-1]}; "
                f"expected schema {SCHEMA_VERSION}, body model {self.address.body_model_hash}): it was dropped "
                f"or re-created for another body model; reopen the store"
            )
        raise FitStoreError(f"keep-best script failed: {text}")

    # -- reads --------------------------------------------------------------------------------------

    def read(self, dataset: str, indices: Any) -> StoredFits:
        """The stored best fits of the samples, in one round trip; missing samples have found=False."""
        rec.check_name("dataset", dataset)
        idx = _as_numpy(indices, np.int64, "indices").reshape(-1)
        n = idx.shape[0]
        width = len(rec.RECORD_FIELDS)
        replies: list[tuple[bytes | None, ...]] = []
        with self._redis_errors(f"reading {n} fits of {dataset}"):
            for start in range(0, n, PIPELINE_CHUNK):
                keys = [f"{self._prefix}fit:{dataset}:{i}" for i in idx[start : start + PIPELINE_CHUNK].tolist()]
                try:
                    flat = self._client.evalsha(self._read_batch.sha, len(keys), *keys)
                except redis.exceptions.NoScriptError:
                    self._load_scripts()
                    flat = self._client.evalsha(self._read_batch.sha, len(keys), *keys)
                if len(flat) != width * len(keys):
                    raise FitStoreError(f"batch read returned {len(flat)} fields for {len(keys)} records, expected {width} each")
                replies.extend(zip(*[iter(flat)] * width))
        return self._decode(dataset, idx, replies)

    def _decode(self, dataset: str, idx: np.ndarray, replies: list[tuple[bytes | None, ...]]) -> StoredFits:
        """Arrays from the records' fields; every payload length is checked before it becomes an array."""
        n = idx.shape[0]
        found = np.zeros(n, dtype=bool)
        error = np.full(n, np.nan)
        step = np.full(n, -1, dtype=np.int64)
        updates = np.zeros(n, dtype=np.int64)
        stamp = np.full(n, np.nan)
        source = np.full(n, "", dtype="<U6")
        pose_parts: list[bytes] = []
        betas_parts: list[bytes] = []
        zero_pose, zero_betas = bytes(rec.POSE_BYTES), bytes(rec.BETAS_BYTES)
        for i, (pose, betas, err, stp, src, upd, tim) in enumerate(replies):
            if pose is None and err is None:
                pose_parts.append(zero_pose)
                betas_parts.append(zero_betas)
                continue
            key = self.record_key(dataset, int(idx[i]))
            if pose is None or len(pose) != rec.POSE_BYTES:
                rec.unpack_floats(key, "pose", pose, POSE_SIZE)  # raises with the byte counts
            if betas is None or len(betas) != rec.BETAS_BYTES:
                rec.unpack_floats(key, "betas", betas, BETAS_SIZE)
            found[i] = True
            pose_parts.append(pose)
            betas_parts.append(betas)
            error[i] = rec.parse_number(key, "error", err, float)
            step[i] = rec.parse_number(key, "step", stp, int)
            updates[i] = rec.parse_number(key, "updates", upd, int)
            stamp[i] = rec.parse_number(key, "time", tim, float)
            name = (src or b"").decode("ascii", errors="replace")
            if name not in rec.SOURCES:
                raise FitStoreError(
                    f"record {key} has source {name!r}, expected one of {', '.join(rec.SOURCES)} "
                    f"(store written by another schema version?)"
                )
            source[i] = name
        pose_arr = np.frombuffer(b"".join(pose_parts), dtype=rec.FLOAT32_LE).reshape(n, POSE_SIZE)
        betas_arr = np.frombuffer(b"".join(betas_parts), dtype=rec.FLOAT32_LE).reshape(n, BETAS_SIZE)
        return StoredFits(
            indices=idx,
            found=found,
            pose=pose_arr.astype(np.float32),
            betas=betas_arr.astype(np.float32),
            error=error,
            step=step,
            source=source,
            updates=updates,
            time=stamp,
        )

    # -- curation -----------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of the datasets that have at least one fit in this namespace, sorted."""
        prefix = self._index_key("")
        with self._redis_errors("listing datasets"):
            keys = list(self._client.scan_iter(match=prefix + "*", count=1000))
        # SCAN may return a key more than once.
        return sorted({k.decode()[len(prefix) :] for k in keys})

    def _require_dataset(self, dataset: str) -> None:
        """Raise FitStoreError if the dataset has no fits here, listing the ones that do."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"checking dataset {dataset}"):
            if self._client.exists(self._index_key(dataset)):
                return
        known = ", ".join(self.datasets()) or "none"
        raise FitStoreError(
            f"unknown dataset {dataset!r}: namespace {self.namespace!r} has no fits for it (datasets with fits: {known})"
        )

    def count(self, dataset: str) -> int:
        """Number of samples of the dataset with a stored fit."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"counting fits of {dataset}"):
            return int(self._client.zcard(self._index_key(dataset)))

    def worst(self, dataset: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the k samples with the highest stored errors, worst first."""
        return self._ranked(dataset, k, highest=True)

    def best(self, dataset: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the k samples with the lowest stored errors, best first."""
        return self._ranked(dataset, k, highest=False)

    def _ranked(self, dataset: str, k: int, highest: bool) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise FitStoreError(f"k must be >= 1, got {k}")
        self._require_dataset(dataset)
        with self._redis_errors(f"ranking fits of {dataset}"):
            pairs = self._client.zrange(self._index_key(dataset), 0, k - 1, desc=highest, withscores=True)
        return _pairs_to_arrays(pairs)

    def filter(self, dataset: str, max_error: float) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the samples whose stored error is <= max_error, by index."""
        if not np.isfinite(max_error):
            raise FitStoreError(f"max_error must be a finite number, got {max_error}")
        self._require_dataset(dataset)
        with self._redis_errors(f"filtering fits of {dataset}"):
            pairs = self._client.zrangebyscore(self._index_key(dataset), "-inf", max_error, withscores=True)
        indices, errors = _pairs_to_arrays(pairs)
        order = np.argsort(indices, kind="stable")
        return indices[order], errors[order]

    def all_errors(self, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of every stored fit of the dataset, by error."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"reading the error index of {dataset}"):
            pairs = self._client.zrange(self._index_key(dataset), 0, -1, withscores=True)
        return _pairs_to_arrays(pairs)

    def progress(self, dataset: str) -> list[tuple[int, int, float]]:
        """(step, fits written at that step, their mean error) for every step that wrote a fit."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"reading the progress of {dataset}"):
            raw = self._client.hgetall(self._stats_key(dataset))
        return _progress_from_stats(raw)

    def stats(self, threshold: float = 100.0, datasets: Sequence[str] | None = None) -> StoreStats:
        """Counts per dataset and source, error quantiles, fits above `threshold`, improvements by step."""
        names = list(datasets) if datasets is not None else self.datasets()
        for name in names:
            self._require_dataset(name)
        out = []
        with self._redis_errors("computing statistics"):
            for name in names:
                index_key = self._index_key(name)
                count = int(self._client.zcard(index_key))
                pipe = self._client.pipeline(transaction=False)
                for q in QUANTILES:
                    rank = int(round(q * (count - 1))) if count else 0
                    pipe.zrange(index_key, rank, rank, withscores=True)
                pipe.zcount(index_key, f"({threshold!r}", "+inf")
                pipe.hgetall(self._stats_key(name))
                *ranks, above, raw_stats = pipe.execute()
                quantiles = {
                    f"p{100 * q:g}": float(r[0][1]) for q, r in zip(QUANTILES, ranks) if count and r
                }
                by_source = {
                    k.decode()[4:]: int(v) for k, v in raw_stats.items() if k.startswith(b"src:") and int(v) > 0
                }
                out.append(
                    DatasetStats(
                        dataset=name,
                        count=count,
                        by_source=by_source,
                        error_quantiles=quantiles,
                        above_threshold=int(above),
                        threshold=threshold,
                        improvements_by_step=_progress_from_stats(raw_stats),
                    )
                )
        return StoreStats(namespace=self.namespace, meta=self.meta, datasets=out)

    def drop(self) -> int:
        """Delete every key of this namespace (metadata included); the number of keys deleted."""
        deleted = 0
        with self._redis_errors(f"dropping namespace {self.namespace}"):
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= PIPELINE_CHUNK:
                    deleted += int(self._client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(self._client.unlink(*batch))
        self._meta = None
        return deleted

    # -- files --------------------------------------------------------------------------------------

    def read_all(self, dataset: str) -> StoredFits:
        """Every stored fit of the dataset, ordered by index."""
        indices, _ = self.all_errors(dataset)
        return self.read(dataset, np.sort(indices))

    def export_npy(self, dataset: str, path: str | Path, size: int | None = None) -> Path:
        """Write SPIN's (size, 82) float32 fits file (pose 72 + betas 10) and its errors beside it.

        Rows without a fit are zeros with a NaN error. The errors go to `<stem>.errors.npy`.
        """
        from spin_ray.store.files import write_npy_fits

        self._require_dataset(dataset)
        return write_npy_fits(self.read_all(dataset), Path(path), size)

    def import_npy(
        self,
        dataset: str,
        path: str | Path,
        errors: str | Path | float | None = None,
        source: str = "static",
        step: int = 0,
    ) -> np.ndarray:
        """Import SPIN's (N, 82) fits with keep-best; mask of rows written (NaN-error rows are skipped)."""
        from spin_ray.store.files import read_npy_fits

        fits, errs = read_npy_fits(Path(path), errors)
        keep = ~np.isnan(errs)
        rows = np.flatnonzero(keep)
        written = np.zeros(fits.shape[0], dtype=bool)
        written[rows] = self.keep_best(
            dataset, rows, fits[rows, :POSE_SIZE], fits[rows, POSE_SIZE:], errs[rows], step, source
        )
        return written

    def export_parquet(self, path: str | Path, datasets: Sequence[str] | None = None) -> Path:
        """Write every field of every record (or of `datasets`) to a Parquet file, by dataset and index."""
        from spin_ray.store.files import write_parquet

        names = list(datasets) if datasets is not None else self.datasets()
        for name in names:
            self._require_dataset(name)
        meta = self.meta
        return write_parquet(
            Path(path), {name: self.read_all(name) for name in names}, self.namespace, meta
        )

    def import_parquet(self, path: str | Path) -> int:
        """Import a Parquet export with keep-best (every field kept as written); number of rows written."""
        from spin_ray.store.files import read_parquet

        file_hash, tables = read_parquet(Path(path))
        if file_hash is not None and file_hash != self.address.body_model_hash:
            raise FitStoreError(
                f"{path} holds fits of body model {file_hash}, but namespace {self.namespace!r} is "
                f"opened for body model {self.address.body_model_hash}: import into a namespace of that body model"
            )
        total = 0
        for dataset, cols in tables.items():
            batch = _validate_rows(
                dataset, cols["index"], cols["pose"], cols["betas"], cols["error"], cols["step"],
                cols["source"], times=cols["time"], updates=cols["updates"],
            )  # fmt: skip
            total += int(self._write(batch, dataset).sum())
        return total


def resolve_url(config: "StoreConfig") -> str | None:
    """The Redis URL a store config names (store.url, else the variable store.url_env), or None."""
    if config.url:
        return config.url
    if config.url_env:
        value = os.environ.get(config.url_env)
        if not value:
            raise FitStoreError(
                f"store.url_env names {config.url_env}, but that environment variable is empty or unset"
            )
        return value
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _pairs_to_arrays(pairs: list[tuple[bytes, float]]) -> tuple[np.ndarray, np.ndarray]:
    indices = np.fromiter((int(m) for m, _ in pairs), dtype=np.int64, count=len(pairs))
    errors = np.fromiter((s for _, s in pairs), dtype=np.float64, count=len(pairs))
    return indices, errors


def _progress_from_stats(raw: dict[bytes, bytes]) -> list[tuple[int, int, float]]:
    counts = {int(k[2:]): int(v) for k, v in raw.items() if k.startswith(b"n:")}
    sums = {int(k[2:]): float(v) for k, v in raw.items() if k.startswith(b"s:")}
    return [(s, counts[s], sums.get(s, 0.0) / counts[s]) for s in sorted(counts) if counts[s] > 0]
