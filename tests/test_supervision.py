"""Fit supervisors against a real Redis store, the real body model and real SMPLify."""

import math

import numpy as np
import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.frames import augment_keypoints, augment_pose
from spin_ray.config import FittingConfig, RunConfig
from spin_ray.data.augment import IDENTITY_AUG, AugParams
from spin_ray.fitting.canonical_fits import to_canonical
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.geometry import matrix_to_rot6d, pixels_to_normalised
from spin_ray.model.hmr import HMROutput
from spin_ray.store.fit_store import FitStore
from spin_ray.train.supervision import (
    FitSupervisor,
    NoFits,
    StoreFits,
    SyncFits,
    batch_samples,
)
from spin_ray_sim.fitting_problems import synthetic_problems

torch.set_num_threads(1)
CFG = RunConfig()
N = 8


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def problem(body):
    return synthetic_problems(body, N, torch.Generator().manual_seed(5), CFG.camera, max_yaw=math.radians(25))


@pytest.fixture
def store(redis_server, body, fit_store):
    """A namespace for the real body model (the conftest one is for a fake hash)."""
    s = FitStore.open(redis_server.url, fit_store.namespace + "-body", body_model_hash=body.identity)
    yield s
    s.drop()
    s.close()


def _normalised(keypoints_px):
    crop = CFG.camera.crop_size
    return torch.cat([pixels_to_normalised(keypoints_px[..., :2], crop), keypoints_px[..., 2:]], dim=-1)


def _augs(n, flip_rot):
    return torch.stack([torch.from_numpy(AugParams(flip=f, rot=r, scale=1.1).as_array()) for f, r in flip_rot[:n]])


def _batch(problem, aug, dataset="ds", has_smpl=None):
    """What the loader gives for the problem's samples seen through aug."""
    n = aug.shape[0]
    has_smpl = torch.zeros(n, dtype=torch.bool) if has_smpl is None else has_smpl
    return {
        "keypoints": augment_keypoints(_normalised(problem.keypoints_2d[:n]), aug),
        "aug": aug,
        "pose": torch.where(has_smpl[:, None], augment_pose(problem.pose[:n], aug), torch.zeros(n, 72)),
        "betas": torch.where(has_smpl[:, None], problem.betas[:n], torch.zeros(n, 10)),
        "has_smpl": has_smpl,
        "dataset": [dataset] * n,
        "index": torch.arange(n) + 100,
    }


def _pred(pose, betas, camera_scale=0.9):
    rotmat = axis_angle_pose_to_rotmats(pose)
    n = pose.shape[0]
    return HMROutput(rotmat, matrix_to_rot6d(rotmat).reshape(n, -1), betas,
                     torch.tensor([camera_scale, 0.0, 0.0]).expand(n, 3).clone())


def test_fit_from_flipped_rotated_crop_reads_back_identical_for_the_unaugmented_sample(body, problem, store):
    aug = _augs(N, [(bool(i % 2), 20.0 * (i - 4)) for i in range(N)])
    seen = _batch(problem, aug)
    # A perfect fit found in the augmented crop, canonicalised and written through the store.
    fits = to_canonical(body, augment_pose(problem.pose, aug), problem.betas, seen["keypoints"], aug,
                        CFG.camera, CFG.fitting)
    datasets, indices = batch_samples(seen)
    assert store.keep_best_samples(datasets, indices, fits.pose, fits.betas, fits.error, step=3, source="loop").all()
    plain = _batch(problem, torch.from_numpy(IDENTITY_AUG.as_array()).expand(N, 6).clone())
    targets = StoreFits(store, CFG.fitting, body.num_betas).targets(plain, None, step=4)
    truth = axis_angle_pose_to_rotmats(problem.pose)
    assert torch.allclose(targets.rotmat, truth, atol=1e-4)
    assert torch.allclose(targets.betas, problem.betas, atol=1e-6)
    assert targets.valid.all() and (targets.error < 1.0).all()
    # And read again for the augmented view, the fit comes back in that view's frame.
    again = StoreFits(store, CFG.fitting, body.num_betas).targets(seen, None, step=4)
    assert torch.allclose(again.rotmat, axis_angle_pose_to_rotmats(augment_pose(problem.pose, aug)), atol=1e-4)
    assert store.read("ds", np.arange(N) + 100).source.tolist() == ["loop"] * N


def test_static_reads_what_was_imported_and_applies_the_valid_fit_rule(body, problem, store, tmp_path):
    table = np.zeros((N, 82), np.float32)
    table[:, :72] = problem.pose.numpy()
    table[:, 72:] = problem.betas.numpy()
    errors = np.array([5.0, 50.0, 150.0, np.nan, 5.0, 5.0, 5.0, 5.0])  # 3: failed fit, not imported
    np.save(tmp_path / "fits.npy", table)
    np.save(tmp_path / "fits.errors.npy", errors)
    store.import_npy("ds", tmp_path / "fits.npy", tmp_path / "fits.errors.npy")
    has_smpl = torch.tensor([False, False, False, False, True, False, False, False])
    batch = _batch(problem, _augs(N, [(True, 30.0)] * N), has_smpl=has_smpl)
    batch["index"] = torch.arange(N)  # the rows of the imported file
    supervisor = StoreFits(store, CFG.fitting, body.num_betas)
    assert isinstance(supervisor, FitSupervisor)
    targets = supervisor.targets(batch, None, step=1)
    assert targets.valid.tolist() == [True, True, False, False, True, True, True, True]
    assert targets.error[3] == float("inf") and targets.error[4] == 0.0 and targets.error[2] == 150.0
    expected = axis_angle_pose_to_rotmats(augment_pose(problem.pose, batch["aug"]))
    stored = torch.arange(N) != 3  # row 3 has no fit: its target is unused
    assert torch.allclose(targets.rotmat[stored], expected[stored], atol=1e-4)
    assert targets.counts["found"] == 6  # ground truth and the missing row are not store hits
    assert NoFits().targets(batch, None, 1) is None


def test_sync_fits_improve_the_store_over_steps(body, problem, store):
    fitting = FittingConfig(iterations_camera=15, iterations_body=15)
    supervisor = SyncFits(store, body, load_pose_prior(fitting), fitting, CFG.camera)
    aug = _augs(N, [(bool(i % 2), 10.0 * (i % 3)) for i in range(N)])
    batch = _batch(problem, aug)
    noise = 0.5 * torch.randn(N, 72, generator=torch.Generator().manual_seed(1))
    seen_truth = augment_pose(problem.pose, aug)
    first = supervisor.targets(batch, _pred(seen_truth + noise, torch.zeros(N, 10)), step=1)
    assert first.counts["improved"] == first.counts["fitted"] == N  # the store was empty
    errors_1 = store.read("ds", batch["index"]).error
    # A better prediction (closer to the truth) gives better fits, which replace the stored ones.
    second = supervisor.targets(batch, _pred(seen_truth + 0.1 * noise, problem.betas), step=2)
    errors_2 = store.read("ds", batch["index"]).error
    assert second.counts["improved"] >= N // 2
    assert (errors_2 <= errors_1).all() and errors_2.mean() < errors_1.mean()
    # A worse one never replaces them: keep-best.
    third = supervisor.targets(batch, _pred(seen_truth + 3.0 * noise, torch.zeros(N, 10)), step=3)
    assert np.array_equal(store.read("ds", batch["index"]).error, errors_2)
    assert torch.allclose(third.error, torch.from_numpy(errors_2).float())
    steps = [step for step, count, _ in store.progress("ds")]
    assert steps[:2] == [1, 2]
