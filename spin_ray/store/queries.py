"""Curation queries over a namespace's keys: dataset names, rankings, quantiles, progress, deletion."""

from __future__ import annotations

import numpy as np
import redis

from spin_ray.store.records import DatasetStats

QUANTILES: tuple[float, ...] = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)


def pairs_to_arrays(pairs: list[tuple[bytes, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, errors float64) from a sorted set's (member, score) pairs."""
    indices = np.fromiter((int(m) for m, _ in pairs), dtype=np.int64, count=len(pairs))
    errors = np.fromiter((s for _, s in pairs), dtype=np.float64, count=len(pairs))
    return indices, errors


def progress_from_stats(raw: dict[bytes, bytes]) -> list[tuple[int, int, float]]:
    """(step, fits written at that step, their mean error) from a stats hash, ordered by step."""
    counts = {int(k[2:]): int(v) for k, v in raw.items() if k.startswith(b"n:")}
    sums = {int(k[2:]): float(v) for k, v in raw.items() if k.startswith(b"s:")}
    return [(s, counts[s], sums.get(s, 0.0) / counts[s]) for s in sorted(counts) if counts[s] > 0]


def names_with_prefix(client: redis.Redis, prefix: str) -> list[str]:
    """The sorted, distinct rests of the key names that start with `prefix`."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    # SCAN may return a key more than once.
    return sorted({k.decode()[len(prefix) :] for k in keys})


def unlink_with_prefix(client: redis.Redis, prefix: str, chunk: int) -> int:
    """Delete every key that starts with `prefix`, `chunk` keys a command; the number deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= chunk:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def wrong_type(key: str, found: Exception, wanted: str) -> str:
    """One line on a key that a command could not read for its type (WRONGTYPE)."""
    return (f"{key} is not a {wanted} ({str(found).split(' ', 1)[0]}), so it cannot be read; "
            f"run `spin-ray store check --repair`")


def dataset_stats(
    client: redis.Redis, name: str, index_key: str, stats_key: str, threshold: float
) -> DatasetStats:
    """Count, sources, error quantiles, fits above `threshold` and progress of one dataset (one round trip).

    A key of the wrong Redis type is named in `problems` and what it would give is left out, so one
    damaged key does not hide the rest of the namespace.
    """
    problems: list[str] = []
    try:
        count = int(client.zcard(index_key))
    except redis.ResponseError as err:
        if "WRONGTYPE" not in str(err):
            raise
        count = 0
        problems.append(wrong_type(index_key, err, "sorted set"))
    pipe = client.pipeline(transaction=False)
    for q in QUANTILES:
        rank = int(round(q * (count - 1))) if count else 0
        pipe.zrange(index_key, rank, rank, withscores=True)
    pipe.zcount(index_key, f"({threshold!r}", "+inf")
    pipe.zcount(index_key, "-inf", "(0")  # errors no sound record has: cheap signs of corruption
    pipe.zcount(index_key, "+inf", "+inf")
    pipe.hgetall(stats_key)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception) and "WRONGTYPE" not in str(reply):
            raise reply
    if problems:  # the index is unreadable: every reply but the stats hash's is its WRONGTYPE error
        replies[:-1] = [[] for _ in QUANTILES] + [0, 0, 0]
    *ranks, above, negative, infinite, raw_stats = replies
    if isinstance(raw_stats, Exception):
        problems.append(wrong_type(stats_key, raw_stats, "hash") + " (sources and progress unknown)")
        raw_stats = {}
    quantiles = {f"p{100 * q:g}": float(r[0][1]) for q, r in zip(QUANTILES, ranks) if count and r}
    by_source = {k.decode()[4:]: int(v) for k, v in raw_stats.items() if k.startswith(b"src:") and int(v) > 0}
    return DatasetStats(
        dataset=name,
        count=count,
        by_source=by_source,
        error_quantiles=quantiles,
        above_threshold=int(above),
        bad_errors=int(negative) + int(infinite),
        threshold=threshold,
        improvements_by_step=progress_from_stats(raw_stats),
        problems=problems,
    )
