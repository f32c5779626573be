"""Who may use an embedded server's data dir and port: one live owner (a lock), a dead owner's server stopped.

A run or `spin-ray store serve` owns the data dir while it holds an exclusive flock on `owner.lock`
(the file holds its pid, for messages). The kernel drops the lock when the owner exits however it
exits, so a held lock is a live owner and a second one is refused (two servers on one AOF would
corrupt it); a redis-server still running there without a locked owner was left by a killed run and
is stopped. A port asked for by number is checked before the server starts: a Redis already on it
would answer our PING as if it were ours.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from spin_ray.errors import DataDirInUseError, FitStoreError

log = logging.getLogger(__name__)

PIDFILE = "redis.pid"  # in the data dir, written by redis-server, removed on a clean exit
OWNER_LOCK = "owner.lock"  # in the data dir: flock-ed by the live owner, holds its pid
_OWNER_PID_WAIT_S = 1.0  # a new owner writes its pid just after locking; wait this long to read it


class OwnerLock:
    """The exclusive lock of an embedded server's data dir: flock on `owner.lock`, which holds the owner's pid.

    The kernel drops a flock when its owner exits, however it exits (SIGKILL too), so a held lock
    means a live owner; the file's pid only names it. The descriptor is not inherited by redis-server
    (Python opens it non-inheritable), so a server a dead owner left behind holds no lock.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, data_dir: Path) -> "OwnerLock":
        """Lock `data_dir` (created if missing) for this process; DataDirInUseError naming the live owner's pid."""
        path = data_dir / OWNER_LOCK
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise FitStoreError(
                f"cannot use {data_dir} as the Redis data dir ({err.strerror or type(err).__name__}): "
                f"the server keeps its append-only file there; choose a writable folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FitStoreError(f"cannot lock the Redis data dir {data_dir}: {err.strerror}") from None
            owner = _read_owner_pid(path)
            who = f"process {owner}" if owner is not None else "another process"
            raise DataDirInUseError(
                f"the Redis data dir {data_dir} is in use by {who} (it holds {path.name}; two servers on one "
                f"append-only file would corrupt it): stop that run or `spin-ray store serve` first, connect to "
                f"its server with --url, or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Give the data dir up (the pid is cleared first, so that no reader names a process that left)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor drops the flock


def _read_owner_pid(path: Path) -> int | None:
    """The pid in a held lock file; None if it stays empty (its owner is between locking and writing it)."""
    deadline = time.monotonic() + _OWNER_PID_WAIT_S
    while True:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def check_port_free(port: int) -> None:
    """FitStoreError naming what listens on 127.0.0.1:`port`, if anything does (a Redis there would answer our PING)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As redis-server binds: SO_REUSEADDR, so a port left in TIME_WAIT by our own last server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise FitStoreError(f"cannot use port {port} on 127.0.0.1: {err.strerror}") from None
    raise FitStoreError(f"port {port} on 127.0.0.1 is already in use by {_listener(port)}: choose another --port, "
                        f"or leave it unset for a free one")


def _listener(port: int) -> str:
    """What answers on 127.0.0.1:`port`, in words, as far as a Redis PING tells."""
    # No retries: redis-py's default retries a silent listener for ~10 s.
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    try:
        pid = client.info("server").get("process_id")
        return f"another redis-server (pid {pid})"
    except redis.AuthenticationError:
        return "another redis-server (it asks for a password)"
    except redis.ResponseError as err:
        return "another redis-server (it asks for a password)" if "NOAUTH" in str(err) else "another program"
    except redis.RedisError:
        return "another program"
    finally:
        client.close()


def stop_leftover_server(data_dir: Path, timeout_s: float = 10.0) -> int | None:
    """Stop a redis-server that an earlier owner left running on `data_dir` (SIGTERM: AOF flushed); its pid, if any."""
    try:
        pid = int((data_dir / PIDFILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return None
    # Redis rewrites its command line to "redis-server 127.0.0.1:PORT"; it runs in its data dir.
    if "redis-server" not in cmdline or Path(cwd) != data_dir:
        return None  # the pid was reused by another process
    log.warning("a redis-server (pid %d) left running by an earlier run owns %s; stopping it (its AOF is flushed) "
                "before starting this run's", pid, data_dir)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return pid


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"
