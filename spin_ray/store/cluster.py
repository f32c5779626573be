"""Redis Cluster for the fit store: the `redis+cluster://` URL, redis-py's cluster client, and its bad input.

`redis+cluster://[user:password@]host:port[,host:port...]` (or `rediss+cluster://` for TLS, with the TLS
options of store/tls.py in its query string) names the start nodes of a cluster; the client learns the
rest of the topology from them and follows it when a replica is promoted. Every message shows the URL
with its password masked.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from spin_ray.errors import FitStoreError
from spin_ray.redact import redact_url, scrub
from spin_ray.store.tls import tls_failure, tls_options

log = logging.getLogger(__name__)
T = TypeVar("T")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# What a client meets while a cluster fails over: a dead master, slots without a master for a moment.
CLUSTER_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                     redis.exceptions.TryAgainError, redis.exceptions.ClusterError)
SLOTS = 16384


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, dict | None]:
    """(start nodes, user, password, TLS options or None) of a redis+cluster:// URL; FitStoreError if malformed."""
    scheme, rest = url.split("://", 1)
    credentials, at, hosts = rest.rpartition("@")
    hosts = hosts.split("/", 1)[0].split("?", 1)[0]
    user, colon, password = credentials.partition(":")
    nodes: list[tuple[str, int]] = []
    for part in filter(None, hosts.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FitStoreError(f"bad Redis Cluster URL {redact_url(url)!r}: {part!r} is not host:port "
                                f"(write redis+cluster://[user:password@]host:port[,host:port...])")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise FitStoreError(f"bad Redis Cluster URL {redact_url(url)!r}: it names no host:port")
    if not at:
        user, password = "", ""
    elif not colon:  # one word before @ is a password, as redis:// takes it
        user, password = "", user
    tls = tls_options(url, only_tls=True)
    return nodes, unquote(user) or None, unquote(password) or None, tls if scheme == "rediss+cluster" else None


def uncovered_slots(client: redis.Redis) -> list[tuple[int, int]]:
    """The slot ranges no master serves, as one node sees them."""
    covered = sorted((int(lo), int(hi)) for lo, hi, *_ in client.execute_command("CLUSTER SLOTS"))
    gaps, nxt = [], 0
    for lo, hi in covered:
        if lo > nxt:
            gaps.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt < SLOTS:
        gaps.append((nxt, SLOTS - 1))
    return gaps


def _node_client(url: str, host: str, port: int, user: str | None, password: str | None, tls: dict | None,
                 timeout_s: float) -> redis.Redis:
    return redis.Redis(host=host, port=port, username=user, password=password, ssl=tls is not None, **(tls or {}),
                       socket_connect_timeout=min(timeout_s, 5.0), socket_timeout=max(timeout_s, 5.0))


def _check_start_node(url: str, nodes: list[tuple[str, int]], user, password, tls, timeout_s: float) -> None:
    """Wait for a start node to answer; refuse a single node and a cluster with uncovered slots in one line each."""
    deadline = time.monotonic() + timeout_s
    delay, last = 0.05, None
    while True:
        for host, port in nodes:
            node = _node_client(url, host, port, user, password, tls, timeout_s)
            try:
                if not node.info("cluster").get("cluster_enabled"):
                    raise FitStoreError(
                        f"{redact_url(url)} names {host}:{port}, a single Redis node (cluster mode off), not a Redis "
                        f"Cluster: use redis://{host}:{port} for it")
                gaps = uncovered_slots(node)
                if gaps:
                    names = ", ".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in gaps)
                    raise FitStoreError(
                        f"the Redis Cluster at {redact_url(url)} serves no master for slots {names}: keys in them can "
                        f"be neither read nor written; assign them (redis-cli --cluster fix) or wait for a failover")
                return
            except redis.AuthenticationError as err:
                raise FitStoreError(f"Redis at {redact_url(url)} refused the credentials ({scrub(err, url)}): "
                                    f"check the user and password in the URL") from None
            except (redis.ConnectionError, redis.TimeoutError) as err:
                failure = tls_failure(err, url)
                if failure is not None:
                    raise failure from None
                last = err
            finally:
                node.close()
        if time.monotonic() >= deadline:
            raise FitStoreError(
                f"cannot reach any node of the Redis Cluster at {redact_url(url)} after {timeout_s:g} s "
                f"({scrub(_first_line(last), url) if last else 'no answer'}): are the nodes running and the URL right?"
                + (" (rediss+cluster:// needs the nodes' TLS ports)" if tls is not None else ""))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def connect_cluster(url: str, timeout_s: float = 30.0) -> RedisCluster:
    """A redis-py cluster client for a redis+cluster:// URL, once a start node answers and every slot is served."""
    nodes, user, password, tls = parse_cluster_url(url)
    _check_start_node(url, nodes, user, password, tls, timeout_s)
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], username=user, password=password,
            ssl=tls is not None, **(tls or {}),
            socket_connect_timeout=min(timeout_s, 5.0), socket_timeout=max(timeout_s, 5.0),
            require_full_coverage=True, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 10),
        )
    except redis.RedisError as err:
        raise FitStoreError(f"cannot open the Redis Cluster at {redact_url(url)}: {type(err).__name__}: "
                            f"{scrub(_first_line(err), url)}") from None


def is_cluster(client: redis.Redis) -> bool:
    """Whether the client speaks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def refuse_cluster_node(client: redis.Redis, url: str) -> None:
    """FitStoreError if a plain redis:// URL names a node of a Redis Cluster (its keys would answer MOVED)."""
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except redis.ResponseError:  # a server that hides INFO (ACL) is taken as a single node
        return
    if enabled:
        raise FitStoreError(
            f"{redact_url(url)} is a node of a Redis Cluster, not a single Redis: use "
            f"{redact_url(url).replace('redis://', 'redis+cluster://', 1).replace('rediss://', 'rediss+cluster://', 1)}")


def retry_through_failover(client: RedisCluster, url: str, what: str, timeout_s: float, send: Callable[[], T]) -> T:
    """`send()`, again while a failover is under way (up to `timeout_s`), with the topology learnt anew each time."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return send()
        except CLUSTER_TRANSIENT as err:
            if isinstance(err, redis.AuthenticationError) or time.monotonic() + delay > deadline:
                raise  # a wrong password on a node does not heal by waiting
            log.info("Redis Cluster %s while %s: %s; retrying in %.1f s", redact_url(url), what, type(err).__name__,
                     delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            with contextlib.suppress(redis.RedisError):
                client.nodes_manager.initialize()
