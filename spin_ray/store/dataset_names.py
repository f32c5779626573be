"""Which dataset a name stands for in a namespace: each dataset name is bound to its content's fingerprint.

Fits are keyed by (dataset name, row). Two different files under one name would share, and so
swap, each other's fits, so the first run that writes a dataset under a name binds the name to the
dataset's fingerprint (and the file it came from, for messages) in `spinray:NS:datasets`; a later
run that brings other content under the same name is refused before anything is fitted or written.
"""

from __future__ import annotations

import json

import redis

from spin_ray.errors import FitStoreError
from spin_ray.store.records import check_name

# Bind the name if it is free, and return what it is bound to (atomic: two first runs cannot both bind).
# KEYS: the namespace's dataset-binding hash; ARGV: name, binding JSON
BIND_LUA = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""


def bindings_key(prefix: str) -> str:
    """The hash of dataset name -> binding JSON of the namespace with key prefix `prefix` (`spinray:NS:`)."""
    return f"{prefix}datasets"


def _parse(name: str, raw: bytes | None) -> dict[str, str] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return {"fingerprint": str(value["fingerprint"]), "source": str(value.get("source", "?"))}
    except (ValueError, KeyError, TypeError):
        raise FitStoreError(f"the binding of dataset {name!r} is not readable ({raw[:60]!r}); "
                            "`spin-ray store check` and a person should look at it") from None


def bind_dataset(client: redis.Redis, prefix: str, name: str, fingerprint: str, source: str) -> None:
    """Bind `name` to the dataset `fingerprint` (from `source`), or raise FitStoreError if another dataset has it."""
    check_name("dataset", name)
    wanted = json.dumps({"fingerprint": fingerprint, "source": source})
    key = bindings_key(prefix)
    # Read first: a bound name needs no write (a full Redis refuses every write, also one that changes nothing).
    bound = _parse(name, client.hget(key, name)) or _parse(name, client.eval(BIND_LUA, 1, key, name, wanted))
    assert bound is not None  # the script sets it when it is free
    if bound["fingerprint"] != fingerprint:
        raise FitStoreError(
            f"dataset name {name!r} in namespace {prefix.split(':')[1]!r} belongs to another dataset "
            f"({bound['source']}, content {bound['fingerprint'][:12]}), not to {source} (content "
            f"{fingerprint[:12]}): their fits would be mixed up; name this one differently (--dataset-name) "
            "or use another namespace"
        )


def dataset_bindings(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    """Every bound dataset name of the namespace -> {'fingerprint', 'source'}."""
    raw = client.hgetall(bindings_key(prefix))
    return {k.decode(): b for k, v in raw.items() if (b := _parse(k.decode(), v)) is not None}
