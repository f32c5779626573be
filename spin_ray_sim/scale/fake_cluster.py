"""A local Ray cluster whose worker nodes are simulated, added and removed by Ray's real autoscaler.

Ray's fake multi-node provider (`ray.autoscaler._private.fake_multi_node`, enabled by
`RAY_FAKE_CLUSTER=1`) "launches" a node of a declared type by starting another raylet on this
machine that advertises the type's resources (e.g. `{"GPU": 2}` with no GPU present). The monitor
process runs the real autoscaler against it: pending actors that need GPUs add nodes; nodes idle for
`idle_timeout_minutes` are removed.

Ray's own `AutoscalingCluster` test helper runs `ray stop --force` (which kills every Ray on the
machine, other people's included) and reads a YAML file that the installed wheel does not ship, so
this class writes its own config and owns exactly one process group: the head started by
`ray start --block` in a new session, and every node, agent and worker the autoscaler starts under it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spin_ray.errors import PipelineError

HEAD_NODE_TYPE = "ray.head.default"
READY_LINE = "Ray runtime started"


@dataclass(frozen=True)
class NodeType:
    """A kind of simulated worker node: the resources it advertises and how many the autoscaler may start."""

    resources: dict[str, float]
    max_workers: int
    min_workers: int = 0
    object_store_bytes: int = 80 * 2**20


@dataclass
class FakeClusterSpec:
    """Sizes and timings of a fake autoscaling cluster (kept small: every node is a raylet and agents)."""

    node_types: dict[str, NodeType]
    head_cpus: int = 1
    head_object_store_bytes: int = 100 * 2**20
    idle_timeout_s: float = 6.0
    upscaling_speed: float = 1.0
    extra_env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def autoscaler_config(spec: FakeClusterSpec, gcs_address: str) -> dict:
    """The cluster config the fake provider and the autoscaler read."""
    types: dict[str, dict] = {
        HEAD_NODE_TYPE: {"resources": {"CPU": spec.head_cpus}, "node_config": {}, "max_workers": 0},
    }
    for name, node in spec.node_types.items():
        types[name] = {
            "resources": {**node.resources, "object_store_memory": node.object_store_bytes},
            "node_config": {},
            "min_workers": node.min_workers,
            "max_workers": node.max_workers,
        }
    empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                   "rsync_exclude", "rsync_filter")
    return {
        "cluster_name": "spin-ray-fake",
        "max_workers": sum(n.max_workers for n in spec.node_types.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Without it, fake nodes join a GCS on 6379, which may be someone else's Ray or Redis.
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "upscaling_speed": spec.upscaling_speed,
        "idle_timeout_minutes": spec.idle_timeout_s / 60.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


class FakeAutoscalingCluster:
    """Start, inspect and stop one fake autoscaling cluster under `root` (a short path: Ray puts sockets there)."""

    def __init__(self, spec: FakeClusterSpec, root: Path, start_timeout_s: float = 180.0) -> None:
        self.spec = spec
        self.root = Path(root)
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._head: subprocess.Popen | None = None
        self._log = self.root / "head.log"

    @property
    def temp_dir(self) -> Path:
        """Ray's temp dir of this cluster (sessions, logs, sockets of every node)."""
        return self.root / "ray"

    def start(self) -> str:
        """Start the head (and its autoscaler); return the address to pass to ray.init."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "autoscaler.json"
        config.write_text(json.dumps(autoscaler_config(self.spec, self.address), indent=1))
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_cli), "start", "--head", "--block", f"--port={self.port}",
            f"--num-cpus={self.spec.head_cpus}", "--num-gpus=0",
            f"--object-store-memory={self.spec.head_object_store_bytes}",
            f"--autoscaling-config={config}", f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false", "--dashboard-port=0",
            # Fixed defaults (10001, 52365) would collide with any other head on this machine.
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        ]  # fmt: skip
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Token auth would need a token file shared with the driver; this cluster is local and private.
            "RAY_AUTH_MODE": "disabled",
            **self.spec.extra_env,
        }
        with open(self._log, "w") as log:
            self._head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while READY_LINE not in self._log.read_text(errors="replace"):
            if self._head.poll() is not None or time.monotonic() > deadline:
                tail = self._log.read_text(errors="replace")[-2000:]
                self.stop()
                raise PipelineError(f"fake Ray cluster did not start (see {self._log}):\n{tail}")
            time.sleep(0.5)
        return self.address

    def _cluster_processes(self) -> Iterator[tuple[int, list[str]]]:
        """(pid, argv) of every process of this cluster (its temp dir is in their command lines)."""
        marker = str(self.temp_dir)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # the process ended while we looked
                continue
            if any(marker in arg for arg in argv):
                yield int(entry.name), argv

    def raylet_pids(self) -> dict[str, int]:
        """Node id -> raylet process id, for every node of this cluster still running."""
        pids: dict[str, int] = {}
        for pid, argv in self._cluster_processes():
            if argv[0].endswith("/raylet"):
                for arg in argv[1:]:
                    if arg.startswith("--node_id="):
                        pids[arg.split("=", 1)[1]] = pid
        return pids

    def kill_node(self, node_id: str) -> int:
        """SIGKILL a node's raylet and every process under it at once, as a vanishing machine; count killed."""
        raylet = self.raylet_pids().get(node_id)
        if raylet is None:
            raise PipelineError(f"no running raylet for node {node_id} in the fake cluster under {self.temp_dir}")
        # Workers and agents are the raylet's descendants; their titles are renamed (ray::Actor), so no cmdline match.
        victims = [raylet, *_descendants(raylet)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)

    def stop(self, grace_s: float = 45.0) -> None:
        """Stop the head gracefully, then kill whatever is left in its process group (fake nodes outlive it)."""
        head, self._head = self._head, None
        if head is None:
            return
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)

    def __enter__(self) -> FakeAutoscalingCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _descendants(root: int) -> list[int]:
    """Process ids below `root` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name before it may hold spaces, so split after its ')'.
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
