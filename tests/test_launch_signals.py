"""SIGINT and SIGTERM stop `python -m spin_ray.launch` with one line and leave no process behind (Ray, Redis, actors)."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from test_launch import tiny_config


def _descendants(pid):
    try:
        return {(p.pid, p.create_time()) for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(procs):
    left = []
    for pid, created in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def _program_names(procs):
    """The program names of the live processes (one just forked may show no command line yet)."""
    return {parts[1].rsplit("/", 1)[-1] for parts in map(str.split, _alive(procs)) if len(parts) > 1}


def _in_session(sid):
    found = set()
    for pid in psutil.pids():
        try:
            if pid != sid and os.getsid(pid) == sid:
                found.add((pid, psutil.Process(pid).create_time()))
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return found


def _background_launch(tmp_path, cfg):
    """Like `python -m spin_ray.launch run.yaml &` from a shell: its own session, SIGINT ignored at start."""
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.Popen([sys.executable, "-m", "spin_ray.launch", str(config_file), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def _stop_and_check(run, signum, seen):
    seen |= _descendants(run.pid) | _in_session(run.pid)
    assert any("redis-server" in line for line in _alive(seen)), "the run's Redis was not up yet"
    assert any("raylet" in line or "gcs_server" in line for line in _alive(seen)), "the run's Ray was not up yet"
    os.kill(run.pid, signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("spin_ray.launch:")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], err[-3000:]
    deadline = time.monotonic() + 20
    while (_alive(seen) or _in_session(run.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(seen) and not _in_session(run.pid), _alive(seen | _in_session(run.pid))


def _wait_for(run, seen, ready, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1][-3000:]
        seen |= _descendants(run.pid)
        if ready():
            return
        time.sleep(0.3)
    run.kill()
    pytest.fail("the run did not get there in time")


def test_sigint_to_a_background_launch_before_training_leaves_nothing(tmp_path, tiny_spin_data):
    """Fast: stopped as soon as its Redis and Ray are up (the shell started it with SIGINT ignored)."""
    cfg = tiny_config(tmp_path, tiny_spin_data, None, train={"steps": 1000, "report_images": 0,
                                                             "init_store_from_static_fits": False})
    run, seen = _background_launch(tmp_path, cfg), set()
    try:
        _wait_for(run, seen, lambda: {"redis-server", "raylet"} <= _program_names(seen))
        time.sleep(1.0)  # the run is past ray.init, in the driver's wait for the trainer
        _stop_and_check(run, signal.SIGINT, seen)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_training_stops_the_run_and_leaves_nothing(tmp_path, tiny_spin_data, signum):
    cfg = tiny_config(tmp_path, tiny_spin_data, None, train={"steps": 1000, "report_images": 0, "checkpoint_every": 1,
                                                             "init_store_from_static_fits": False})
    run, seen = _background_launch(tmp_path, cfg), set()
    try:
        _wait_for(run, seen, lambda: (tmp_path / "out" / "checkpoints" / "last.pt").is_file())
        _stop_and_check(run, signum, seen)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
