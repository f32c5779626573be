"""The compiled SMPLify stages (fitting.compiled): the eager stages' results to float rounding for every recipe,
spin's failure rules, and the eager stage with one warning line where compiling fails or is switched off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.config import RunConfig
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.recipes import fit
from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems

torch.set_num_threads(1)
CFG = RunConfig()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture(scope="module")
def prior():
    return load_pose_prior(CFG.fitting)


@pytest.fixture(autouse=True)
def _compiling(compiling):
    """Every test here runs torch.compile (the suite turns it off elsewhere)."""


def both(body, prior, keypoints, init, iterations: int, recipe: str = "spin"):
    """(eager, compiled) results of one problem."""
    out = []
    for compiled in (False, True):
        fitting = CFG.fitting.model_copy(update={"recipe": recipe, "compiled": compiled, "iterations_camera": iterations,
                                                 "iterations_body": iterations, "staged_iterations": iterations})
        out.append(fit(body, prior, keypoints, init, fitting, CFG.camera))
    return out


def test_compiled_spin_is_spin_to_float_rounding(body, prior):
    # The problem of test_fit_recipes' golden values (8 people, 2 px noise, 20 + 20 iterations).
    problem = synthetic_problems(body, 8, torch.Generator().manual_seed(3), CFG.camera, pixel_noise=2.0)
    init = network_like_init(problem, torch.Generator().manual_seed(4))
    eager, compiled = both(body, prior, problem.keypoints_2d, init, 20)
    for a, b in zip(eager.params.tensors(), compiled.params.tensors()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(compiled.error, eager.error, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(compiled.pixel_error, eager.pixel_error, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(compiled.initial_error, eager.initial_error)
    assert not compiled.failed.any()
    # It moved: the fit is not its start.
    assert (compiled.params.body_pose - init.body_pose).abs().max() > 1e-2


def test_a_batch_of_another_size_gives_each_sample_the_same_fit(body, prior):
    problem = synthetic_problems(body, 11, torch.Generator().manual_seed(7), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(8))
    fitting = CFG.fitting.model_copy(update={"compiled": True, "iterations_camera": 10, "iterations_body": 10})
    whole = fit(body, prior, problem.keypoints_2d, init, fitting, CFG.camera)
    part = fit(body, prior, problem.keypoints_2d[3:8], type(init)(*(t[3:8] for t in init.tensors())), fitting,
               CFG.camera)
    for a, b in zip(whole.params.tensors(), part.params.tensors()):
        torch.testing.assert_close(b, a[3:8], atol=1e-4, rtol=1e-4)


def test_failed_samples_follow_spins_rules(body, prior):
    problem = synthetic_problems(body, 6, torch.Generator().manual_seed(11), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(12))
    keypoints = problem.keypoints_2d.clone()
    keypoints[1, 5, 0] = float("nan")  # rejected before fitting
    keypoints[3, :, 2] = 0.0  # nothing visible: rejected
    keypoints[4, 10, :2] = 1e30  # finite, but its loss overflows: fails in the first iteration
    eager, compiled = both(body, prior, keypoints, init, 8)
    assert eager.failed.tolist() == [False, True, False, True, True, False]
    assert compiled.failed.tolist() == eager.failed.tolist()
    assert torch.isinf(compiled.error[[1, 3, 4]]).all() and torch.isfinite(compiled.error[[0, 2, 5]]).all()
    # The overflowing sample is frozen at its last good values (its start, after the camera stage's first step).
    for a, b in zip(eager.params.tensors(), compiled.params.tensors()):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b[[0, 2, 4, 5]], a[[0, 2, 4, 5]], atol=1e-4, rtol=1e-5)


FALLBACK_SCRIPT = textwrap.dedent("""
    import torch
    from spin_ray.body.body_model import BodyModel
    from spin_ray.config import RunConfig
    from spin_ray.fitting.priors import load_pose_prior
    from spin_ray.fitting.recipes import fit
    from spin_ray_sim.fitting_problems import network_like_init, synthetic_problems

    torch.set_num_threads(1)
    cfg = RunConfig()
    body, prior = BodyModel.embedded(), load_pose_prior(cfg.fitting)
    problem = synthetic_problems(body, 3, torch.Generator().manual_seed(1), cfg.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(2))
    results = []
    for compiled in (True, True, False):
        fitting = cfg.fitting.model_copy(update={"compiled": compiled, "iterations_camera": 2, "iterations_body": 2})
        results.append(fit(body, prior, problem.keypoints_2d, init, fitting, cfg.camera))
    same = all(torch.equal(a, b) for r in results[:2] for a, b in zip(r.params.tensors(), results[2].params.tensors()))
    print("EQUAL" if same else "DIFFERENT")
""")


def test_a_compile_failure_fits_with_the_eager_stage_and_says_so_once(tmp_path):
    # No C++ compiler (and an empty inductor cache): inductor cannot build the program.
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "TORCH_COMPILE_DISABLE": "0"}
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "EQUAL"  # the eager stage: spin to the bit
    warnings = [line for line in proc.stderr.splitlines() if "torch.compile of the SMPLify stage failed" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert "eager stage" in warnings[0] and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_spin_on_cuda_matches_eager_spin_on_the_cpu(body, prior):
    problem = synthetic_problems(body, 32, torch.Generator().manual_seed(1), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(2))
    keypoints = problem.keypoints_2d.clone()
    keypoints[3] = float("nan")  # a rejected sample must not touch the others
    eager = fit(body, prior, keypoints, init, CFG.fitting.model_copy(update={"compiled": False, "iterations_camera": 10,
                                                                           "iterations_body": 10}), CFG.camera)
    fitting = CFG.fitting.model_copy(update={"compiled": True, "iterations_camera": 10, "iterations_body": 10})
    gpu = fit(BodyModel.embedded().to("cuda"), prior.to("cuda"), keypoints.cuda(),
              type(init)(*(t.cuda() for t in init.tensors())), fitting, CFG.camera)
    assert gpu.error.device.type == "cuda"
    assert torch.equal(gpu.failed.cpu(), eager.failed) and bool(eager.failed[3])
    ok = ~eager.failed
    torch.testing.assert_close(gpu.error.cpu()[ok], eager.error[ok], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.params.pose.cpu()[ok], eager.params.pose[ok], rtol=0, atol=1e-3)


@pytest.mark.parametrize("recipe", ["staged", "multistart"])
def test_every_recipe_compiled_is_its_eager_self_to_float_rounding(body, prior, recipe):
    problem = synthetic_problems(body, 8, torch.Generator().manual_seed(5), CFG.camera, pixel_noise=2.0)
    init = network_like_init(problem, torch.Generator().manual_seed(6))
    eager, compiled = both(body, prior, problem.keypoints_2d, init, 6, recipe)
    for a, b in zip(eager.params.tensors(), compiled.params.tensors()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(compiled.error, eager.error, atol=1e-3, rtol=1e-5)
    assert (compiled.params.body_pose - init.body_pose).abs().max() > 1e-2


def test_the_staged_steps_share_one_compiled_program(body, prior):
    # Each step's prior weights enter as a tensor: a new scale is no new compile (each costs ~25 s cold).
    import torch._dynamo

    problem = synthetic_problems(body, 4, torch.Generator().manual_seed(9), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(10))
    fitting = CFG.fitting.model_copy(update={"recipe": "staged", "compiled": True, "iterations_camera": 2,
                                             "staged_iterations": 2, "staged_prior_scales": (2.0, 1.0, 0.5)})
    fit(body, prior, problem.keypoints_2d, init, fitting, CFG.camera)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fit(body, prior, problem.keypoints_2d, init, fitting.model_copy(update={"staged_prior_scales": (4.0, 0.7, 0.2)}),
        CFG.camera)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


@torch._dynamo.config.patch(disable=True)
def test_torch_compile_disable_runs_the_eager_stages_to_the_bit(body, prior):
    problem = synthetic_problems(body, 4, torch.Generator().manual_seed(13), CFG.camera)
    init = network_like_init(problem, torch.Generator().manual_seed(14))
    off, on = (fit(body, prior, problem.keypoints_2d, init,
                   CFG.fitting.model_copy(update={"compiled": c, "iterations_camera": 3, "iterations_body": 3}),
                   CFG.camera) for c in (False, True))
    assert all(torch.equal(a, b) for a, b in zip(off.params.tensors(), on.params.tensors()))


def test_auto_compiles_open_ended_fitters_and_dataset_fits_from_the_threshold():
    from spin_ray.fitting.compiled_stage import compiles

    auto = CFG.fitting.model_copy(update={"compiled": "auto", "compile_min_samples": 1000})
    assert compiles(auto) and compiles(auto, 1000) and not compiles(auto, 999)
    assert compiles(auto.model_copy(update={"compiled": True}), 1)
    assert not compiles(auto.model_copy(update={"compiled": False}))


def test_a_compiled_setting_other_than_true_false_or_auto_is_one_line():
    with pytest.raises(ValueError, match="compiled is true, false or auto") as err:
        RunConfig.model_validate({"fitting": {"compiled": "maybe"}})
    assert str(err.value).count("compiled") == 2  # the field's name and the message: no second union error


def test_the_former_recipe_name_is_one_line_naming_its_replacement():
    with pytest.raises(ValueError, match="recipe spin_compiled is now recipe spin with fitting.compiled: true"):
        RunConfig.model_validate({"fitting": {"recipe": "spin_compiled"}})


def test_the_compiled_joints_only_forward_equals_the_eager_one(body):
    # Inside torch.compile the 4x4 products are broadcast sums and the extras sum over the coupled pairs only.
    assert body.extras_method == "pairs" and body.pair_keypoint.numel() == body.num_pairs > 0
    g = torch.Generator().manual_seed(0)
    rotmats = axis_angle_pose_to_rotmats(torch.randn(16, 72, generator=g) * 0.6)
    betas = torch.randn(16, body.num_betas, generator=g)
    compiled = torch.compile(lambda r, b: body.keypoints(r, b), fullgraph=True)(rotmats, betas)
    torch.testing.assert_close(compiled, body.keypoints(rotmats, betas), rtol=0, atol=1e-5)


def test_the_fitters_warm_up_batch_compiles_the_program_every_batch_size_uses(body, prior):
    # FitterActor warms up on WARM_UP_BATCH rows before it reports ready; a batch of 1, 2 or 5 there got a program
    # of its own and the first real request compiled again (83 requests dropped in a make run while it did).
    import torch._dynamo

    from spin_ray.pipeline.fitter import WARM_UP_BATCH

    torch._dynamo.reset()
    fitting = CFG.fitting.model_copy(update={"compiled": True, "iterations_camera": 1, "iterations_body": 1})
    graphs = []
    for batch in (WARM_UP_BATCH, 32, 64):
        problem = synthetic_problems(body, batch, torch.Generator().manual_seed(batch), CFG.camera)
        fit(body, prior, problem.keypoints_2d, network_like_init(problem, torch.Generator().manual_seed(1)), fitting,
            CFG.camera)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[1] == graphs[2], graphs
