"""Shared pytest fixtures. Each block is self-contained; add new fixtures in their own block."""

from __future__ import annotations

import os
import uuid

# -- SMPLify's compiled stages: off for the suite, on where a test asks (`compiling`) -------------------
# fitting.compiled (the default) makes every new process compile or load its programs on its first fit
# (30-60 s cold, seconds warm); the suite starts hundreds of short processes and fits a few samples in each.
# torch's own switch turns the compiled stages into the eager ones here and in every child process (Ray's
# workers, CLI subprocesses): they are then `spin` to the bit. tests/test_compiled_stage.py and the tests
# that use `compiling` run the compiled path itself.
os.environ["TORCH_COMPILE_DISABLE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch._dynamo.config.disable = True


@pytest.fixture
def compiling():
    """torch.compile on in this process for one test (the suite turns it off); children keep it off."""
    with torch._dynamo.config.patch(disable=False):
        yield

# -- hypothesis: the same examples on every run, so CI fails only on a change; explore with ----------
# `pytest --hypothesis-profile=explore` (random, more examples) and add what it finds as @example.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000, database=None)
settings.load_profile("ci")

# -- fit store: a real redis-server for the session, a fresh namespace per test ----------------------

TEST_BODY_HASH = "0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real embedded redis-server (127.0.0.1, free port, AOF) shared by the session."""
    from spin_ray.store.server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def fit_store(redis_server):
    """A writable FitStore in a namespace of its own on the session's server."""
    from spin_ray.store.fit_store import FitStore

    store = FitStore.open(redis_server.url, f"test-{uuid.uuid4().hex[:12]}", body_model_hash=TEST_BODY_HASH)
    yield store
    store.drop()
    store.close()


# -- tiny rendered SPIN-format datasets for training and evaluation tests ----------------------------

TINY_SPLITS = {"tiny-3d": (96, 11), "tiny-itw": (96, 12), "tiny-test": (32, 13)}  # name: (size, seed)


def _render_tiny_split(body, renderer, size: int, seed: int, folder, name: str, with_3d: bool):
    """People from the pose sampler rendered in part colours, filling a 224 px image that is their crop."""
    import cv2
    import numpy as np
    import torch

    from spin_ray.body.body_model import axis_angle_pose_to_rotmats
    from spin_ray.config import CameraConfig
    from spin_ray.data.spin_format import write_spin_npz
    from spin_ray_sim.fitting_problems import synthetic_problems

    camera = CameraConfig()
    problem = synthetic_problems(body, size, torch.Generator().manual_seed(seed), camera)
    palette = np.random.default_rng(0).uniform(0.2, 1.0, (24, 3))
    colours = palette[body.smpl.lbs_weights.argmax(dim=1).numpy()]
    with torch.no_grad():
        out = body(axis_angle_pose_to_rotmats(problem.pose), problem.betas)
    names = []
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(size):
        image = renderer.part_colors(out.vertices[i].numpy(), problem.camera_t[i].numpy(), camera.focal_length,
                                     vertex_colors=colours)
        names.append(f"{name}/{i:04d}.png")
        cv2.imwrite(str(folder / names[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    kp = problem.keypoints_2d.numpy()
    joints = (out.keypoints[:, 25:] + problem.camera_t[:, None]).numpy()
    extra = dict(S=np.concatenate([joints, np.ones((size, 24, 1))], axis=-1), pose=problem.pose.numpy(),
                 shape=problem.betas.numpy(), has_smpl=np.ones(size)) if with_3d else {}
    return write_spin_npz(folder / f"{name}.npz", imgname=names, center=np.full((size, 2), 112.0),
                          scale=np.full(size, 224 / 200), part=kp[:, 25:], openpose=kp[:, :25], **extra)


@pytest.fixture(scope="session")
def tiny_spin_data(tmp_path_factory):
    """name -> .npz path of three tiny rendered datasets (image root: the npz's folder); 3d/test have truth."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.render.renderer import MeshRenderer

    folder = tmp_path_factory.mktemp("tiny_spin")
    body = BodyModel.embedded()
    with MeshRenderer(224, 224, body.faces) as renderer:
        return {name: _render_tiny_split(body, renderer, size, seed, folder, name, with_3d=name != "tiny-itw")
                for name, (size, seed) in TINY_SPLITS.items()}


# -- a local Ray for the session (started by the first test that asks; ~3.5 s) ------------------------


def _start_local_ray():
    import ray

    # address="local": our own Ray, whatever Ray's address file or RAY_ADDRESS name (a dead head's, say).
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)


@pytest.fixture
def ray_local():
    """A local Ray with a small object store, started on first use and shared by the tests that need actors.

    Function-scoped on purpose: a test that needs no other Ray on the machine (the fake autoscaling
    cluster) shuts it down with `no_local_ray`, and the next test that asks starts it again (~3.5 s).
    """
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray


@pytest.fixture
def no_local_ray():
    """Stop this session's local Ray: Ray's fake multi-node cluster fails to start actors beside another Ray."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_the_end():
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# -- fit store on a real local Redis Cluster (3 masters + 3 replicas, tests/cluster_fixture.py) --------
# `store_url` runs a test on one node and on the cluster; `any_fit_store` is `fit_store` on either, with
# 4 index groups on both, so the merging of groups is tested on one node too.

STORE_TEST_GROUPS = 4


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real 3-master, 3-replica Redis Cluster on free ports of 127.0.0.1, shared by the session (~3 s to start)."""
    from cluster_fixture import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(params=["node", "cluster"])
def store_url(request):
    """The URL of the session's single Redis node, or of its Redis Cluster."""
    if request.param == "node":
        return request.getfixturevalue("redis_server").url
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
def any_fit_store(store_url):
    """A writable FitStore in a namespace of its own, with STORE_TEST_GROUPS index groups, on a node or the cluster."""
    from spin_ray.store.fit_store import FitStore

    store = FitStore.open(store_url, f"test-{uuid.uuid4().hex[:12]}", body_model_hash=TEST_BODY_HASH,
                          index_groups=STORE_TEST_GROUPS)
    yield store
    store.drop()
    store.close()
