"""A namespace's metadata: which schema and body model its fits belong to, checked on every open."""

from __future__ import annotations

from collections.abc import Sequence

from spin_ray.errors import FitStoreError
from spin_ray.store import records as rec
from spin_ray.store.records import SCHEMA_VERSION, NamespaceMeta

META_FIELDS: tuple[str, ...] = ("schema_version", "body_model_hash", "created", "index_groups")


def parse_meta(key: str, raw: Sequence[bytes | None]) -> NamespaceMeta:
    """NamespaceMeta from the HMGET of META_FIELDS at `key`, naming the key if a field is bad."""
    if not raw[1]:
        raise FitStoreError(f"{key} has field body_model_hash={raw[1]!r}, expected the hex identity of a body model")
    return NamespaceMeta(
        schema_version=rec.parse_number(key, "schema_version", raw[0], int),
        body_model_hash=raw[1].decode("ascii", errors="replace"),
        created=rec.parse_number(key, "created", raw[2], float),
        index_groups=rec.parse_number(key, "index_groups", raw[3], int),
    )


def check_meta(namespace: str, key: str, raw: Sequence[bytes | None], wanted_hash: str | None) -> NamespaceMeta | None:
    """The namespace's metadata (None if it has none yet), refused if its schema or body model differs.

    The schema is checked before any other field: another schema may name its fields differently,
    and "written with schema 0" says what to do where "field created is missing" does not.
    """
    if raw[0] is None:
        return None
    schema = rec.parse_number(key, "schema_version", raw[0], int)
    if schema == 1:
        raise FitStoreError(
            f"namespace {namespace!r} has the key layout of fit-store schema 1 (one index per dataset); this code "
            f"reads schema {SCHEMA_VERSION} (hash-tagged, grouped indexes): migrate it once, on the same Redis, with "
            f"`spin-ray store migrate --namespace {namespace}`"
        )
    if schema != SCHEMA_VERSION:
        raise FitStoreError(
            f"namespace {namespace!r} was written with fit-store schema {schema}, "
            f"this code reads schema {SCHEMA_VERSION}: use another namespace or export/import with matching code"
        )
    meta = parse_meta(key, raw)
    if wanted_hash is not None and meta.body_model_hash != wanted_hash:
        raise FitStoreError(
            f"namespace {namespace!r} holds fits of body model {meta.body_model_hash}, "
            f"but this store was opened for body model {wanted_hash}: fits of different body models "
            f"cannot be mixed; use another namespace"
        )
    return meta
