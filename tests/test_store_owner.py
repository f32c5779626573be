"""An embedded server's data dir has one owner (a lock held for the owner's life); its port and folder are checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spin_ray.errors import DataDirInUseError, FitStoreError
from spin_ray.store.data_dir import _alive  # the same test of a live process the store uses
from spin_ray.store.embedded import EmbeddedRedis

# Owns an embedded server on argv[1] until its stdin closes; prints "OWNER_PID SERVER_PID PORT".
_OWNER_SCRIPT = """
import os, sys
from spin_ray.store.embedded import EmbeddedRedis
with EmbeddedRedis(sys.argv[1]) as server:
    print(os.getpid(), server.pid, server.port, flush=True)
    sys.stdin.read()
"""


def redis_servers_in(data_dir: Path) -> list[int]:
    """Pids of live redis-server processes whose working directory is `data_dir`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                if "redis-server" in cmdline and os.readlink(f"/proc/{entry}/cwd") == str(data_dir) and _alive(int(entry)):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (as root, where modes do not bind: /sys)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys")
    try:
        (folder / "spin-ray-probe").touch()
    except OSError:
        return folder
    pytest.skip("no read-only folder to test with")


@pytest.fixture
def owner(tmp_path):
    """A separate process owning an embedded server on tmp_path/data: (owner pid, server pid, port, data dir)."""
    data_dir = (tmp_path / "data").resolve()
    proc = subprocess.Popen([sys.executable, "-c", _OWNER_SCRIPT, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        owner_pid, server_pid, port = (int(x) for x in proc.stdout.readline().split())
        yield proc, owner_pid, server_pid, port, data_dir
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serve(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spin_ray.cli", "store", "serve", *argv],
                          capture_output=True, text=True, timeout=timeout)


def test_a_second_owner_of_a_data_dir_is_refused_naming_the_live_pid(owner):
    _, owner_pid, server_pid, _, data_dir = owner
    with pytest.raises(DataDirInUseError, match=rf"{data_dir} is in use by process {owner_pid} "):
        EmbeddedRedis(data_dir).start()
    # `spin-ray store serve` on the same folder: one line, exit 1, the first owner's server untouched.
    served = _serve("--data-dir", str(data_dir))
    assert served.returncode == 1 and "serving" not in served.stdout
    assert served.stderr.count("\n") == 1 and "Traceback" not in served.stderr
    assert f"DataDirInUseError: the Redis data dir {data_dir} is in use by process {owner_pid}" in served.stderr
    time.sleep(0.5)  # longer than the watchdog's period: a stopped server would have been restarted by now
    assert redis_servers_in(data_dir) == [server_pid]


def test_a_dead_owners_server_is_stopped_and_its_lock_taken(owner, caplog):
    proc, owner_pid, server_pid, _, data_dir = owner
    os.kill(owner_pid, signal.SIGKILL)  # no clean-up: its redis-server is left running, its lock dies with it
    proc.wait(timeout=10)
    assert redis_servers_in(data_dir) == [server_pid]
    caplog.set_level("WARNING", logger="spin_ray.store.embedded")
    with EmbeddedRedis(data_dir) as server:
        assert redis_servers_in(data_dir) == [server.pid] != [server_pid]
        assert any(f"pid {server_pid}" in r.getMessage() and "left running" in r.getMessage() for r in caplog.records)
        assert (data_dir / "owner.lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_held_for_the_owners_life_and_given_up_at_stop(tmp_path):
    first = EmbeddedRedis(tmp_path).start()
    try:
        with pytest.raises(DataDirInUseError, match=f"in use by process {os.getpid()} "):
            EmbeddedRedis(tmp_path).start()  # a second owner in the same process is refused too
        assert first.running
    finally:
        first.stop()
    with EmbeddedRedis(tmp_path) as second:
        assert second.running


def test_a_data_dir_whose_server_is_down_for_good_can_be_served_by_hand(tmp_path):
    server = EmbeddedRedis(tmp_path, max_restarts=1, restart_window_s=60).start()
    try:
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (server.restarts < 1 or not server.running) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()  # the watchdog gave up and says "start it by hand with spin-ray store serve --data-dir"
        with EmbeddedRedis(tmp_path) as by_hand:
            assert by_hand.running
    finally:
        server.stop()


def test_serve_on_a_port_in_use_names_the_conflict(redis_server, tmp_path):
    served = _serve("--data-dir", str(tmp_path / "a"), "--port", str(redis_server.port), timeout=30)
    assert served.returncode == 1 and "serving" not in served.stdout
    assert served.stderr.count("\n") == 1
    assert (f"port {redis_server.port} on 127.0.0.1 is already in use by another redis-server "
            f"(pid {redis_server.pid})") in served.stderr
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(FitStoreError, match=f"port {port} on 127.0.0.1 is already in use by another program"):
            EmbeddedRedis(tmp_path / "b", port=port).start()
    assert not (tmp_path / "b" / "redis.pid").exists() and redis_servers_in((tmp_path / "b").resolve()) == []


def test_serve_on_a_read_only_folder_is_one_line(tmp_path):
    folder = read_only_folder(tmp_path)
    for data_dir in (folder, folder / "redis"):
        served = _serve("--data-dir", str(data_dir), timeout=30)
        assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
        assert f"cannot use {data_dir} as the Redis data dir" in served.stderr and "choose a writable folder" in served.stderr


def test_a_second_run_on_the_same_output_dir_is_refused_before_it_touches_the_first_runs_server(owner):
    """What `spin-ray fit ... --output-dir D` and launch do: store_url starts an embedded server in D/redis."""
    from spin_ray.config import StoreConfig
    from spin_ray.store.server import store_url

    _, owner_pid, server_pid, port, data_dir = owner
    with pytest.raises(DataDirInUseError, match=f"in use by process {owner_pid} "):
        with store_url(StoreConfig(), data_dir):
            pass
    assert redis_servers_in(data_dir) == [server_pid]
    assert (data_dir / "owner.lock").read_text().strip() == str(owner_pid)
