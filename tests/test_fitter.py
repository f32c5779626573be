"""The fitter without Ray: fit_predictions takes a request as it is; FitterActor writes only improvements."""

import math
import uuid

import numpy as np
import pytest
import torch

from pipeline_problems import fast_config, make_request, seed_store
from spin_ray.body.body_model import BodyModel
from spin_ray.errors import ConfigError, PipelineError
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.canonical_fits import fit_predictions
from spin_ray.pipeline.fitter import FitterActor
from spin_ray.pipeline.requests import FitRequest
from spin_ray.store.fit_store import FitStore
from spin_ray.store.records import FitStoreAddress
from spin_ray.fitting.canonical_fits import to_canonical
from spin_ray.fitting.scoring import score_fits

torch.set_num_threads(1)
CFG = fast_config()


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture
def store(redis_server, body):
    store = FitStore.open(redis_server.url, f"fitter-{uuid.uuid4().hex[:10]}", body_model_hash=body.identity)
    yield store
    store.drop()
    store.close()


def test_fit_request_beats_the_prediction_in_the_canonical_frame(body):
    request = make_request(body, CFG.camera, 8, seed=1, augment=True)
    fits = fit_predictions(body, load_pose_prior(CFG.fitting), request, CFG.fitting, CFG.camera)
    as_t = torch.from_numpy
    before = to_canonical(body, as_t(request.pose), as_t(request.betas), as_t(request.keypoints), as_t(request.aug),
                            CFG.camera, CFG.fitting)
    assert torch.isfinite(fits.error).all()
    assert fits.error.mean() < 0.5 * before.error.mean()
    # The error is the canonical one: re-scoring the canonical pose against canonical keypoints gives it back.
    g = torch.Generator().manual_seed(1)
    from spin_ray_sim.fitting_problems import synthetic_problems

    truth = synthetic_problems(body, 8, g, CFG.camera)
    rescored = score_fits(body, fits.pose, fits.betas, truth.keypoints_2d, CFG.camera, CFG.fitting)
    assert torch.allclose(rescored, fits.error, rtol=1e-3, atol=1e-2)


def test_a_nan_prediction_fails_alone(body):
    request = make_request(body, CFG.camera, 4, seed=2)
    pose = request.pose.copy()
    pose[2] = np.nan
    request = FitRequest(**{**request.__dict__, "pose": pose})
    fits = fit_predictions(body, load_pose_prior(CFG.fitting), request, CFG.fitting, CFG.camera)
    assert math.isinf(fits.error[2]) and torch.isfinite(fits.error[[0, 1, 3]]).all()


def test_actor_writes_improvements_only_with_source_loop_and_step(body, store):
    before = seed_store(store, body, CFG.camera, 8, seed=3, dataset="synth")
    fitter = FitterActor(CFG, store.address, "test-0")
    assert fitter.ping() == "test-0" and fitter.pid() > 0
    request = make_request(body, CFG.camera, 8, seed=3, step=12, dataset="synth")
    pose = request.pose.copy()
    pose[5] = np.nan  # one failed sample: never written, counted failed
    report = fitter.fit(FitRequest(**{**request.__dict__, "pose": pose}))
    after = store.read("synth", np.arange(8))
    assert report.fitted == 7 and report.failed == 1 and report.step == 12 and report.actor_id == "test-0"
    assert 0 < report.cpu_s and 0 < report.elapsed_s
    assert 0 < report.written <= 7
    written = after.source == "loop"
    assert written.sum() == report.written and not written[5]
    assert (after.step[written] == 12).all() and (after.step[~written] == 0).all()
    assert (after.error <= before + 1e-9).all() and (after.error[written] < before[written]).all()
    # A second pass over the same request cannot make anything worse.
    fitter.fit(request)
    assert (store.read("synth", np.arange(8)).error <= after.error + 1e-9).all()


def test_actor_splits_a_mixed_batch_by_dataset(body, store):
    fitter = FitterActor(CFG, store.address, "test-1")
    names = ["a", "b", "a", "b"]
    report = fitter.fit(make_request(body, CFG.camera, 4, seed=4, dataset=names))
    assert report.written == 4  # empty store: every finite fit is an improvement
    assert store.read("a", [0, 2]).found.all() and store.read("b", [1, 3]).found.all()
    assert not store.read("a", [1, 3]).found.any()


def test_actor_refuses_a_store_of_another_body_model(redis_server):
    address = FitStoreAddress(url=redis_server.url, namespace="other-body", body_model_hash="0123456789abcdef")
    with pytest.raises(PipelineError, match="fits of different body models cannot be mixed"):
        FitterActor(CFG, address, "x")
    with pytest.raises(PipelineError, match="read-only"):
        FitterActor(CFG, FitStoreAddress(url=redis_server.url, namespace="ro"), "x")


def test_actor_asking_for_cuda_without_a_gpu_says_how_to_fix(redis_server, body):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = fast_config(fitter_device="cuda")
    address = FitStoreAddress(url=redis_server.url, namespace="cuda", body_model_hash=body.identity)
    with pytest.raises(ConfigError, match=r"pipeline.fitter_device: cuda, but no CUDA device .*fitter_num_gpus > 0"):
        FitterActor(cfg, address, "x")
