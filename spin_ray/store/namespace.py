"""A namespace's metadata: which schema and body model its fits belong to, checked on every open."""

from __future__ import annotations

from collections.abc import Sequence

from spin_ray.errors import FitStoreError
from spin_ray.store import records as rec
from spin_ray.store.records import SCHEMA_VERSION, NamespaceMeta

META_FIELDS: tuple[str, ...] = ("schema_version", "body_model_hash", "created")


def parse_meta(key: str, raw: Sequence[bytes | None]) -> NamespaceMeta:
    """NamespaceMeta from the HMGET of META_FIELDS at `key`, naming the key if a field is bad."""
    return NamespaceMeta(
        schema_version=rec.parse_number(key, "schema_version", raw[0], int),
        body_model_hash=(raw[1] or b"").decode("ascii", errors="replace"),
        created=rec.parse_number(key, "created", raw[2], float),
    )


def check_meta(namespace: str, key: str, raw: Sequence[bytes | None], wanted_hash: str | None) -> NamespaceMeta | None:
    """The namespace's metadata (None if it has none yet), refused if its schema or body model differs."""
    if raw[0] is None:
        return None
    meta = parse_meta(key, raw)
    if meta.schema_version != SCHEMA_VERSION:
        raise FitStoreError(
            f"namespace {namespace!r} was written with fit-store schema {meta.schema_version}, "
            f"this code reads schema {SCHEMA_VERSION}: use another namespace or export/import with matching code"
        )
    if wanted_hash is not None and meta.body_model_hash != wanted_hash:
        raise FitStoreError(
            f"namespace {namespace!r} holds fits of body model {meta.body_model_hash}, "
            f"but this store was opened for body model {wanted_hash}: fits of different body models "
            f"cannot be mixed; use another namespace"
        )
    return meta
