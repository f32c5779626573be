"""FitStore: the fit dictionary in Redis, with atomic keep-best writes, batch reads and curation queries.

The key layout (schema 2: `spinray:NS:fit:{DS:g}:I` records, `idx:{DS:g}` error indexes and
`stats:{DS:g}` statistics in G index groups, one Redis Cluster slot a group) is in store/keys.py and
docs/STORE.md. Queries over a dataset (worst, best, filter, stats, export) read every group and merge
(store/queries.py), so they answer as one index would.

Long because FitStore is the store's whole public API (writes, reads, curation queries, files) in one
class; its methods are thin, and the work lives in keys.py, writes.py, reads.py, queries.py and exports.py.

A FitStore holds only its address and a client, so it pickles to its address and reconnects on the
other side (a Ray actor or another process gets a working store from the same object).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np
import redis

from spin_ray.errors import FitStoreError
from spin_ray.store import exports, files
from spin_ray.store import records as rec
from spin_ray.store.cluster import is_cluster, retry_through_failover
from spin_ray.store.dataset_names import bind_dataset
from spin_ray.store.decode import decode_records
from spin_ray.store.integrity import load_summary
from spin_ray.store.keys import KeyLayout, datasets_of
from spin_ray.store.lua import INIT_META_LUA, KEEP_BEST_LUA, READ_LUA
from spin_ray.store.namespace import META_FIELDS, check_meta
from spin_ray.store.queries import (
    dataset_stats,
    each_key,
    merge_ranked,
    merge_stats,
    pairs_to_arrays,
    progress_from_stats,
    unlink_with_prefix,
)
from spin_ray.store.reads import read_fields
from spin_ray.store.records import POSE_SIZE, SCHEMA_VERSION, FitStoreAddress, NamespaceMeta, StoredFits, StoreStats
from spin_ray.store.server import connect, redact_url, redis_errors, resolve_url
from spin_ray.store.validation import WriteBatch, as_numpy, group_finite_rows, validate_rows
from spin_ray.store.writes import (
    PIPELINE_CHUNK,
    ReplicaCounts,
    SendResult,
    WriteTarget,
    counting_rows_before,
    script_error,
    send_keep_best,
    stamp_groups,
    wait_for_replicas,
)

if TYPE_CHECKING:
    from spin_ray.config import StoreConfig

# Re-exported: callers import these from here.
__all__ = ["PIPELINE_CHUNK", "FitStore", "StoredFits", "resolve_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")
CLUSTER_INDEX_GROUPS = 16  # index groups of a namespace created on a cluster: ~5 slots per shard of 3 masters


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
        self._cluster = is_cluster(self._client)
        self._replica_counts = ReplicaCounts()
        self._meta: NamespaceMeta | None = None
        self._groups: int | None = None
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
        index_groups: int | None = None,
    ) -> "FitStore":
        """Connect to the namespace at `url`; with a body-model hash the store can write.

        `index_groups` is used only by the writer that creates the namespace (None: 1 on one Redis node,
        CLUSTER_INDEX_GROUPS on a cluster); an existing namespace keeps the groups in its metadata.
        """
        return cls(rec.make_address(url, namespace, body_model_hash, connect_timeout_s, index_groups))

    @classmethod
    def from_config(cls, config: "StoreConfig", body_model_hash: str | None, url: str | None = None) -> "FitStore":
        """Open the store a run config names; `url` (e.g. an embedded server's) overrides the config."""
        url = url or resolve_url(config)
        if url is None:
            raise FitStoreError(
                "the store config names no Redis (store.url and store.url_env are unset): "
                "start an EmbeddedRedis and pass its url, or set store.url"
            )
        return cls.open(url, config.namespace, body_model_hash, config.connect_timeout_s, config.index_groups)

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

    def _redis_errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Turn Redis failures into FitStoreError with the (redacted) address and the operation."""
        return redis_errors(self._url, what)

    # -- keys ---------------------------------------------------------------------------------------

    def _meta_key(self) -> str:
        return f"{self._prefix}meta"

    @property
    def key_prefix(self) -> str:
        """Every key of this namespace starts with this (`spinray:NS:`)."""
        return self._prefix

    def _default_groups(self) -> int:
        if self.address.index_groups is not None:
            return self.address.index_groups
        return CLUSTER_INDEX_GROUPS if self._cluster else 1

    @property
    def layout(self) -> KeyLayout:
        """The namespace's key names: its index groups from the metadata (the default if it has none yet)."""
        if self._groups is None:
            with self._redis_errors("reading namespace metadata"):
                raw = self._client.hget(self._meta_key(), "index_groups")
            if raw is None or not raw.isdigit() or int(raw) < 1:
                return KeyLayout(self.namespace, self._default_groups())  # no namespace yet: ask again next time
            self._groups = int(raw)  # fixed for the namespace's life
        return KeyLayout(self.namespace, self._groups)

    @property
    def is_cluster(self) -> bool:
        """Whether the store is on a Redis Cluster."""
        return self._cluster

    def record_key(self, dataset: str, index: int) -> str:
        """Redis key of the record of sample (dataset, index)."""
        return self.layout.record(dataset, index)

    def index_key(self, dataset: str, index: int) -> str:
        """Redis key of the error index (group) that holds sample (dataset, index)."""
        layout = self.layout
        return layout.index(dataset, layout.group_of(index))

    def stats_key(self, dataset: str, index: int) -> str:
        """Redis key of the statistics hash (group) that counts sample (dataset, index)."""
        layout = self.layout
        return layout.stats(dataset, layout.group_of(index))

    # -- namespace metadata -------------------------------------------------------------------------

    def _open_namespace(self) -> NamespaceMeta | None:
        """Create or check the namespace metadata against this store's schema and body model."""
        if self.address.body_model_hash is not None:
            raw = self._init_meta(
                keys=[self._meta_key()],
                args=[SCHEMA_VERSION, self.address.body_model_hash, rec.format_float(time.time()),
                      self._default_groups()],
            )
        else:
            raw = self._client.hmget(self._meta_key(), *META_FIELDS)
        meta = check_meta(self.namespace, self._meta_key(), raw, self.address.body_model_hash)
        if meta is not None:
            self._groups = meta.index_groups
            asked = self.address.index_groups
            if asked is not None and asked != meta.index_groups:
                log.warning("store.index_groups %d is not used: namespace %r was created with %d index group(s), "
                            "fixed for its life (a new namespace takes the setting)", asked, self.namespace,
                            meta.index_groups)
        return meta

    @property
    def meta(self) -> NamespaceMeta | None:
        """The namespace's metadata, or None for a namespace nothing was written to."""
        if self._meta is None:
            with self._redis_errors("reading namespace metadata"):
                self._meta = self._open_namespace()
        return self._meta

    def bind_dataset(self, dataset: str, fingerprint: str, source: str) -> None:
        """Bind the dataset name to its content's fingerprint here, or raise FitStoreError if another dataset has it."""
        with self._redis_errors(f"binding dataset {dataset}"):
            bind_dataset(self._client, self._prefix, dataset, fingerprint, source)

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
        return self._write(validate_rows(dataset, indices, poses, betas, errors, step, source), dataset)

    def keep_best_samples(
        self, datasets: str | Sequence[str], indices: Any, pose: Any, betas: Any, error: Any, step: int, source: str
    ) -> np.ndarray:
        """keep_best a batch of mixed datasets: non-finite rows skipped, one call per dataset; (B,) mask written."""
        idx = as_numpy(indices, np.int64, "indices").reshape(-1)
        pose_np = as_numpy(pose, np.float32, "pose")
        betas_np = as_numpy(betas, np.float32, "betas")
        error_np = as_numpy(error, np.float64, "error").reshape(-1)
        grouped = group_finite_rows(datasets, idx.shape[0], pose_np, betas_np, error_np)
        written = np.zeros(grouped.size, dtype=bool)
        for dataset, rows in grouped.groups:
            with counting_rows_before(lambda: int(written.sum())):  # a full Redis counts the datasets before
                written[rows] = self.keep_best(
                    dataset, idx[rows], pose_np[rows], betas_np[rows], error_np[rows], step, source
                )
        return written

    def _write(self, batch: WriteBatch, dataset: str) -> np.ndarray:
        """Send a validated batch to the keep-best script (an index group and FITS_PER_CALL fits a call, pipelined)."""
        if self.address.body_model_hash is None:
            raise FitStoreError(
                f"this FitStore for namespace {self.namespace!r} was opened without a body-model hash, "
                f"so it is read-only: pass body_model_hash to write"
            )
        target = WriteTarget(self.layout, dataset, self.address.body_model_hash)
        n = batch.indices.shape[0]
        what = f"writing {n} fits of {dataset}"
        written = np.zeros(n, dtype=bool)
        pending = np.arange(n)
        with self._redis_errors(what):
            for _attempt in range(3):
                sent = self._cluster_retrying(what, lambda: self._send_acknowledged(batch, target, pending, written, what))
                if sent.noscript:
                    # The script cache was flushed (server restart, SCRIPT FLUSH, a promoted replica): reload.
                    self._load_scripts()
                if sent.unstamped:
                    self._stamp_groups(dataset, list(sent.unstamped))
                pending = sent.retry_rows()
                if pending.size == 0:
                    return written
        raise FitStoreError("Redis keeps forgetting the keep-best script or the group stamps (three tries); "
                            "is a SCRIPT FLUSH or a namespace drop looping?")

    def _send_acknowledged(self, batch: WriteBatch, target: WriteTarget, rows: np.ndarray, written: np.ndarray,
                           what: str) -> SendResult:
        """send_keep_best, then on a cluster WAIT for the replicas; a failover during either sends the rows again
        (a fit that went in answers '0' the second time and stays counted), so no fit lost with its master is
        acknowledged."""
        sent = send_keep_best(self._client, self._keep_best.sha, batch, target, rows, written,
                              lambda reply, call: self._raise_script_error(reply, what, written, call))
        if self._cluster and sent.touched:
            wait_for_replicas(self._client, sent.touched, self._replica_counts)
        return sent

    def _stamp_groups(self, dataset: str, groups: list[int]) -> None:
        try:
            stamp_groups(self._client, self.layout, dataset, groups, self.address.body_model_hash)
        except FitStoreError:
            self._meta = None
            raise

    def _cluster_retrying(self, what: str, send: Callable[[], T]) -> T:
        """`send()`; on a cluster, again while a failover is under way (up to connect_timeout_s)."""
        if not self._cluster:
            return send()
        return retry_through_failover(self._client, self._url, what, self.address.connect_timeout_s, send)

    def _raise_script_error(self, reply: Exception, what: str, written: np.ndarray, call: np.ndarray) -> NoReturn:
        self._meta = None  # read again on next use: the reply may say the namespace changed under us
        raise script_error(reply, self._url, self.namespace, self.address.body_model_hash, what, int(written.sum()),
                           call)

    # -- reads --------------------------------------------------------------------------------------

    def read(self, dataset: str, indices: Any, skip_corrupt: bool = False) -> StoredFits:
        """The stored best fits of the samples, one script call per index group, one round trip (per shard);
        missing samples have found=False.

        A corrupt record raises FitStoreError naming it, or with `skip_corrupt` reads as missing and is
        listed in the result's `corrupt`.
        """
        rec.check_name("dataset", dataset)
        idx = as_numpy(indices, np.int64, "indices").reshape(-1)
        layout = self.layout
        what = f"reading {idx.shape[0]} fits of {dataset}"
        with self._redis_errors(what):
            replies = read_fields(self._client, lambda: self._read_batch.sha, layout, dataset, idx, PIPELINE_CHUNK,
                                  self._load_scripts, lambda send: self._cluster_retrying(what, send))
        return decode_records(lambda i: layout.record(dataset, i), f"{self._prefix}fit:{{{dataset}:*}}:*", idx,
                              replies, skip_corrupt)

    # -- curation -----------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of the datasets that have at least one fit in this namespace, sorted."""
        with self._redis_errors("listing datasets"):
            keys = [k.decode() for k in self._client.scan_iter(match=f"{self._prefix}idx:*", count=1000)]
        return datasets_of(keys, self._prefix)

    def require_dataset(self, dataset: str) -> None:
        """Raise FitStoreError if the dataset has no fits here, listing the ones that do."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"checking dataset {dataset}"):
            if self._client.exists(*self.layout.indexes(dataset)):
                return
        known = ", ".join(self.datasets()) or "none"
        raise FitStoreError(
            f"unknown dataset {dataset!r}: namespace {self.namespace!r} has no fits for it (datasets with fits: {known})"
        )

    def count(self, dataset: str) -> int:
        """Number of samples of the dataset with a stored fit."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"counting fits of {dataset}"):
            return sum(int(n) for n in each_key(self._client, self.layout.indexes(dataset), "zcard"))

    def worst(self, dataset: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the k samples with the highest stored errors, worst first."""
        return self._ranked(dataset, k, highest=True)

    def best(self, dataset: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the k samples with the lowest stored errors, best first."""
        return self._ranked(dataset, k, highest=False)

    def _ranked(self, dataset: str, k: int, highest: bool) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise FitStoreError(f"k must be >= 1, got {k}")
        self.require_dataset(dataset)
        with self._redis_errors(f"ranking fits of {dataset}"):
            parts = each_key(self._client, self.layout.indexes(dataset), "zrange", 0, k - 1, desc=highest,
                             withscores=True)
        return pairs_to_arrays(merge_ranked(parts, highest)[:k])

    def filter(self, dataset: str, max_error: float) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of the samples whose stored error is <= max_error, by index."""
        if not np.isfinite(max_error):
            raise FitStoreError(f"max_error must be a finite number, got {max_error}")
        self.require_dataset(dataset)
        with self._redis_errors(f"filtering fits of {dataset}"):
            parts = each_key(self._client, self.layout.indexes(dataset), "zrangebyscore", "-inf", max_error,
                             withscores=True)
        indices, errors = pairs_to_arrays(merge_ranked(parts, False))
        order = np.argsort(indices, kind="stable")
        return indices[order], errors[order]

    def all_errors(self, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, errors) of every stored fit of the dataset, by error."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"reading the error index of {dataset}"):
            parts = each_key(self._client, self.layout.indexes(dataset), "zrange", 0, -1, withscores=True)
        return pairs_to_arrays(merge_ranked(parts, False))

    def progress(self, dataset: str) -> list[tuple[int, int, float]]:
        """(step, fits written at that step, their mean error) for every step that wrote a fit."""
        rec.check_name("dataset", dataset)
        with self._redis_errors(f"reading the progress of {dataset}"):
            return progress_from_stats(merge_stats(each_key(self._client, self.layout.stats_keys(dataset), "hgetall")))

    def stats(self, threshold: float = 100.0, datasets: Sequence[str] | None = None) -> StoreStats:
        """Counts per dataset and source, error quantiles, fits above `threshold`, improvements by step."""
        names = list(datasets) if datasets is not None else self.datasets()
        for name in names:
            self.require_dataset(name)
        layout = self.layout
        with self._redis_errors("computing statistics"):
            out = [
                dataset_stats(self._client, name, layout.indexes(name), layout.stats_keys(name), threshold)
                for name in names
            ]
            last_check = load_summary(self._client, self.namespace)
        return StoreStats(namespace=self.namespace, meta=self.meta, datasets=out, last_check=last_check)

    def drop(self) -> int:
        """Delete every key of this namespace (metadata included); the number of keys deleted."""
        with self._redis_errors(f"dropping namespace {self.namespace}"):
            deleted = unlink_with_prefix(self._client, self._prefix, PIPELINE_CHUNK)
        self._meta = None
        self._groups = None
        return deleted

    # -- files --------------------------------------------------------------------------------------

    def read_all(self, dataset: str, skip_corrupt: bool = False) -> StoredFits:
        """Every stored fit of the dataset, ordered by index; index entries without a record are dropped (counted)."""
        indices, _ = self.all_errors(dataset)
        fits = self.read(dataset, np.sort(indices), skip_corrupt)
        orphans = int((~fits.found).sum()) - len(fits.corrupt)
        return replace(fits.select(fits.found), orphans=orphans)

    def export_npy(self, dataset: str, path: str | Path, size: int | None = None, skip_corrupt: bool = False) -> Path:
        """SPIN's (size, 82) float32 fits file and `<stem>.errors.npy` (no fit: zeros, NaN); see store/exports.py."""
        return exports.export_npy(self, dataset, Path(path), size, skip_corrupt).path

    def import_npy(
        self, dataset: str, path: str | Path, errors: str | Path | float | None = None, source: str = "static", step: int = 0
    ) -> np.ndarray:
        """Import SPIN's (N, 82) fits with keep-best; mask of rows written (NaN-error rows are skipped)."""
        fits, errs = files.read_npy_fits(Path(path), errors)
        rows = np.flatnonzero(~np.isnan(errs))
        written = np.zeros(fits.shape[0], dtype=bool)
        written[rows] = self.keep_best(
            dataset, rows, fits[rows, :POSE_SIZE], fits[rows, POSE_SIZE:], errs[rows], step, source
        )
        return written

    def export_parquet(self, path: str | Path, datasets: Sequence[str] | None = None, skip_corrupt: bool = False) -> Path:
        """Every field of every record (or of `datasets`) to a Parquet file, by dataset and index; see store/exports.py."""
        return exports.export_parquet(self, Path(path), datasets, skip_corrupt).path

    def import_parquet(self, path: str | Path) -> int:
        """Import a Parquet export with keep-best (every field kept as written); number of rows written."""
        file_hash, tables = files.read_parquet(Path(path))
        if file_hash is not None and file_hash != self.address.body_model_hash:
            raise FitStoreError(
                f"{path} holds fits of body model {file_hash}, but namespace {self.namespace!r} is "
                f"opened for body model {self.address.body_model_hash}: import into a namespace of that body model"
            )
        total = 0
        for dataset, cols in tables.items():
            batch = validate_rows(
                dataset, cols["index"], cols["pose"], cols["betas"], cols["error"], cols["step"],
                cols["source"], times=cols["time"], updates=cols["updates"],
            )  # fmt: skip
            with counting_rows_before(lambda: total):  # a full Redis counts the datasets imported before
                total += int(self._write(batch, dataset).sum())
        return total
