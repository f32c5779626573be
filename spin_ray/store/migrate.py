"""`spin-ray store migrate`: move a namespace of the schema-1 key layout to schema 2 (store/keys.py), in place.

Schema 1 kept one record `spinray:NS:fit:DS:I`, one index `spinray:NS:idx:DS` and one stats hash
`spinray:NS:stats:DS` per dataset, with no hash tags; it could only live on a single Redis node (its
keep-best script touched keys of many slots). The records themselves are the same in both schemas, so
migration renames them (RENAME: no record is rewritten), fills the grouped indexes from the old index's
scores, and moves the old stats hash to group 0 (the counts of all groups are added up when read), each
group stamped with the metadata. The metadata's schema is set to 2 last: a migration cut short can be run
again (a key already moved is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from spin_ray.errors import FitStoreError
from spin_ray.store.cluster import is_cluster
from spin_ray.store.keys import KeyLayout
from spin_ray.store.records import SCHEMA_VERSION
from spin_ray.store.writes import PIPELINE_CHUNK


@dataclass
class Migration:
    """What a migration moved."""

    namespace: str
    records: int = 0
    index_entries: int = 0
    datasets: int = 0


def _old_dataset(prefix: str, kind: str, key: str) -> str | None:
    """DS of a schema-1 key `PREFIXkind:DS` (None for a schema-2 key, which has a hash tag)."""
    rest = key[len(prefix) + len(kind) + 1 :]
    return None if "{" in rest else rest


def migrate_schema1(client: redis.Redis, namespace: str, groups: int = 1) -> Migration:
    """Move namespace `namespace` from the schema-1 layout to schema 2 with `groups` index groups."""
    layout = KeyLayout(namespace, groups)
    prefix = layout.prefix
    if is_cluster(client):
        raise FitStoreError("a schema-1 namespace lives on a single Redis node: migrate it there, then move it to the "
                            "cluster with `spin-ray store export` / `import` (Parquet keeps every field)")
    schema = client.hget(layout.meta, "schema_version")
    if schema is None:
        raise FitStoreError(f"namespace {namespace!r} has no metadata ({layout.meta}): nothing to migrate")
    if schema != b"1":
        raise FitStoreError(f"namespace {namespace!r} is at schema {schema.decode(errors='replace')}; only schema 1 "
                            f"is migrated (to {SCHEMA_VERSION})")
    done = Migration(namespace)
    body_hash = client.hget(layout.meta, "body_model_hash")
    # Records: rename each schema-1 record to its grouped name.
    batch: list[str] = []
    for raw in client.scan_iter(match=f"{prefix}fit:*", count=1000):
        key = raw.decode()
        dataset, _, member = (_old_dataset(prefix, "fit", key) or "").rpartition(":")
        if dataset and member.isdigit():
            batch.append(key)
        if len(batch) >= PIPELINE_CHUNK:
            done.records += _rename_records(client, layout, prefix, batch)
            batch = []
    done.records += _rename_records(client, layout, prefix, batch)
    # Indexes and stats: one schema-1 pair per dataset.
    for raw in list(client.scan_iter(match=f"{prefix}idx:*", count=1000)):
        dataset = _old_dataset(prefix, "idx", raw.decode())
        if dataset is None:
            continue
        done.datasets += 1
        pairs = client.zrange(raw, 0, -1, withscores=True)
        for start in range(0, len(pairs), PIPELINE_CHUNK):
            pipe = client.pipeline(transaction=False)
            for member, score in pairs[start : start + PIPELINE_CHUNK]:
                pipe.zadd(layout.index(dataset, layout.group_of(int(member))), {member: score})
            pipe.execute()
        done.index_entries += len(pairs)
        old_stats = f"{prefix}stats:{dataset}"
        if client.exists(old_stats):
            client.rename(old_stats, layout.stats(dataset, 0))
        for g in range(groups):
            client.hset(layout.stats(dataset, g), mapping={"schema_version": SCHEMA_VERSION,
                                                           "body_model_hash": body_hash or b""})
        client.delete(raw)
    client.hset(layout.meta, mapping={"schema_version": SCHEMA_VERSION, "index_groups": groups})
    return done


def _rename_records(client: redis.Redis, layout: KeyLayout, prefix: str, keys: list[str]) -> int:
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        dataset, _, member = key[len(prefix) + len("fit:") :].rpartition(":")
        pipe.renamenx(key, layout.record(dataset, int(member)))
    return sum(1 for moved in pipe.execute() if moved)
