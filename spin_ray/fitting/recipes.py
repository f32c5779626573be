"""Fitting recipes behind one call: `spin` (the paper's SMPLify, unchanged), `staged` and `multistart`.

`staged` keeps SPIN's camera stage, then runs the body stage as a few steps whose pose, bending and
shape prior weights decrease (a far start first moves under strong priors, the last steps follow the
keypoints), and lets the camera translation move in every body step, the depth with a larger step:
SPIN pins the depth of its start, so a start 10 % too far stays 10 % too far.
`multistart` screens several starts at once, the given one and the pose prior's most likely component
means as body poses (same orientation, shape and camera), with a short camera stage and the first
staged step, keeps per sample the one with the lowest ranking error, and runs the remaining staged
steps from it: a far start (the mean pose) ends in the basin of the pose that explains the keypoints.
With `fitting.compiled` (the default) every recipe runs each Adam iteration as one compiled program
(fitting/compiled_stage.py): the same stages and loss, equal to float rounding rather than to the bit,
1.5-2.8x faster on CPU; `compiled: false` runs the eager stages (`spin` then equals SPIN's SMPLify to the bit).
Measured in benchmarks/bench_fit_quality.py (RESULTS.md, "Fit quality, recipes") and bench_smplify.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RECIPES, CameraConfig, FittingConfig
from spin_ray.errors import InputError
from spin_ray.fitting.compiled_stage import compiled_run_stage, compiles, out_of_memory
from spin_ray.fitting.smplify import (
    SmplifyParams,
    SmplifyResult,
    StageRunner,
    body_stage_loss,
    camera_stage,
    fit_result,
    model_keypoints,
    prepare_fit,
    run_stage,
    smplify,
)



def staged_fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
    runner: StageRunner = run_stage,
) -> SmplifyResult:
    """SPIN's camera stage, then body steps with decreasing prior weights and the camera translation free."""
    inputs = prepare_fit(body, keypoints_2d, init, fitting, camera)
    keypoints_2d = inputs.keypoints_2d

    def kp(p: SmplifyParams) -> torch.Tensor:
        return model_keypoints(body, p, fitting.joints_only)

    params, failed = camera_stage(body, inputs, fitting, camera, on_iteration, runner)
    depth_scale = torch.tensor([1.0, 1.0, fitting.staged_depth_lr_scale], dtype=params.camera_t.dtype)
    for scale in fitting.staged_prior_scales:
        # The step's prior weights times scale, as a tensor: every step is one compiled program, not one per scale.
        prior_scale = torch.tensor(scale**2, dtype=params.camera_t.dtype, device=params.camera_t.device)
        params, failed = runner(
            params, ("global_orient", "body_pose", "betas", "camera_t"), fitting.staged_iterations, fitting.lr,
            failed,
            lambda p, s=prior_scale: body_stage_loss(kp(p), p, keypoints_2d, inputs.conf, pose_prior, camera, fitting,
                                                     s),
            scales={"camera_t": depth_scale}, on_iteration=on_iteration,
        )
    return fit_result(body, inputs, params, failed, fitting, camera)


def prior_starts(init: SmplifyParams, pose_prior: torch.nn.Module, count: int) -> SmplifyParams:
    """(count * B) starts: init, then init with its body pose replaced by each of the prior's count - 1 most
    likely component means (start k of sample b is row k * B + b)."""
    means = getattr(pose_prior, "means", None)
    if means is None or count == 1:
        return init
    likely = torch.argsort(pose_prior.log_normaliser)[: count - 1]  # -log weight + normaliser: most likely first
    batch = init.body_pose.shape[0]
    poses = [init.body_pose] + [means[k].to(init.body_pose).expand(batch, -1) for k in likely.tolist()]
    repeat = len(poses)
    return SmplifyParams(init.global_orient.repeat(repeat, 1), torch.cat(poses), init.betas.repeat(repeat, 1),
                         init.camera_t.repeat(repeat, 1))


def multistart_fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
    runner: StageRunner = run_stage,
) -> SmplifyResult:
    """Screen init and the prior's component means together (short camera stage, first staged step), keep each
    sample's lowest ranking error, then run the remaining staged steps from it (on_iteration sees those)."""
    batch = keypoints_2d.shape[0]
    starts = prior_starts(init, pose_prior, fitting.multistart_starts)
    repeat = starts.body_pose.shape[0] // batch
    screening = fitting.model_copy(update={
        "iterations_camera": fitting.multistart_camera_iterations,
        "staged_prior_scales": fitting.staged_prior_scales[:1],
        "staged_iterations": fitting.multistart_screen_iterations,
    })
    screened = staged_fit(body, pose_prior, keypoints_2d.repeat(repeat, 1, 1), starts, screening, camera,
                          runner=runner)
    best = screened.error.view(repeat, batch).argmin(dim=0)  # failed starts score inf
    rows = best * batch + torch.arange(batch, device=best.device)
    winner = SmplifyParams(*(t[rows] for t in screened.params.tensors()))
    rest = fitting.model_copy(update={"iterations_camera": 0, "staged_prior_scales": fitting.staged_prior_scales[1:]
                                      or fitting.staged_prior_scales[-1:]})
    result = staged_fit(body, pose_prior, keypoints_2d, winner, rest, camera, on_iteration, runner)
    # The caller compares the fit with its own start (keep-best): report init's error, not the winner's.
    return replace(result, initial_error=screened.initial_error[:batch])


def iteration_overrides(recipe: str, iterations: int) -> dict[str, int]:
    """FittingConfig fields that give every stage of `recipe` `iterations` Adam iterations (one home for `--iterations`)."""
    if recipe == "spin":
        return {"iterations_camera": iterations, "iterations_body": iterations}
    if recipe == "staged":
        return {"iterations_camera": iterations, "staged_iterations": iterations}
    if recipe == "multistart":
        # The refinement has no camera stage of its own (the screening's camera carries over).
        return {"multistart_camera_iterations": iterations, "multistart_screen_iterations": iterations,
                "staged_iterations": iterations}
    raise InputError(f"fitting.recipe {recipe!r} is not one of {RECIPES}")


def fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> SmplifyResult:
    """Fit SMPL to 2D keypoints (B, 49, 3) with fitting.recipe; `spin` is smplify itself.

    A batch that does not fit in memory is an InputError naming the batch size, not an allocator's traceback.
    """
    try:
        return _fit(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration)
    except RuntimeError as err:
        if not out_of_memory(err):
            raise
        reason = str(err).strip().splitlines()[-1][:200]
        raise InputError(f"fitting {keypoints_2d.shape[0]} samples at once ran out of memory ({reason}); lower "
                         "fitting.batch_size (spin-ray fit --batch-size)") from None


def _fit(
    body: BodyModel, pose_prior: torch.nn.Module, keypoints_2d: torch.Tensor, init: SmplifyParams,
    fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> SmplifyResult:
    """fit's dispatch on fitting.recipe."""
    runner = compiled_run_stage if compiles(fitting) else run_stage
    if fitting.recipe == "spin":
        return smplify(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration, runner)
    if fitting.recipe == "staged":
        return staged_fit(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration, runner)
    if fitting.recipe == "multistart":
        return multistart_fit(body, pose_prior, keypoints_2d, init, fitting, camera, on_iteration, runner)
    raise InputError(f"fitting.recipe {fitting.recipe!r} is not one of {RECIPES}")
