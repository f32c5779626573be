"""The hot paths on a CUDA device: the joints-only forward and smplify agree with the CPU. Skipped without CUDA."""

import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.config import RunConfig
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.smplify import SmplifyParams, smplify
from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CFG = RunConfig()


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


def test_joints_only_forward_on_cuda_equals_cpu(body):
    g = torch.Generator().manual_seed(0)
    rotmats = axis_angle_pose_to_rotmats(torch.randn(256, 72, generator=g) * 0.6)
    betas = torch.randn(256, body.num_betas, generator=g)
    cuda = BodyModel.embedded().to("cuda")
    out = cuda.keypoints(rotmats.cuda(), betas.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), body.keypoints(rotmats, betas), rtol=0, atol=1e-5)
    torch.testing.assert_close(cuda.joints(rotmats.cuda(), betas.cuda()).cpu(), body.joints(rotmats, betas),
                               rtol=0, atol=1e-5)


def test_smplify_on_cuda_matches_cpu_and_keeps_failures_apart(body):
    problem = synthetic_problems(body, 32, torch.Generator().manual_seed(1), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(2))
    fitting = CFG.fitting.model_copy(update={"iterations_camera": 10, "iterations_body": 10})
    prior = load_pose_prior(CFG.fitting)
    keypoints = problem.keypoints_2d.clone()
    keypoints[3] = float("nan")  # a rejected sample must not touch the others
    cpu = smplify(body, prior, keypoints, init, fitting, CFG.camera)
    cuda_init = SmplifyParams(*(t.cuda() for t in init.tensors()))
    gpu = smplify(BodyModel.embedded().to("cuda"), prior.to("cuda"), keypoints.cuda(), cuda_init, fitting, CFG.camera)
    assert gpu.error.device.type == "cuda"
    assert torch.equal(gpu.failed.cpu(), cpu.failed) and bool(cpu.failed[3])
    ok = ~cpu.failed
    torch.testing.assert_close(gpu.error.cpu()[ok], cpu.error[ok], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.params.pose.cpu()[ok], cpu.params.pose[ok], rtol=0, atol=1e-3)
