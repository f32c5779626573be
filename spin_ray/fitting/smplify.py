"""Batched SMPLify (SPIN §3.3): a camera stage, then a body stage, with a per-sample ranking error.

Everything here is a pure function of its inputs: nothing mutates the caller's tensors (the
reference code zeroes confidences in place on a view, which silently hides the OpenPose torso from
its camera stage). Samples are independent: the loss is a sum over samples and Adam's state is
elementwise, so a sample's result does not depend on the rest of its batch, and a sample whose loss
or parameters turn non-finite is frozen, flagged and returned with an infinite error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import (
    NUM_KEYPOINTS,
    SPIN49_DATASET_TORSO,
    SPIN49_IGNORED_IN_FIT,
    spin49_indices,
    SPIN49_TORSO,
)
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.errors import InputError
from spin_ray.fitting.priors import angle_prior, gmof, shape_prior
from spin_ray.geometry import camera_translation_from_keypoints, perspective_projection


@dataclass(frozen=True)
class SmplifyParams:
    """A batch of SMPL parameters with a camera translation; axis-angle rotations."""

    global_orient: torch.Tensor  # (B, 3)
    body_pose: torch.Tensor  # (B, 69)
    betas: torch.Tensor  # (B, num_betas)
    camera_t: torch.Tensor  # (B, 3)

    @property
    def pose(self) -> torch.Tensor:
        """The 72-d axis-angle pose (B, 72)."""
        return torch.cat([self.global_orient, self.body_pose], dim=-1)

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return self.global_orient.shape[0]

    @classmethod
    def from_pose(cls, pose: torch.Tensor, betas: torch.Tensor, camera_t: torch.Tensor) -> SmplifyParams:
        """Split a 72-d pose into global orientation and body pose."""
        return cls(pose[:, :3], pose[:, 3:], betas, camera_t)

    def detached(self) -> SmplifyParams:
        """Copies cut from any autograd graph."""
        return SmplifyParams(*(t.detach().clone() for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The four tensors in field order."""
        return (self.global_orient, self.body_pose, self.betas, self.camera_t)

    def select(self, mask: torch.Tensor, other: SmplifyParams) -> SmplifyParams:
        """Per sample, self where mask is true, else other."""
        pick = [torch.where(mask[:, None], a, b) for a, b in zip(self.tensors(), other.tensors())]
        return SmplifyParams(*pick)


@dataclass(frozen=True)
class SmplifyResult:
    """Fitted parameters and per-sample diagnostics; compare `error` to `initial_error` to keep the better."""

    params: SmplifyParams
    error: torch.Tensor  # (B,) ranking error of the fit; inf where failed
    initial_error: torch.Tensor  # (B,) ranking error of the initialisation
    failed: torch.Tensor  # (B,) bool: rejected input or a non-finite loss/parameter during fitting
    betas_out_of_range: torch.Tensor  # (B,) bool: some |beta| > max_abs_beta; not for supervision
    pixel_error: torch.Tensor  # (B,) mean pixel distance over visible keypoints, for people to read


def check_keypoints(keypoints_2d: torch.Tensor) -> None:
    """Raise InputError unless keypoints_2d is (B, 49, 3) [u, v, confidence]."""
    if keypoints_2d.dim() != 3 or tuple(keypoints_2d.shape[1:]) != (NUM_KEYPOINTS, 3):
        raise InputError(
            f"keypoints_2d must be (B, {NUM_KEYPOINTS}, 3) [u, v, confidence] in crop pixels, "
            f"got {tuple(keypoints_2d.shape)}"
        )


def rejected_samples(keypoints_2d: torch.Tensor) -> torch.Tensor:
    """(B,) bool: samples with a non-finite keypoint or confidence, or no visible keypoint."""
    finite = torch.isfinite(keypoints_2d).all(dim=(1, 2))
    conf = torch.nan_to_num(keypoints_2d[..., 2], nan=0.0)
    return ~finite | ~(conf > 0).any(dim=1)


def ignored_joints(fitting: FittingConfig) -> tuple[int, ...]:
    """The keypoints (indices of the 49) that the body stage and the ranking error ignore: the config's, else SPIN's."""
    if fitting.ignored_joints is None:
        return SPIN49_IGNORED_IN_FIT
    return spin49_indices(fitting.ignored_joints, key="fitting.ignored_joints")


def fit_confidences(keypoints_2d: torch.Tensor, ignored: tuple[int, ...]) -> torch.Tensor:
    """Confidences (B, 49) used by the body stage and the ranking error: the ignored joints zeroed, on a copy."""
    conf = keypoints_2d[..., 2].clamp(min=0).clone()
    conf[:, list(ignored)] = 0.0
    return conf


def model_keypoints(body: BodyModel, params: SmplifyParams, joints_only: bool = True) -> torch.Tensor:
    """The 49 model keypoints (B, 49, 3) in the body frame (no camera translation)."""
    rotmats = axis_angle_pose_to_rotmats(params.pose)
    if joints_only:
        return body.keypoints(rotmats, params.betas)
    return body(rotmats, params.betas).keypoints


def project(points: torch.Tensor, camera_t: torch.Tensor, camera: CameraConfig) -> torch.Tensor:
    """Pixels (B, N, 2) of body-frame points seen through the crop camera at translation camera_t."""
    return perspective_projection(points, camera_t, camera.focal_length, crop_size=camera.crop_size)


def reprojection_terms(
    projected: torch.Tensor, keypoints_2d: torch.Tensor, conf: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Per-keypoint robust error (B, 49): conf^2 * sum over u, v of GMoF(projected - observed)."""
    return conf.pow(2) * gmof(projected - keypoints_2d[..., :2], sigma).sum(-1)


def ranking_error(
    keypoints_3d: torch.Tensor, camera_t: torch.Tensor, keypoints_2d: torch.Tensor,
    camera: CameraConfig, sigma: float, ignored: tuple[int, ...],
) -> torch.Tensor:
    """SPIN's ranking error (B,): mean over the 49 keypoints of conf^2 * GMoF reprojection, in crop pixels."""
    projected = project(keypoints_3d, camera_t, camera)
    return reprojection_terms(projected, keypoints_2d, fit_confidences(keypoints_2d, ignored), sigma).mean(-1)


def pixel_error(keypoints_3d: torch.Tensor, camera_t: torch.Tensor, keypoints_2d: torch.Tensor,
                camera: CameraConfig, ignored: tuple[int, ...]) -> torch.Tensor:
    """Mean pixel distance (B,) over keypoints with positive confidence, ignored joints left out (NaN where none)."""
    distance = (project(keypoints_3d, camera_t, camera) - keypoints_2d[..., :2]).norm(dim=-1)
    visible = (fit_confidences(keypoints_2d, ignored) > 0).to(distance.dtype)
    return (distance * visible).sum(-1) / visible.sum(-1)


def camera_stage_loss(
    keypoints_3d: torch.Tensor, camera_t: torch.Tensor, initial_depth: torch.Tensor,
    keypoints_2d: torch.Tensor, camera: CameraConfig, depth_loss_weight: float,
) -> torch.Tensor:
    """Per-sample camera-stage loss (B,): squared torso reprojection plus a pull towards the initial depth.

    The OpenPose torso is used when all four of its joints are visible, else the dataset torso; only
    visible joints count. Confidences come from the caller's tensor, untouched.
    """
    conf = keypoints_2d[..., 2]
    op, ds = list(SPIN49_TORSO), list(SPIN49_DATASET_TORSO)
    use_openpose = (conf[:, op] > 0).all(dim=1, keepdim=True)
    joints = torch.where(use_openpose, torch.tensor(op, device=conf.device), torch.tensor(ds, device=conf.device))
    observed = torch.gather(keypoints_2d, 1, joints[..., None].expand(-1, -1, 3))
    model = torch.gather(keypoints_3d, 1, joints[..., None].expand(-1, -1, 3))
    projected = project(model, camera_t, camera)
    visible = (observed[..., 2] > 0).to(projected.dtype)
    reprojection = (visible[..., None] * (projected - observed[..., :2]).pow(2)).sum(dim=(1, 2))
    return reprojection + depth_loss_weight**2 * (camera_t[:, 2] - initial_depth).pow(2)


def body_stage_loss(
    keypoints_3d: torch.Tensor, params: SmplifyParams, keypoints_2d: torch.Tensor, conf: torch.Tensor,
    pose_prior: torch.nn.Module, camera: CameraConfig, fitting: FittingConfig,
    prior_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample body-stage loss (B,): robust reprojection + pose, bending and shape priors (SPIN's weights squared,
    each times prior_scale where given: the staged recipe's steps)."""
    projected = project(keypoints_3d, params.camera_t, camera)
    reprojection = reprojection_terms(projected, keypoints_2d, conf, fitting.gmof_sigma).sum(-1)
    weights = [fitting.pose_prior_weight**2, fitting.angle_prior_weight**2, fitting.shape_prior_weight**2]
    if prior_scale is not None:
        weights = [w * prior_scale for w in weights]
    pose_w, angle_w, shape_w = weights
    return (
        reprojection
        + pose_w * pose_prior(params.body_pose)
        + angle_w * angle_prior(params.body_pose)
        + shape_w * shape_prior(params.betas)
    )


def _safe_inputs(keypoints_2d: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Keypoints with rejected samples replaced by zeros (a copy), so they cannot poison a batched op."""
    return torch.where(rejected[:, None, None], torch.zeros_like(keypoints_2d), keypoints_2d)


def run_stage(
    params: SmplifyParams, trainable: tuple[str, ...], iterations: int, lr: float,
    failed: torch.Tensor, loss_fn, scales: dict[str, torch.Tensor] | None = None,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> tuple[SmplifyParams, torch.Tensor]:
    """Adam on the named fields of params; returns the new params and the updated failed mask.

    `scales` (field -> broadcastable tensor) makes Adam step in units of that scale on a field (its
    learning rate times the scale); `on_iteration(params, failed)` sees the last good values after each step.
    """
    if iterations == 0:
        return params, failed
    scales = scales or {}
    fields = {name: getattr(params, name).detach().clone() for name in ("global_orient", "body_pose", "betas",
                                                                          "camera_t")}
    last_good = {name: value.clone() for name, value in fields.items()}
    leaves = {name: fields[name] / scales[name] if name in scales else fields[name] for name in trainable}
    for name in trainable:
        leaves[name].requires_grad_(True)
    optimizer = torch.optim.Adam([leaves[name] for name in trainable], lr=lr, betas=(0.9, 0.999))
    # While no sample has failed (the common case) the failure bookkeeping below takes its short
    # branch: no torch.where over the fields, no masks; the results are the same to the bit.
    any_failed = bool(failed.any())
    for _ in range(iterations):
        current = SmplifyParams(**{**fields, **{name: leaves[name] * scales[name] for name in scales
                                                 if name in trainable}})
        # Failed samples are evaluated at their last good values, so no NaN reaches the body model.
        safe = SmplifyParams(**last_good).select(failed, current) if any_failed else current
        per_sample = loss_fn(safe)
        bad_loss = ~torch.isfinite(per_sample)
        if any_failed or bool(bad_loss.any()):
            failed = failed | bad_loss
            any_failed = True
            loss = torch.where(failed, torch.zeros_like(per_sample), per_sample).sum()
        else:
            loss = per_sample.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for name in trainable:
                grad = leaves[name].grad
                if grad is not None:
                    grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                    if any_failed:
                        grad.masked_fill_(failed[:, None], 0.0)
        optimizer.step()
        with torch.no_grad():
            values = {name: leaves[name] * scales[name] if name in scales else leaves[name] for name in trainable}
            finite = torch.stack([torch.isfinite(values[n]).all(dim=1) for n in trainable]).all(dim=0)
            if any_failed or not bool(finite.all()):
                failed = failed | ~finite
                any_failed = True
                for name in trainable:
                    last_good[name] = torch.where(failed[:, None], last_good[name], values[name].detach())
            else:
                for name in trainable:
                    last_good[name] = values[name].detach().clone()
            if on_iteration is not None:
                on_iteration(SmplifyParams(**last_good), failed)
    final = SmplifyParams(**{name: last_good[name].detach() for name in last_good})
    return final, failed


# run_stage's signature: (params, trainable, iterations, lr, failed, loss_fn, scales, on_iteration).
StageRunner = Callable[..., tuple[SmplifyParams, torch.Tensor]]


@dataclass(frozen=True)
class FitInputs:
    """Checked inputs of a fit: safe keypoints, the start, rejected samples, fit confidences and the start's error."""

    keypoints_2d: torch.Tensor  # (B, 49, 3), rejected samples zeroed
    start: SmplifyParams
    rejected: torch.Tensor  # (B,) bool
    conf: torch.Tensor  # (B, 49) body-stage confidences, ignored joints zeroed
    ignored: tuple[int, ...]
    initial_error: torch.Tensor  # (B,) ranking error of the start


def prepare_fit(
    body: BodyModel, keypoints_2d: torch.Tensor, init: SmplifyParams, fitting: FittingConfig, camera: CameraConfig,
) -> FitInputs:
    """Check shapes, reject unusable samples (they start from zeros) and score the start; shared by every recipe."""
    check_keypoints(keypoints_2d)
    batch = keypoints_2d.shape[0]
    for name, tensor, width in zip(("global_orient", "body_pose", "betas", "camera_t"), init.tensors(),
                                   (3, 69, body.num_betas, 3)):
        if tensor.shape != (batch, width):
            raise InputError(f"smplify: init.{name} has shape {tuple(tensor.shape)}, expected ({batch}, {width})")
    rejected = rejected_samples(keypoints_2d) | ~torch.stack(
        [torch.isfinite(t).all(dim=1) for t in init.tensors()]).all(dim=0)
    keypoints_2d = _safe_inputs(keypoints_2d.detach(), rejected)
    zero_params = SmplifyParams(*(torch.zeros_like(t) for t in init.tensors()))
    zero_params = replace(zero_params, camera_t=torch.tensor([0.0, 0.0, 1.0]).expand(batch, 3).to(init.camera_t))
    start = zero_params.select(rejected, init.detached())
    ignored = ignored_joints(fitting)
    conf = fit_confidences(keypoints_2d, ignored)
    with torch.no_grad():
        initial_error = ranking_error(model_keypoints(body, start, fitting.joints_only), start.camera_t, keypoints_2d,
                                      camera, fitting.gmof_sigma, ignored)
    return FitInputs(keypoints_2d, start, rejected, conf, ignored, initial_error)


def fit_result(
    body: BodyModel, inputs: FitInputs, params: SmplifyParams, failed: torch.Tensor, fitting: FittingConfig,
    camera: CameraConfig,
) -> SmplifyResult:
    """Score fitted params and flag failures; shared by every recipe."""
    with torch.no_grad():
        final_kp = model_keypoints(body, params, fitting.joints_only)
        error = ranking_error(final_kp, params.camera_t, inputs.keypoints_2d, camera, fitting.gmof_sigma,
                              inputs.ignored)
        failed = failed | ~torch.isfinite(error)
        inf = torch.full_like(error, float("inf"))
        return SmplifyResult(
            params=params,
            error=torch.where(failed, inf, error),
            initial_error=torch.where(inputs.rejected, inf, inputs.initial_error),
            failed=failed,
            betas_out_of_range=(params.betas.abs() > fitting.max_abs_beta).any(dim=1),
            pixel_error=torch.where(failed, inf, pixel_error(final_kp, params.camera_t, inputs.keypoints_2d, camera,
                                                                inputs.ignored)),
        )


def smplify(
    body: BodyModel,
    pose_prior: torch.nn.Module,
    keypoints_2d: torch.Tensor,
    init: SmplifyParams,
    fitting: FittingConfig,
    camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
    runner: StageRunner | None = None,
) -> SmplifyResult:
    """Fit SMPL to 2D keypoints (B, 49, 3) [u, v, conf] in crop pixels, starting from init (SPIN's recipe).

    `runner` runs each Adam stage (default run_stage; fitting/compiled_stage.py has a compiled one).
    """
    runner = runner or run_stage
    inputs = prepare_fit(body, keypoints_2d, init, fitting, camera)
    params, failed = camera_stage(body, inputs, fitting, camera, on_iteration, runner)
    params, failed = runner(
        params, ("global_orient", "body_pose", "betas"), fitting.iterations_body, fitting.lr, failed,
        lambda p: body_stage_loss(model_keypoints(body, p, fitting.joints_only), p, inputs.keypoints_2d, inputs.conf,
                                  pose_prior, camera, fitting),
        on_iteration=on_iteration,
    )
    return fit_result(body, inputs, params, failed, fitting, camera)


def camera_stage(
    body: BodyModel, inputs: FitInputs, fitting: FittingConfig, camera: CameraConfig,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
    runner: StageRunner | None = None,
) -> tuple[SmplifyParams, torch.Tensor]:
    """SPIN's camera stage (global orientation and translation against the torso, depth pinned); every recipe's first."""
    initial_depth = inputs.start.camera_t[:, 2].detach()
    return (runner or run_stage)(
        inputs.start, ("global_orient", "camera_t"), fitting.iterations_camera, fitting.lr, inputs.rejected,
        lambda p: camera_stage_loss(model_keypoints(body, p, fitting.joints_only), p.camera_t, initial_depth,
                                    inputs.keypoints_2d, camera, fitting.depth_loss_weight),
        on_iteration=on_iteration,
    )


def camera_from_keypoints(
    body: BodyModel, pose: torch.Tensor, betas: torch.Tensor, keypoints_2d: torch.Tensor,
    camera: CameraConfig, initial_depth: float, ignored: tuple[int, ...],
) -> torch.Tensor:
    """Closed-form camera translation (B, 3) for given parameters, fitted to the visible keypoints not `ignored`
    (the config's: `ignored_joints(fitting)`)."""
    with torch.no_grad():
        points = body.keypoints(axis_angle_pose_to_rotmats(pose), betas)
        conf = torch.nan_to_num(fit_confidences(torch.nan_to_num(keypoints_2d), ignored), nan=0.0)
        return camera_translation_from_keypoints(
            points, torch.nan_to_num(keypoints_2d[..., :2]), conf, camera.focal_length, camera.crop_size,
            initial_depth,
        )
