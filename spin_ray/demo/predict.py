"""The demo's model side: regress a person's crop, optionally refine with SMPLify, and pose the mesh.

Frames: the network sees an `img_res` crop of the box; its camera [s, tx, ty] and SMPLify both live
in the fitting crop camera (`CameraConfig`: focal length f over a `crop_size` crop of the same box).
The same box seen in the full image is the same camera with focal f * box / crop_size and the
principal point at the box center, so one camera-frame mesh serves every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import NUM_KEYPOINTS, NUM_OPENPOSE
from spin_ray.config import CameraConfig, FittingConfig
from spin_ray.data.augment import SCALE_UNIT_PX, crop_image, crop_matrix, transform_points
from spin_ray.data.dataset import normalise_crop
from spin_ray.eval.evaluate import Predictor
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.fitting.recipes import fit
from spin_ray.fitting.smplify import SmplifyParams, SmplifyResult
from spin_ray.train.supervision import smplify_terms


@dataclass(frozen=True)
class BodyEstimate:
    """N people's SMPL parameters and camera translations, each in the fitting crop camera of its own box."""

    pose: torch.Tensor  # (N, 72) axis-angle
    betas: torch.Tensor  # (N, num_betas)
    camera_t: torch.Tensor  # (N, 3)


def network_input(image: np.ndarray, center: np.ndarray, scale: float, img_res: int) -> torch.Tensor:
    """The box of an RGB image cropped to img_res and normalised as in training: (1, 3, img_res, img_res)."""
    crop = crop_image(image, crop_matrix(center, scale, img_res), img_res)
    return normalise_crop(crop.astype(np.float32))[None]


@torch.no_grad()
def regress(predict: Predictor, images: torch.Tensor, camera: CameraConfig) -> BodyEstimate:
    """The predictor's parameters for crops (N, 3, R, R), their weak-perspective camera as a crop-camera translation."""
    pose, betas, camera_t = smplify_terms(predict(images), camera)
    return BodyEstimate(pose.float(), betas.float(), camera_t.float())


def fitting_keypoints(openpose: np.ndarray, center: np.ndarray, scale: float, camera: CameraConfig) -> torch.Tensor:
    """SPIN's 49 keypoints (1, 49, 3) in fitting-crop pixels: BODY_25 first, the 24 dataset joints at confidence 0."""
    keypoints = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float64)
    keypoints[:NUM_OPENPOSE, :2] = transform_points(openpose[:, :2], crop_matrix(center, scale, camera.crop_size))
    keypoints[:NUM_OPENPOSE, 2] = np.clip(openpose[:, 2], 0.0, None)
    return torch.from_numpy(keypoints).float()[None]


def refine(
    body: BodyModel, estimate: BodyEstimate, keypoints: torch.Tensor, fitting: FittingConfig, camera: CameraConfig,
) -> SmplifyResult:
    """SMPLify from the estimates on crop-pixel keypoints (N, 49, 3), with the run's fitting settings and recipe."""
    init = SmplifyParams.from_pose(estimate.pose, estimate.betas, estimate.camera_t)
    return fit(body, load_pose_prior(fitting), keypoints, init, fitting, camera)


def from_smplify(result: SmplifyResult) -> BodyEstimate:
    """The fitted parameters of a SMPLify result as an estimate."""
    params = result.params
    return BodyEstimate(params.pose.detach(), params.betas.detach(), params.camera_t.detach())


@torch.no_grad()
def camera_frame_vertices(body: BodyModel, estimate: BodyEstimate) -> np.ndarray:
    """The posed meshes (N, V, 3), each in its camera frame (translation added), float32."""
    vertices = body(axis_angle_pose_to_rotmats(estimate.pose), estimate.betas).vertices
    return (vertices + estimate.camera_t[:, None]).numpy().astype(np.float32)


def image_focal_length(scale: float, camera: CameraConfig) -> float:
    """Focal length in image pixels of the crop camera of a box of `scale` (box side = 200 * scale px)."""
    return camera.focal_length * SCALE_UNIT_PX * scale / camera.crop_size


@dataclass(frozen=True)
class PeopleEstimate:
    """Every person of one image through the network and, with fitting settings, SMPLify (one batch)."""

    estimate: BodyEstimate  # the fit where SMPLify ran and did not fail, else the network's
    initial_error: np.ndarray | None = None  # (N,) ranking error of the network's estimate (None without SMPLify)
    error: np.ndarray | None = None  # (N,) ranking error after SMPLify
    pixel_error: np.ndarray | None = None  # (N,) mean keypoint distance after SMPLify, fitting-crop pixels
    failed: np.ndarray | None = None  # (N,) bool: SMPLify's loss went non-finite, the network's estimate is kept


def estimate_people(
    predict: Predictor, body: BodyModel, image: np.ndarray, boxes: list[tuple[np.ndarray, float]],
    openpose: list[np.ndarray], img_res: int, camera: CameraConfig, fitting: FittingConfig | None,
) -> PeopleEstimate:
    """Regress the people of `image` in their boxes (center, scale) as one batch; refine on their BODY_25
    keypoints with `fitting` (None: no SMPLify), keeping the network's estimate where a fit failed."""
    crops = torch.cat([network_input(image, center, scale, img_res) for center, scale in boxes])
    estimate = regress(predict, crops, camera)
    if fitting is None:
        return PeopleEstimate(estimate)
    keypoints = torch.cat([fitting_keypoints(kp, center, scale, camera) for kp, (center, scale)
                           in zip(openpose, boxes, strict=True)])
    fit = refine(body, estimate, keypoints, fitting, camera)
    fitted = from_smplify(fit)
    keep = ~fit.failed.bool()
    estimate = BodyEstimate(*(torch.where(keep[:, None], new, old) for new, old in (
        (fitted.pose, estimate.pose), (fitted.betas, estimate.betas), (fitted.camera_t, estimate.camera_t))))
    return PeopleEstimate(estimate, fit.initial_error.detach().numpy(), fit.error.detach().numpy(),
                          fit.pixel_error.detach().numpy(), (~keep).numpy())
