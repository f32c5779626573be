"""Faults with real processes during a real run: the store's server killed, a fitter killed, the trainer killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import yaml

from spin_ray.store.embedded import EmbeddedRedis
from spin_ray.store.fit_store import FitStore

from test_launch import tiny_config

DATASETS = ("tiny-3d", "tiny-itw")


class RunProcess:
    """`python -m spin_ray.launch` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, config_file, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spin_ray.launch", str(config_file), "--no-progress", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, after: int = 0, timeout_s: float = 180.0) -> re.Match:
        """The first match of `pattern` in the output lines from index `after` on, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.process.poll() is None, f"the run ended before {pattern!r}:\n{self.output[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.output[-3000:]}")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout_s: float = 300.0) -> int:
        code = self.process.wait(timeout_s)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _loop_fits(store: FitStore) -> dict[str, object]:
    return {n: store.read(n, np.arange(96)) for n in DATASETS if n in store.datasets()}


def _write_config(tmp_path, cfg) -> object:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    return path


def test_embedded_store_killed_three_times_the_run_heals_and_keeps_every_acknowledged_fit(tmp_path, tiny_spin_data):
    """No operator: the run restarts its own redis-server from the AOF each time and finishes."""
    cfg = tiny_config(tmp_path, tiny_spin_data, None,
                      train={"steps": 90, "report_images": 0, "checkpoint_every": 1000})
    run = RunProcess(_write_config(tmp_path, cfg))
    try:
        started = run.wait_for(r"embedded Redis \(pid (\d+)\) on 127\.0\.0\.1:(\d+)")
        pid, port = int(started.group(1)), int(started.group(2))
        url = f"redis://127.0.0.1:{port}/0"
        kept: list[dict] = []
        for kill in range(3):
            store = FitStore.open(url, cfg.store.namespace, connect_timeout_s=60)
            wanted = 8 * (kill + 1)  # fresh loop fits between kills
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                fits = _loop_fits(store)
                if sum(int((f.source == "loop").sum()) for f in fits.values()) >= wanted:
                    break
                assert run.process.poll() is None, run.output[-3000:]
                time.sleep(0.3)
            kept.append(_loop_fits(store))  # acknowledged now ...
            store.close()
            time.sleep(1.2)  # ... and more than a second before the kill
            mark = len(run.lines)
            os.kill(pid, signal.SIGKILL)
            pid = int(run.wait_for(r"embedded Redis is back \(pid (\d+)\)", after=mark, timeout_s=30).group(1))
        assert run.finish() == 0, run.output[-3000:]
        assert "90 steps" in run.output
        assert run.output.count("restarting it from its AOF") == 3
    finally:
        run.kill()
    with EmbeddedRedis(tmp_path / "out" / "redis") as again:
        after = FitStore.open(again.url, cfg.store.namespace)
        for snapshot in kept:
            for name, old in snapshot.items():
                new = after.read(name, np.arange(96))
                assert new.found[old.found].all()
                assert (new.error[old.found] <= old.error[old.found] + 1e-9).all()
        after.close()


def _redis_servers_in(data_dir) -> list[int]:
    """Pids of live redis-server processes whose working directory is `data_dir`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if "redis-server" in open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace") \
                    and os.readlink(f"/proc/{entry}/cwd") == str(data_dir):
                if open(f"/proc/{entry}/stat").read().rsplit(") ", 1)[1][0] not in "ZX":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint_and_its_store(tmp_path, tiny_spin_data):
    cfg = tiny_config(tmp_path, tiny_spin_data, None, train={"steps": 40, "report_images": 0, "checkpoint_every": 8})
    config_file = _write_config(tmp_path, cfg)
    checkpoint = tmp_path / "out" / "checkpoints" / "last.pt"
    run = RunProcess(config_file)
    try:
        run.wait_for(r"embedded Redis \(pid \d+\)")
        deadline = time.monotonic() + 240
        while not checkpoint.is_file() and time.monotonic() < deadline:
            assert run.process.poll() is None, run.output[-3000:]
            time.sleep(0.2)
        time.sleep(1.5)
        run.process.send_signal(signal.SIGKILL)  # no handler, no clean-up: the run's redis-server is left
        run.finish()
    finally:
        run.kill()
    data_dir = (tmp_path / "out" / "redis").resolve()
    assert len(_redis_servers_in(data_dir)) == 1
    resumed = RunProcess(config_file, "--resume", str(checkpoint))
    try:
        assert resumed.finish() == 0, resumed.output[-3000:]
    finally:
        resumed.kill()
    assert "left running by an earlier run" in resumed.output
    assert "40 steps" in resumed.output
    assert _redis_servers_in(data_dir) == []  # neither the leftover nor the resumed run's own server
    with EmbeddedRedis(data_dir) as again:
        store = FitStore.open(again.url, cfg.store.namespace)
        assert all(store.read(n, np.arange(96)).found.all() for n in DATASETS)  # static fits + loop fits kept
        store.close()
