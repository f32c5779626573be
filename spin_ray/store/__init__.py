"""The fit store, Redis only: the fit dictionary with keep-best writes and queries, files, the server."""

from spin_ray.store.fit_store import FitStore
from spin_ray.store.records import SCHEMA_VERSION, FitStoreAddress, StoredFits
from spin_ray.store.server import EmbeddedRedis, connect, resolve_url, store_url

__all__ = [
    "SCHEMA_VERSION",
    "EmbeddedRedis",
    "FitStore",
    "FitStoreAddress",
    "StoredFits",
    "connect",
    "resolve_url",
    "store_url",
]
