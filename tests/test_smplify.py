"""Batched SMPLify on synthetic truth: accuracy, the value of a good init, robustness, purity."""

import math

import pytest
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.joints import SPIN49_NAMES, SPIN49_TORSO
from spin_ray.config import RunConfig
from spin_ray.errors import InputError
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.smplify import camera_stage_loss, model_keypoints, smplify
from spin_ray.fitting.starts import mean_body_pose, mean_pose_init
from spin_ray.geometry import similarity_procrustes
from spin_ray_sim.fitting_problems import network_like_init, posed_joints, synthetic_problems

torch.set_num_threads(1)
CFG = RunConfig()


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def prior():
    return load_pose_prior(CFG.fitting)


@pytest.fixture(scope="module")
def problem(body):
    return synthetic_problems(body, 64, torch.Generator().manual_seed(7), CFG.camera, max_yaw=math.radians(30))


@pytest.fixture(scope="module")
def network_fit(body, prior, problem):
    init = network_like_init(problem, torch.Generator().manual_seed(8))
    return init, smplify(body, prior, problem.keypoints_2d, init, CFG.fitting, CFG.camera)


def pa_mpjpe_mm(body, params, truth_joints):
    joints = posed_joints(body, params.pose, params.betas)
    return (similarity_procrustes(joints, truth_joints) - truth_joints).norm(dim=-1).mean(-1) * 1000


def test_network_like_init_converges(body, problem, network_fit):
    init, result = network_fit
    assert not result.failed.any()
    assert result.pixel_error.median() < 3.0
    pa_init = pa_mpjpe_mm(body, init, problem.joints_3d).median()
    pa_fit = pa_mpjpe_mm(body, result.params, problem.joints_3d).median()
    assert pa_fit < 75.0
    assert pa_fit < 0.7 * pa_init
    assert (result.error < result.initial_error).float().mean() >= 0.95


def test_mean_pose_init_ends_worse(body, prior, problem, network_fit):
    _, from_network = network_fit
    mean_pose = mean_body_pose(torch.Generator().manual_seed(1))
    init = mean_pose_init(body, mean_pose, problem.keypoints_2d, CFG.camera, CFG.fitting)
    from_mean = smplify(body, prior, problem.keypoints_2d, init, CFG.fitting, CFG.camera)
    pa_mean = pa_mpjpe_mm(body, from_mean.params, problem.joints_3d).median()
    pa_network = pa_mpjpe_mm(body, from_network.params, problem.joints_3d).median()
    assert pa_mean > pa_network


def test_failed_samples_are_flagged_and_isolated(body, prior, problem):
    fitting = CFG.fitting.model_copy(update={"iterations_camera": 10, "iterations_body": 10})
    kp = problem.keypoints_2d[:6].clone()
    init = network_like_init(problem, torch.Generator().manual_seed(3))
    init6 = type(init)(*(t[:6] for t in init.tensors()))
    clean = smplify(body, prior, kp, init6, fitting, CFG.camera)
    broken = kp.clone()
    broken[1, 5, 0] = float("nan")
    broken[3, :, 2] = 0.0
    before = broken.clone()
    result = smplify(body, prior, broken, init6, fitting, CFG.camera)
    assert result.failed.tolist() == [False, True, False, True, False, False]
    assert torch.isinf(result.error[[1, 3]]).all() and torch.isfinite(result.error[[0, 2, 4, 5]]).all()
    for a, b in zip(result.params.tensors(), clean.params.tensors()):
        assert torch.allclose(a[[0, 2, 4, 5]], b[[0, 2, 4, 5]], atol=1e-5)
    assert torch.equal(torch.nan_to_num(broken, nan=-1.0), torch.nan_to_num(before, nan=-1.0))


def test_batch_size_does_not_change_a_sample(body, prior, problem):
    fitting = CFG.fitting.model_copy(update={"iterations_camera": 15, "iterations_body": 15})
    init = network_like_init(problem, torch.Generator().manual_seed(4))
    big = smplify(body, prior, problem.keypoints_2d[:16], type(init)(*(t[:16] for t in init.tensors())),
                  fitting, CFG.camera)
    small = smplify(body, prior, problem.keypoints_2d[4:8], type(init)(*(t[4:8] for t in init.tensors())),
                    fitting, CFG.camera)
    for a, b in zip(big.params.tensors(), small.params.tensors()):
        assert torch.allclose(a[4:8], b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(big.error[4:8], small.error, rtol=1e-4)


def test_camera_stage_sees_the_openpose_torso(body, problem):
    """The reference code zeroed the OpenPose hips in place, hiding them from the camera stage."""
    params = problem.params
    kp3d = model_keypoints(body, params)
    keypoints = problem.keypoints_2d.clone()
    base = camera_stage_loss(kp3d, params.camera_t, params.camera_t[:, 2], keypoints, CFG.camera, 100.0)
    hip = SPIN49_NAMES.index("OP RHip")
    assert hip in SPIN49_TORSO
    moved = keypoints.clone()
    moved[:, hip, 0] += 20.0
    after = camera_stage_loss(kp3d, params.camera_t, params.camera_t[:, 2], moved, CFG.camera, 100.0)
    assert (after > base + 100.0).all()
    smplify_input = keypoints.clone()
    smplify(body, load_pose_prior(CFG.fitting), smplify_input[:2],
            type(params)(*(t[:2] for t in params.tensors())),
            CFG.fitting.model_copy(update={"iterations_camera": 1, "iterations_body": 1}), CFG.camera)
    assert torch.equal(smplify_input, keypoints)


def test_betas_out_of_range_are_flagged(body, prior, problem):
    init = problem.params
    wild = type(init)(init.global_orient[:2], init.body_pose[:2], torch.full((2, 10), 4.0), init.camera_t[:2])
    fitting = CFG.fitting.model_copy(update={"iterations_camera": 0, "iterations_body": 0})
    result = smplify(body, prior, problem.keypoints_2d[:2], wild, fitting, CFG.camera)
    assert result.betas_out_of_range.all()


def test_bad_shapes_are_refused(body, prior, problem):
    with pytest.raises(InputError, match=r"keypoints_2d must be \(B, 49, 3\)"):
        smplify(body, prior, problem.keypoints_2d[:, :25], problem.params, CFG.fitting, CFG.camera)
    wrong = type(problem.params)(problem.params.global_orient, problem.params.body_pose[:, :60],
                                 problem.params.betas, problem.params.camera_t)
    with pytest.raises(InputError, match="init.body_pose"):
        smplify(body, prior, problem.keypoints_2d, wrong, CFG.fitting, CFG.camera)


# -- the joints SPIN ignores in its body stage and its ranking error ----------------------------------


def test_spin_ignores_the_neck_and_all_four_hips_in_the_body_stage_and_the_ranking():
    from spin_ray.body.joints import SPIN49_IGNORED_IN_FIT

    assert sorted(SPIN49_NAMES[i] for i in SPIN49_IGNORED_IN_FIT) == sorted(
        ["OP Neck", "OP RHip", "OP LHip", "Right Hip", "Left Hip"])


def _moved(keypoints: torch.Tensor, name: str, pixels: float = 40.0) -> torch.Tensor:
    moved = keypoints.clone()
    moved[:, SPIN49_NAMES.index(name), :2] += pixels
    return moved


@pytest.mark.parametrize("name, counts", [("OP Neck", False), ("Right Hip", False), ("Left Hip", False),
                                          ("OP RHip", False), ("Right Knee", True), ("OP Nose", True)])
def test_moving_an_ignored_keypoint_leaves_the_ranking_error_alone(body, problem, name, counts):
    from spin_ray.fitting.scoring import score_fits

    kp = problem.keypoints_2d[:8]
    before = score_fits(body, problem.pose[:8], problem.betas[:8], kp, CFG.camera, CFG.fitting)
    after = score_fits(body, problem.pose[:8], problem.betas[:8], _moved(kp, name), CFG.camera, CFG.fitting)
    assert (after > before + 1e-3).all() if counts else torch.allclose(after, before, atol=1e-4)


def test_ignored_joints_is_a_config_value_for_other_skeletons(body, problem):
    from spin_ray.fitting.scoring import score_fits

    kp = problem.keypoints_2d[:8]
    only_openpose_hips = CFG.fitting.model_copy(update={"ignored_joints": ("OP RHip", "OP LHip")})
    before = score_fits(body, problem.pose[:8], problem.betas[:8], kp, CFG.camera, only_openpose_hips)
    after = score_fits(body, problem.pose[:8], problem.betas[:8], _moved(kp, "OP Neck"), CFG.camera,
                       only_openpose_hips)
    assert (after > before + 1e-3).all()  # the neck counts once the config says so
    typo = CFG.fitting.model_copy(update={"ignored_joints": ("OP Nek",)})
    with pytest.raises(InputError, match=r"fitting.ignored_joints: unknown keypoint name\(s\) \['OP Nek'\]"):
        score_fits(body, problem.pose[:8], problem.betas[:8], kp, CFG.camera, typo)
