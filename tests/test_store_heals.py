"""The embedded redis-server heals: killed, it comes back on the same port from its AOF, within a bound."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np

from spin_ray.store.embedded import EmbeddedRedis
from spin_ray.store.fit_store import FitStore

from conftest import TEST_BODY_HASH


def _wait_for_new_pid(server: EmbeddedRedis, old_pid: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = server.pid
        if pid is not None and pid != old_pid and server.running:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"the server was not restarted within {timeout_s} s")


def test_sigkilled_three_times_it_comes_back_with_every_acknowledged_fit(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spin_ray.store.embedded")
    rng = np.random.default_rng(0)
    pose = rng.normal(size=(3 * 32, 72)).astype(np.float32)
    betas = rng.normal(size=(3 * 32, 10)).astype(np.float32)
    error = rng.uniform(1, 50, size=3 * 32)
    with EmbeddedRedis(tmp_path) as server:
        port, url = server.port, server.url
        store = FitStore.open(url, "heal", body_model_hash=TEST_BODY_HASH)
        for kill in range(3):
            rows = np.arange(kill * 32, (kill + 1) * 32)
            assert store.keep_best("coco", rows, pose[rows], betas[rows], error[rows], kill, "loop").all()
            time.sleep(1.2)  # acknowledged more than a second before the kill: on disk (appendfsync everysec)
            old_pid = server.pid
            os.kill(old_pid, signal.SIGKILL)
            _wait_for_new_pid(server, old_pid)
            assert server.port == port and server.url == url
            # The same client reconnects on its own; every fit written so far is back.
            got = store.read("coco", np.arange((kill + 1) * 32))
            assert got.found.all()
            np.testing.assert_array_equal(got.pose, pose[: (kill + 1) * 32])
            np.testing.assert_array_equal(got.error, error[: (kill + 1) * 32])
        assert server.restarts == 3
        store.close()
    restarts = [r.getMessage() for r in caplog.records if "restarting it from its AOF" in r.getMessage()]
    assert len(restarts) == 3 and all("killed by SIGKILL" in m for m in restarts)
    assert sum("is back" in r.getMessage() for r in caplog.records) == 3


def test_restarts_are_bounded_and_the_last_exit_says_what_to_do(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spin_ray.store.embedded")
    server = EmbeddedRedis(tmp_path, max_restarts=1, restart_window_s=60).start()
    try:
        first = server.pid
        os.kill(first, signal.SIGKILL)
        second = _wait_for_new_pid(server, first)
        os.kill(second, signal.SIGKILL)
        assert server.wait() == -signal.SIGKILL  # down for good: the bound was reached
        assert not server.running and server.restarts == 1
        gave_up = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(gave_up) == 1
        assert "not restarting it again" in gave_up[0].getMessage()
        assert f"spin-ray store serve --data-dir {tmp_path}" in gave_up[0].getMessage()
    finally:
        server.stop()


def test_a_stop_is_not_a_crash(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spin_ray.store.embedded")
    server = EmbeddedRedis(tmp_path).start()
    pid = server.pid
    server.stop()
    time.sleep(0.3)  # longer than the watchdog's period
    assert server.pid is None and server.restarts == 0
    assert not any("restarting" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z")


# A run that writes 4 fits to its embedded server, says so, and waits to be killed.
_LEFT_BY = """
import sys
import numpy as np
from spin_ray.store.embedded import EmbeddedRedis
from spin_ray.store.fit_store import FitStore
server = EmbeddedRedis(sys.argv[1]).start()
store = FitStore.open(server.url, "left", body_model_hash=sys.argv[2])
store.keep_best("coco", np.arange(4), np.ones((4, 72)), np.zeros((4, 10)), np.ones(4), 1, "loop")
print(server.pid, flush=True)
sys.stdin.read()
"""


def test_a_server_left_by_a_killed_owner_is_stopped_before_a_new_one_starts(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spin_ray.store.embedded")
    run = subprocess.Popen([sys.executable, "-c", _LEFT_BY, str(tmp_path), TEST_BODY_HASH],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        leftover_pid = int(run.stdout.readline())
    finally:
        run.kill()  # SIGKILL: no clean-up, its redis-server is left running (and its data-dir lock dies with it)
        run.wait()
    assert os.path.exists(f"/proc/{leftover_pid}")
    with EmbeddedRedis(tmp_path) as server:
        assert server.pid != leftover_pid
        assert any(f"pid {leftover_pid}" in r.getMessage() and "left running" in r.getMessage() for r in caplog.records)
        # Stopped with SIGTERM: a clean exit that flushed the AOF.
        assert "ready to exit" in (tmp_path / "redis.log").read_text().lower()
        again = FitStore.open(server.url, "left", body_model_hash=TEST_BODY_HASH)
        assert again.read("coco", np.arange(4)).found.all()
        again.close()
    assert not os.path.exists(f"/proc/{leftover_pid}") or open(f"/proc/{leftover_pid}/stat").read().split(") ")[-1][0] in "ZX"
