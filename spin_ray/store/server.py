"""Redis for the fit store: a connection by URL, or an embedded redis-server for one machine.

`store_url` is the one set-up every caller uses: the configured server, else an embedded one
(spin_ray/store/embedded.py: 127.0.0.1, AOF, restarted when it dies). `connect` and `redis_errors`
turn every Redis failure into a one-line FitStoreError that never shows the password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from spin_ray.errors import FitStoreError, FitStoreUnavailable, StoreFullError
from spin_ray.redact import redact_url, scrub
from spin_ray.store.cluster import CLUSTER_SCHEMES, connect_cluster, refuse_cluster_node
from spin_ray.store.embedded import RAY_GCS_PORT, EmbeddedRedis, find_redis_server, free_port
from spin_ray.store.tls import TLS_OPTIONS, tls_failure, tls_options

if TYPE_CHECKING:
    from spin_ray.config import StoreConfig

__all__ = ["RAY_GCS_PORT", "URL_ENV", "EmbeddedRedis", "connect", "find_redis_server", "free_port", "is_store_full",
           "redis_errors", "resolve_url", "store_full", "store_url", "url_override"]

log = logging.getLogger(__name__)

# Where the commands (`spin-ray store ...`, `spin-ray fit`) find a Redis URL that no flag or config names.
URL_ENV = "SPIN_RAY_REDIS_URL"


def connect(url: str, timeout_s: float = 30.0) -> redis.Redis:
    """Open a client for `url`, retrying with backoff until it answers PING.

    redis:// rediss:// (TLS) unix:// name one Redis node; redis+cluster:// rediss+cluster:// a Redis Cluster
    (`host:port,host:port,...`: the start nodes), through redis-py's cluster client (store/cluster.py).
    TLS options (a private CA, a client certificate) go in the query string: store/tls.py.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in CLUSTER_SCHEMES:
        return connect_cluster(url, timeout_s)
    if scheme not in ("redis", "rediss", "unix"):
        raise FitStoreError(
            f"Redis URL {redact_url(url)!r} must start with redis://, rediss:// (TLS), unix://, "
            f"or redis+cluster:// / rediss+cluster:// for a Redis Cluster"
        )
    tls_options(url, only_tls=False)
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=min(timeout_s, 5.0), socket_timeout=max(timeout_s, 5.0)
        )
    except ValueError as err:
        raise FitStoreError(f"bad Redis URL {redact_url(url)!r}: {scrub(err, url)} (in a password, percent-encode "
                            f"# / ? @ and other URL characters, e.g. # as %23)") from None
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            client.ping()
            refuse_cluster_node(client, url)
            return client
        except redis.AuthenticationError as err:
            # Retrying a wrong password only delays the message.
            raise FitStoreError(
                f"Redis at {redact_url(url)} refused the credentials ({scrub(err, url)}): "
                f"check the user and password in the URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as err:
            failure = tls_failure(err, url)
            if failure is not None:  # a certificate that fails its check does not pass by waiting
                client.close()
                raise failure from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                client.close()
                hint = ""
                if scheme == "redis" and "reset by peer" in str(err):
                    hint = " (a Redis that speaks only TLS resets plain connections: then write rediss://)"
                elif scheme == "rediss" and isinstance(err, redis.TimeoutError):
                    hint = " (rediss:// needs Redis's tls-port: a plain port never finishes the handshake)"
                raise FitStoreError(
                    f"cannot reach Redis at {redact_url(url)} after {timeout_s:g} s "
                    f"({scrub(err, url)}): is the server running and the URL right? "
                    f"(start one with `spin-ray store serve`)"
                    + hint
                ) from None
            log.debug("Redis at %s not answering yet, retrying in %.2f s", redact_url(url), delay)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)
        except ValueError as err:  # e.g. UnicodeError: a host name that cannot be encoded, such as "."
            client.close()
            raise FitStoreError(
                f"bad host in Redis URL {redact_url(url)!r} ({type(err).__name__}: {scrub(first_line(err), url)}): "
                f"give a host name or IP address, and percent-encode # / ? @ in a password"
            ) from None
        except TypeError as err:  # redis-py passes unknown query options on to its connection: a misspelt one
            client.close()
            raise FitStoreError(
                f"Redis URL {redact_url(url)!r} has an option the Redis client does not take ({scrub(err, url)}): "
                f"check its spelling (TLS: {', '.join(TLS_OPTIONS)})"
            ) from None
        except redis.RedisError as err:  # e.g. InvalidResponse: something else listens on that port
            client.close()
            raise FitStoreError(
                f"the server at {redact_url(url)} does not answer as Redis does ({type(err).__name__}: "
                f"{scrub(first_line(err), url)}): is that the right host and port?"
            ) from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's text, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_store_full(err: BaseException) -> bool:
    """Whether Redis refused a write for want of memory (`maxmemory` reached with the noeviction policy).

    A plain command's refusal arrives as OutOfMemoryError; one inside a Lua script as a ResponseError
    "Error running script ... -OOM command not allowed when used memory > 'maxmemory'".
    """
    return isinstance(err, redis.exceptions.OutOfMemoryError) or (
        isinstance(err, redis.ResponseError) and "OOM command not allowed" in str(err)
    )


def store_full(url: str, what: str, written: int | None = None) -> StoreFullError:
    """The one error for a full Redis: what stopped, how many rows went in first, and what to do."""
    went_in = f" after {written} row(s) went in" if written is not None else ""
    return StoreFullError(
        f"Redis at {redact_url(url)} is full: {what} stopped{went_in}; it has reached its maxmemory and its "
        f"maxmemory-policy (noeviction) refuses writes, so running again cannot help: raise maxmemory "
        f"(CONFIG SET maxmemory, or redis.conf), free memory (delete namespaces you no longer need), "
        f"or use another server",
        written,
    )


@contextlib.contextmanager
def redis_errors(url: str, what: str) -> Iterator[None]:
    """Turn Redis failures into FitStoreError with the (redacted) address and the operation."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise FitStoreUnavailable(
            f"lost Redis at {redact_url(url)} while {what}: {type(err).__name__}: "
            f"{scrub(first_line(err), url)} (is the server still running?)"
        ) from None
    except redis.ResponseError as err:
        if is_store_full(err):
            raise store_full(url, what) from None
        raise FitStoreError(f"Redis refused a command while {what}: {scrub(first_line(err), url)}") from None
    except redis.RedisError as err:
        raise FitStoreError(f"Redis at {redact_url(url)} failed while {what}: {type(err).__name__}: "
                            f"{scrub(first_line(err), url)}") from None


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


def url_override(flag: str | None, config: "StoreConfig | None" = None) -> str | None:
    """A command's Redis URL: its flag, else $SPIN_RAY_REDIS_URL unless the config names a server of its own; or None."""
    if flag:
        return flag
    if config is not None and (config.url or config.url_env):
        return None  # resolve_url reads the config's
    return os.environ.get(URL_ENV) or None


@contextlib.contextmanager
def store_url(config: "StoreConfig", data_dir: Path) -> Iterator[str]:
    """The Redis URL for a run: the configured server's, else an embedded server's in `data_dir` for the block."""
    url = resolve_url(config)
    if url is not None:
        yield url
        return
    with EmbeddedRedis(data_dir) as server:
        log.info("embedded redis-server on %s (data in %s)", redact_url(server.url), server.data_dir)
        yield server.url
