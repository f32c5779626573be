"""Resources that can never come fail in seconds naming the key; actor errors read like local ones; a dead head is ignored."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from spin_ray.config import config_from_dict
from spin_ray.errors import ConfigError, PipelineError
from spin_ray.cli.launch import main as launch_main
from spin_ray.pipeline.ray_errors import spin_error
from spin_ray.pipeline.resources import (
    ClusterShape,
    autoscaler_shape,
    check_requests,
    fitter_request,
    run_requests,
)

TESTS = Path(__file__).parent


def _config_file(tmp_path, redis_url, pipeline):
    cfg = config_from_dict({
        "name": "infeasible", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "store": {"url": redis_url, "namespace": "infeasible"},
        "data": {"img_res": 64, "datasets": [{"name": "d", "npz": str(tmp_path / "d.npz"), "image_root": str(tmp_path)}]},
        "train": {"mode": "async", "steps": 2, "batch_size": 4},
        "pipeline": {"num_fitters": 1, **pipeline},
    })
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    return path


@pytest.mark.parametrize("pipeline, key", [
    ({"trainer_num_gpus": 4}, "pipeline.trainer_num_gpus: 4, but the largest node has 0 GPUs"),
    ({"fitter_num_gpus": 4}, "pipeline.fitter_num_gpus: 4, but the largest node has 0 GPUs"),
    ({"fitter_num_cpus": 64}, "pipeline.fitter_num_cpus: 64, but the largest node has 4 CPUs"),
], ids=["trainer-gpus", "fitter-gpus", "fitter-cpus"])
def test_a_request_no_node_can_meet_fails_in_seconds_with_one_line_naming_the_key(
        tmp_path, redis_server, ray_local, capsys, pipeline, key):
    config = _config_file(tmp_path, redis_server.url, pipeline)
    started = time.monotonic()
    assert launch_main([str(config), "--no-progress"]) == 1
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spin_ray.launch: PipelineError: " + key), err


def test_fixed_cluster_arithmetic_and_autoscaler_node_types():
    cfg = config_from_dict({"train": {"mode": "async"}, "pipeline": {"num_fitters": 3, "fitter_num_cpus": 1,
                                                                     "fitter_num_gpus": 1, "trainer_num_cpus": 2}})
    one_gpu_node = ClusterShape([{"CPU": 4.0, "GPU": 1.0}])
    check_requests(run_requests(cfg)[:1] + [fitter_request(cfg.model_copy(update={
        "pipeline": cfg.pipeline.model_copy(update={"num_fitters": 1})}))], one_gpu_node)
    with pytest.raises(PipelineError, match=r"pipeline.num_fitters: 3, but only 1 x a fitter actor"):
        check_requests(run_requests(cfg), one_gpu_node)
    with pytest.raises(PipelineError, match="cannot run side by side"):
        check_requests(run_requests(cfg), ClusterShape([{"CPU": 2.0, "GPU": 1.0}]))
    cpu_only = ClusterShape([{"CPU": 8.0}])
    with pytest.raises(PipelineError, match="pipeline.fitter_num_gpus: 1, but the largest node has 0 GPUs"):
        check_requests(run_requests(cfg), cpu_only)
    # An autoscaler that can add a GPU node type makes the same request one that may come.
    check_requests(run_requests(cfg), ClusterShape([{"CPU": 8.0}], {"gpu": {"CPU": 8.0, "GPU": 1.0}}))
    with pytest.raises(PipelineError, match="largest node has 1 GPUs"):
        check_requests([fitter_request(cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(
            update={"fitter_num_gpus": 2.0})}))], ClusterShape([{"CPU": 8.0}], {"gpu": {"CPU": 8.0, "GPU": 1.0}}))
    check_requests(run_requests(cfg), ClusterShape([{"CPU": 8.0}], unknown_autoscaler=True))


# What Ray 2.60's v1 monitor writes to the GCS (ray_constants.DEBUG_AUTOSCALING_STATUS) in its first loops on a
# new cluster: before its autoscaler has load metrics, a status with no autoscaler_report; then a report whose
# head has not yet heartbeated (no active node).
MONITOR_STARTING = json.dumps({"gcs_request_time": 0.01, "time": 1.0e9, "monitor_pid": 4242,
                               "load_metrics_report": {"usage": {}, "resource_demand": [], "pg_demand": [],
                                                       "request_demand": [], "node_types": []}})
MONITOR_NO_ACTIVE_NODE = json.dumps({"autoscaler_report": {"active_nodes": {}, "pending_nodes": [],
                                                           "pending_launches": {}, "failed_nodes": []}})
MONITOR_FAKE_GPU_CLUSTER = json.dumps({"autoscaler_report": {"active_nodes": {"ray.head.default": 1},
                                                             "pending_nodes": [], "pending_launches": {}}})
MONITOR_FIXED_CLUSTER = json.dumps({"autoscaler_report": {"active_nodes": {"node_5ca1e": 1}, "pending_launches": {}}})
HEAD_ONLY = [{"CPU": 1.0, "object_store_memory": 1e8}]


def _half_gpu_fitter():
    return [fitter_request(config_from_dict({"pipeline": {"fitter_num_gpus": 0.5, "fitter_num_cpus": 0}}))]


def _readers(*statuses, types=None):
    """Status reader giving each status once, then the last one forever; counts its calls."""
    calls = []

    def read_status():
        calls.append(1)
        return statuses[min(len(calls), len(statuses)) - 1]

    return (lambda: types), read_status, calls


@pytest.mark.parametrize("status", [None, MONITOR_STARTING, MONITOR_NO_ACTIVE_NODE],
                         ids=["no-status", "before-first-update", "head-not-active"])
def test_an_autoscaler_that_has_not_reported_its_nodes_is_waited_for_boundedly_then_not_refused(status):
    """Issue 26 item 10: a just-started autoscaling cluster whose monitor had written a status without nodes was
    taken for a fixed cluster ('fitter_num_gpus: 0.5, but the largest node has 0 GPUs (1 live node)')."""
    read_types, read_status, calls = _readers(status)
    started = time.monotonic()
    shape = autoscaler_shape(HEAD_ONLY, 1.5, read_types, read_status)
    waited = time.monotonic() - started
    assert 1.5 <= waited < 4 and len(calls) >= 3  # polled for the whole (bounded) wait
    assert shape.unknown_autoscaler and shape.node_types == {}
    check_requests(_half_gpu_fitter(), shape)  # not refused: the waits stay bounded by startup_timeout_s


def test_the_first_report_of_nodes_decides_as_soon_as_it_comes():
    # The fake (or any launcher) provider's node types: may add anything, so not refused; no full wait.
    read_types, read_status, calls = _readers(MONITOR_STARTING, MONITOR_STARTING, MONITOR_FAKE_GPU_CLUSTER)
    started = time.monotonic()
    shape = autoscaler_shape(HEAD_ONLY, 30, read_types, read_status)
    assert time.monotonic() - started < 5 and len(calls) == 3 and shape.unknown_autoscaler
    check_requests(_half_gpu_fitter(), shape)
    # A report naming only live nodes (the read-only provider): a fixed cluster, refused naming the key.
    read_types, read_status, _ = _readers(MONITOR_STARTING, MONITOR_FIXED_CLUSTER)
    shape = autoscaler_shape(HEAD_ONLY, 30, read_types, read_status)
    assert not shape.unknown_autoscaler
    with pytest.raises(PipelineError, match=r"^pipeline.fitter_num_gpus: 0.5, but the largest node has 0 GPUs"):
        check_requests(_half_gpu_fitter(), shape)
    # Node types reported (autoscaler v2): they count like nodes.
    read_types, read_status, _ = _readers(None, types={"gpu": {"GPU": 2.0}})
    shape = autoscaler_shape(HEAD_ONLY, 30, read_types, read_status)
    assert shape.node_types == {"gpu": {"GPU": 2.0}}
    check_requests(_half_gpu_fitter(), shape)


def test_a_local_rays_own_monitor_report_reads_as_a_fixed_cluster(ray_local):
    """The parser against the real monitor's status: a local Ray's read-only provider names only its live nodes."""
    shape = autoscaler_shape([{"CPU": 1.0}], 60)
    assert not shape.unknown_autoscaler and shape.node_types == {}


def test_the_report_wait_is_a_config_value_with_a_default():
    from spin_ray.config import PipelineConfig

    field = PipelineConfig.model_fields["autoscaler_report_wait_s"]
    assert field.default == 10.0 and field.description
    assert config_from_dict({"pipeline": {"autoscaler_report_wait_s": 0}}).pipeline.autoscaler_report_wait_s == 0
    with pytest.raises(ConfigError, match="autoscaler_report_wait_s"):
        config_from_dict({"pipeline": {"autoscaler_report_wait_s": -1}})


class _Raises:
    def __init__(self, in_init: bool):
        if in_init:
            raise ConfigError("pipeline.fitter_class: broken in __init__")

    def call(self):
        raise ConfigError("pipeline.fitter_class: broken in a method")


def test_a_spin_error_inside_an_actor_reaches_the_driver_as_the_same_one_line_error(ray_local):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    for in_init, message in ((False, "broken in a method"), (True, "broken in __init__")):
        actor = ray_local.remote(num_cpus=0)(_Raises).remote(in_init)
        with pytest.raises(ray_local.exceptions.RayError) as caught:
            ray_local.get(actor.call.remote(), timeout=60)
        err = spin_error(caught.value, "the actor failed")
        assert type(err) is ConfigError and str(err) == f"pipeline.fitter_class: {message}"
        ray_local.kill(actor)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STARTS = """
import sys, time
sys.path.insert(0, {tests!r})
import ray
from spin_ray.config import RunConfig
from spin_ray.pipeline.session import ray_session
from conftest import _start_local_ray
started = time.monotonic()
with ray_session(RunConfig()):
    assert ray.get(ray.put(7)) == 7
print("launch", time.monotonic() - started, flush=True)
started = time.monotonic()
_start_local_ray()
assert ray.get(ray.put(8)) == 8
print("fixture", time.monotonic() - started, flush=True)
ray.shutdown()
"""


def test_a_dead_head_in_rays_address_file_is_ignored_by_launch_the_fixture_and_pool_cli():
    """`ray start --head` then a crash leaves ray_current_cluster naming a dead GCS (Ray's temp dir: $RAY_TMPDIR/ray)."""
    root = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        (Path(root) / "ray").mkdir()
        (Path(root) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
        env = {**os.environ, "RAY_TMPDIR": root, "RAY_ADDRESS": ""}
        done = subprocess.run([sys.executable, "-c", STARTS.format(tests=str(TESTS))], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        times = dict(line.split() for line in done.stdout.splitlines() if line.split()[0] in ("launch", "fixture"))
        # A local Ray starts in 4-8 s on 2 idle cores (12 s seen under load); waiting on the dead head
        # instead takes over 30 s.
        assert float(times["launch"]) < 25 and float(times["fixture"]) < 25, times
        started = time.monotonic()
        pool = subprocess.run([sys.executable, "-m", "spin_ray.cli", "pool", "resize", "2", "--run", "none"],
                              env=env, capture_output=True, text=True, timeout=120)
        # No Ray of this test runs now: the CLI names the dead head (or, if someone else's Ray runs on this
        # machine, that Ray has no such run); it never waits on the dead address.
        assert time.monotonic() - started < 20
        assert pool.returncode == 1 and pool.stderr.strip().splitlines()[-1].startswith("spin-ray pool: PipelineError:")
    finally:
        subprocess.run(["rm", "-rf", root], check=False)
