"""The embedded redis-server and URL connections: security defaults, durability, clean stops."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spin_ray.errors import FitStoreError
from spin_ray.store.fit_store import FitStore
from spin_ray.config import StoreConfig
from spin_ray.store.server import RAY_GCS_PORT, EmbeddedRedis, connect, free_port, redact_url, store_url

from conftest import TEST_BODY_HASH

PASSWORD = "pw-Zq81-never-shown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it only waits for its parent to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_embedded_server_security_and_durability_settings(redis_server):
    client = connect(redis_server.url, 2)
    config = {k: v for k, v in client.config_get("*").items()}
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert int(config["port"]) == redis_server.port != RAY_GCS_PORT
    assert Path(config["dir"]) == redis_server.data_dir
    client.close()


def test_port_6379_is_refused(tmp_path):
    with pytest.raises(FitStoreError, match="Ray's GCS port"):
        EmbeddedRedis(tmp_path, port=RAY_GCS_PORT)


def test_stop_is_clean_and_idempotent(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    pid = server.pid
    assert _alive(pid)
    server.stop()
    server.stop()
    assert not _alive(pid) and server.pid is None
    assert "ready to accept connections" in (tmp_path / "redis.log").read_text().lower()
    with pytest.raises(FitStoreError, match="not running"):
        _ = server.url


def test_acknowledged_writes_survive_kill_9(tmp_path):
    rng = np.random.default_rng(0)
    pose = rng.normal(size=(512, 72)).astype(np.float32)
    betas = rng.normal(size=(512, 10)).astype(np.float32)
    err = rng.uniform(1, 100, size=512)
    server = EmbeddedRedis(tmp_path, max_restarts=0).start()  # no watchdog: this test restarts it itself
    store = FitStore.open(server.url, "durable", body_model_hash=TEST_BODY_HASH)
    for start in range(0, 512, 64):
        rows = np.arange(start, start + 64)
        assert store.keep_best("coco", rows, pose[rows], betas[rows], err[rows], 1, "loop").all()
    time.sleep(1.2)  # appendfsync everysec: what was acknowledged more than a second ago is on disk
    store.keep_best("coco", [1000], pose[:1], betas[:1], err[:1], 2, "loop")  # may or may not survive
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    server.stop()
    store.close()

    with EmbeddedRedis(tmp_path) as again:
        restored = FitStore.open(again.url, "durable", body_model_hash=TEST_BODY_HASH)
        got = restored.read("coco", np.arange(512))
        assert got.found.all()
        np.testing.assert_array_equal(got.pose, pose)
        np.testing.assert_array_equal(got.error, err)
        assert restored.count("coco") in (512, 513)
        restored.close()


_ATEXIT_SCRIPT = """
import sys
from spin_ray.store.server import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1]).start()
print(server.pid, flush=True)
if sys.argv[2] == "interrupt":
    with server:
        raise KeyboardInterrupt
"""


@pytest.mark.parametrize("how", ["exit", "interrupt"])
def test_server_stops_when_its_owner_exits(tmp_path, how):
    proc = subprocess.run(
        [sys.executable, "-c", _ATEXIT_SCRIPT, str(tmp_path), how], capture_output=True, text=True, timeout=60
    )
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    # SIGTERM made Redis shut down on its own terms (AOF flushed), not a kill.
    assert "ready to exit" in (tmp_path / "redis.log").read_text().lower()


def test_password_is_required_and_never_shown(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with EmbeddedRedis(tmp_path, password=PASSWORD) as server:
        assert oct((tmp_path / "redis.conf").stat().st_mode & 0o777) == "0o600"
        assert PASSWORD not in Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(100).startswith(b"-NOAUTH")
        store = FitStore.open(server.url, "auth", body_model_hash=TEST_BODY_HASH, connect_timeout_s=2)
        assert PASSWORD not in repr(store) and PASSWORD not in repr(store.address)
        # An ACL user named in the URL, as on a shared cluster Redis.
        store.client.acl_setuser("fitter", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
        as_user = FitStore.open(
            f"redis://fitter:{PASSWORD}@127.0.0.1:{server.port}/0", "auth", body_model_hash=TEST_BODY_HASH
        )
        assert as_user.client.acl_whoami() == "fitter" and as_user.meta.body_model_hash == TEST_BODY_HASH
        as_user.close()
        store.close()
        wrong = server.url.replace(PASSWORD, PASSWORD[::-1])
        with pytest.raises(FitStoreError) as refused:
            FitStore.open(wrong, "auth", connect_timeout_s=2)
        assert "refused the credentials" in str(refused.value)
    dead = f"redis://default:{PASSWORD}@127.0.0.1:{free_port()}/0"
    with pytest.raises(FitStoreError) as unreachable:
        connect(dead, 0.3)
    for text in (str(refused.value), str(unreachable.value), caplog.text):
        assert PASSWORD not in text and PASSWORD[::-1] not in text
    assert "redis://default:***@127.0.0.1" in str(unreachable.value)


def test_redact_url():
    assert redact_url("rediss://alice:s3cret@redis.example.org:6380/2") == "rediss://alice:***@redis.example.org:6380/2"
    assert redact_url("redis://:s3cret@10.0.0.1/0") == "redis://:***@10.0.0.1/0"
    assert redact_url("redis://10.0.0.1:7000") == "redis://10.0.0.1:7000"


def test_bad_url_scheme(tmp_path):
    with pytest.raises(FitStoreError, match="must start with redis://"):
        connect("http://user:pw@127.0.0.1:1", 0.1)


def test_a_misspelt_url_option_is_one_line(redis_server):
    """redis-py hands unknown query options to its connection, which raised a TypeError with a traceback."""
    with pytest.raises(FitStoreError, match=r"has an option the Redis client does not take \(.*'ssl_ca_cert'\)"):
        connect(redis_server.url + "?ssl_ca_cert=/etc/ca.pem", 5)
    with pytest.raises(FitStoreError, match="to a plain connection: write rediss://"):
        connect(redis_server.url + "?ssl_ca_certs=/etc/hostname", 5)
    connect(redis_server.url + "?socket_keepalive=true", 5).close()  # the client's own options still pass


def test_store_url_yields_the_configured_server(redis_server, tmp_path, monkeypatch):
    with store_url(StoreConfig(url=redis_server.url), tmp_path / "unused") as url:
        assert url == redis_server.url
    monkeypatch.setenv("STORE_URL_TEST", redis_server.url)
    with store_url(StoreConfig(url_env="STORE_URL_TEST"), tmp_path / "unused") as url:
        assert url == redis_server.url
    assert not (tmp_path / "unused").exists()  # no embedded server was started


def test_store_url_starts_an_embedded_server_for_the_block(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spin_ray.store.server")
    with store_url(StoreConfig(), tmp_path / "redis") as url:
        client = connect(url, 2)
        pid = int(client.info("server")["process_id"])
        client.close()
        assert _alive(pid) and f"embedded redis-server on {url}" in caplog.text
        assert str(tmp_path / "redis") in caplog.text and (tmp_path / "redis" / "redis.log").is_file()
    assert not _alive(pid)
