"""The fit store: Redis-backed fit dictionary with keep-best writes, an embedded server, curation."""

from spin_ray.store.fit_store import FitStore, StoredFits, resolve_url
from spin_ray.store.records import SCHEMA_VERSION, FitStoreAddress
from spin_ray.store.server import EmbeddedRedis, connect

__all__ = ["SCHEMA_VERSION", "EmbeddedRedis", "FitStore", "FitStoreAddress", "StoredFits", "connect", "resolve_url"]
