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


def each_key(client: redis.Redis, keys: list[str], command: str, *args: object, **kwargs: object) -> list:
    """The reply of `command(key, *args, **kwargs)` for every key, pipelined: one round trip (a shard each on a cluster)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        getattr(pipe, command)(key, *args, **kwargs)
    return pipe.execute()


def merge_ranked(parts: list[list[tuple[bytes, float]]], highest: bool) -> list[tuple[bytes, float]]:
    """The (member, score) pairs of several sorted sets in the order one set holding them all would give.

    Redis orders a sorted set by score, then by member as bytes; its reverse range is the exact reverse.
    """
    merged = sorted((pair for part in parts for pair in part), key=lambda p: (p[1], p[0]))
    return merged[::-1] if highest else merged


def merge_stats(parts: list[dict[bytes, bytes]]) -> dict[bytes, bytes]:
    """One stats hash from the stats hashes of a dataset's index groups: counts and error sums added up."""
    counts: dict[bytes, int] = {}
    sums: dict[bytes, float] = {}
    for raw in parts:
        for k, v in raw.items():
            if k.startswith((b"src:", b"n:")):
                counts[k] = counts.get(k, 0) + int(v)
            elif k.startswith(b"s:"):
                sums[k] = sums.get(k, 0.0) + float(v)
    return {**{k: str(v).encode() for k, v in counts.items()}, **{k: repr(v).encode() for k, v in sums.items()}}


def dataset_stats(
    client: redis.Redis, name: str, index_keys: list[str], stats_keys: list[str], threshold: float
) -> DatasetStats:
    """Count, sources, error quantiles, fits above `threshold` and progress of one dataset over its index groups.

    A key of the wrong Redis type is named in `problems` and what it would give is left out, so one
    damaged key does not hide the rest of the namespace.
    """
    problems: list[str] = []
    pipe = client.pipeline(transaction=False)
    for key in index_keys:
        pipe.zcard(key)
        pipe.zcount(key, f"({threshold!r}", "+inf")
        pipe.zcount(key, "-inf", "(0")  # errors no sound record has: cheap signs of corruption
        pipe.zcount(key, "+inf", "+inf")
    for key in stats_keys:
        pipe.hgetall(key)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception) and "WRONGTYPE" not in str(reply):
            raise reply
    count = above = bad = 0
    readable: list[str] = []
    for i, key in enumerate(index_keys):
        n, hi, negative, infinite = replies[4 * i : 4 * i + 4]
        if isinstance(n, Exception):
            problems.append(wrong_type(key, n, "sorted set"))
            continue
        readable.append(key)
        count, above, bad = count + int(n), above + int(hi), bad + int(negative) + int(infinite)
    raw_parts = []
    for key, raw in zip(stats_keys, replies[4 * len(index_keys) :]):
        if isinstance(raw, Exception):
            problems.append(wrong_type(key, raw, "hash") + " (sources and progress unknown)")
        else:
            raw_parts.append(raw)
    raw_stats = merge_stats(raw_parts)
    quantiles = _quantiles(client, readable, count)
    by_source = {k.decode()[4:]: int(v) for k, v in raw_stats.items() if k.startswith(b"src:") and int(v) > 0}
    return DatasetStats(
        dataset=name,
        count=count,
        by_source=by_source,
        error_quantiles=quantiles,
        above_threshold=above,
        bad_errors=bad,
        threshold=threshold,
        improvements_by_step=progress_from_stats(raw_stats),
        problems=problems,
    )


def _quantiles(client: redis.Redis, index_keys: list[str], count: int) -> dict[str, float]:
    """The errors at QUANTILES ranks over the union of the indexes: by rank in one index, else over every score."""
    if not count:
        return {}
    ranks = [int(round(q * (count - 1))) for q in QUANTILES]
    pipe = client.pipeline(transaction=False)
    if len(index_keys) == 1:
        for rank in ranks:
            pipe.zrange(index_keys[0], rank, rank, withscores=True)
        return {f"p{100 * q:g}": float(r[0][1]) for q, r in zip(QUANTILES, pipe.execute()) if r}
    for key in index_keys:
        pipe.zrange(key, 0, -1, withscores=True)
    scores = np.sort(np.fromiter((s for part in pipe.execute() for _, s in part), dtype=np.float64))
    return {f"p{100 * q:g}": float(scores[r]) for q, r in zip(QUANTILES, ranks) if r < scores.size}
