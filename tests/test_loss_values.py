"""Loss values on small hand-made batches, each expected number worked out here from SPIN's formulas.

The expected values are computed with numpy from the formulas of SPIN's paper and reference code
(smplify/losses.py, train/trainer.py), never by calling the spin_ray helper under test. Keypoint
indices are written out by hand from the 49-keypoint layout (25 OpenPose, then 24 dataset joints).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spin_ray.body.joints import SPIN49_NAMES
from spin_ray.config import CameraConfig, FittingConfig, LossConfig
from spin_ray.fitting.priors import ANGLE_PRIOR_INDICES, ANGLE_PRIOR_SIGNS, angle_prior, gmof, shape_prior
from spin_ray.fitting.smplify import (
    SmplifyParams,
    body_stage_loss,
    camera_stage_loss,
    fit_confidences,
    ignored_joints,
    ranking_error,
    reprojection_terms,
)
from spin_ray.train.losses import (
    LossInputs,
    LossTargets,
    camera_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    smpl_losses,
    spin_loss,
    supervision_betas,
    valid_fit_mask,
    vertex_loss,
)

torch.set_num_threads(1)
RTOL = 1e-5
B = 2
FOCAL, CROP = 5000.0, 224
CENTRE = CROP / 2
SIGMA = 100.0

# The 49 SPIN keypoints by hand: OpenPose BODY_25 order, then the 24 dataset joints from index 25.
OP_NOSE, OP_NECK, OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP = 0, 1, 2, 5, 9, 12
RIGHT_KNEE, RIGHT_HIP, LEFT_HIP, RIGHT_SHOULDER, LEFT_SHOULDER, LEFT_WRIST = 26, 27, 28, 33, 34, 36
SPIN_IGNORED = (OP_NECK, OP_RHIP, OP_LHIP, RIGHT_HIP, LEFT_HIP)


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def _close(actual: torch.Tensor, expected) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), np.asarray(expected, dtype=np.float64), rtol=RTOL)


def gmof_by_hand(r: float, sigma: float = SIGMA) -> float:
    return sigma**2 * r**2 / (sigma**2 + r**2)


def project_by_hand(point, t) -> tuple[float, float]:
    """u = f (X + tx) / (Z + tz) + c, v likewise: SPIN's camera, identity rotation, centre at crop / 2."""
    x, y, z = (p + q for p, q in zip(point, t))
    return FOCAL * x / z + CENTRE, FOCAL * y / z + CENTRE


def _scene(seed: int = 0):
    """Model keypoints (B, 49, 3), translations (B, 3), and observed keypoints exactly on their projections, conf 0."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-0.5, 0.5, (B, 49, 3))
    camera_t = np.array([[0.0, 0.0, 50.0], [0.1, -0.2, 25.0]])
    observed = np.zeros((B, 49, 3))
    for b in range(B):
        for j in range(49):
            observed[b, j, :2] = project_by_hand(points[b, j], camera_t[b])
    return points, camera_t, observed


# -- the building blocks -----------------------------------------------------------------------------


def test_the_hand_written_joint_indices_are_spins_names():
    names = {OP_NOSE: "OP Nose", OP_NECK: "OP Neck", OP_RSHOULDER: "OP RShoulder", OP_LSHOULDER: "OP LShoulder",
             OP_RHIP: "OP RHip", OP_LHIP: "OP LHip", RIGHT_KNEE: "Right Knee", RIGHT_HIP: "Right Hip",
             LEFT_HIP: "Left Hip", RIGHT_SHOULDER: "Right Shoulder", LEFT_SHOULDER: "Left Shoulder",
             LEFT_WRIST: "Left Wrist"}
    assert {i: SPIN49_NAMES[i] for i in names} == names
    assert sorted(ignored_joints(FittingConfig())) == sorted(SPIN_IGNORED)


def test_gmof_is_geman_mcclure_per_coordinate():
    r = [0.0, 3.0, -100.0, 1e4, -250.0]
    _close(gmof(_t(r), SIGMA), [gmof_by_hand(x) for x in r])
    _close(gmof(_t(r), 10.0), [gmof_by_hand(x, 10.0) for x in r])


def test_reprojection_terms_are_conf_squared_times_gmof_summed_over_u_and_v():
    projected = _t([[[10.0, 20.0], [0.0, 0.0], [5.0, 5.0]], [[1.0, 2.0], [300.0, -40.0], [0.0, 0.0]]])
    observed = _t([[[13.0, 16.0, 0.5], [50.0, 0.0, 1.0], [5.0, 5.0, 1.0]],
                   [[1.0, 2.0, 0.0], [0.0, 0.0, 0.8], [0.0, 0.0, 0.2]]])
    conf = observed[..., 2]
    expected = [[0.5**2 * (gmof_by_hand(-3.0) + gmof_by_hand(4.0)), 1.0 * (gmof_by_hand(-50.0) + 0.0), 0.0],
                [0.0, 0.8**2 * (gmof_by_hand(300.0) + gmof_by_hand(-40.0)), 0.0]]
    _close(reprojection_terms(projected, observed, conf, SIGMA), expected)


def test_fit_confidences_zero_spins_five_joints_on_a_copy():
    keypoints = torch.zeros(B, 49, 3, dtype=torch.float64)
    keypoints[..., 2] = 0.7
    keypoints[1, OP_NOSE, 2] = -0.2  # a negative confidence counts as unseen
    before = keypoints.clone()
    conf = fit_confidences(keypoints, ignored_joints(FittingConfig()))
    expected = np.full((B, 49), 0.7)
    expected[:, list(SPIN_IGNORED)] = 0.0
    expected[1, OP_NOSE] = 0.0
    _close(conf, expected)
    assert torch.equal(keypoints, before)


# -- the ranking error -------------------------------------------------------------------------------


def test_ranking_error_is_the_mean_over_49_keypoints_of_conf_squared_gmof():
    points, camera_t, observed = _scene()
    # (keypoint, confidence, pixel offset of the observation from the projection) per sample.
    seen = [
        [(OP_NOSE, 1.0, (30.0, -40.0)), (RIGHT_KNEE, 0.5, (150.0, 0.0)), (LEFT_WRIST, 0.9, (-2.0, 7.0))],
        [(OP_NOSE, 0.3, (0.0, 500.0)), (RIGHT_KNEE, 1.0, (-60.0, 80.0))],
    ]
    for b, rows in enumerate(seen):
        for j, c, (du, dv) in rows:
            observed[b, j] += (du, dv, c)
        # SPIN's five ignored joints: fully confident and far off, yet they add nothing.
        for j in SPIN_IGNORED:
            observed[b, j] += (400.0, -300.0, 1.0)
    observed[0, 40, :2] += 1000.0  # confidence 0: adds nothing either
    expected = [
        sum(c**2 * (gmof_by_hand(du) + gmof_by_hand(dv)) for _, c, (du, dv) in rows) / 49 for rows in seen
    ]
    error = ranking_error(_t(points), _t(camera_t), _t(observed), CameraConfig(), SIGMA,
                          ignored_joints(FittingConfig()))
    _close(error, expected)


def test_ranking_error_is_zero_on_the_projection_and_counts_an_ignored_joint_once_no_longer_ignored():
    points, camera_t, observed = _scene(1)
    observed[:, OP_NECK] += (0.0, 90.0, 1.0)
    spin = ranking_error(_t(points), _t(camera_t), _t(observed), CameraConfig(), SIGMA, SPIN_IGNORED)
    assert spin.abs().max() < 1e-12
    only_hips = ranking_error(_t(points), _t(camera_t), _t(observed), CameraConfig(), SIGMA,
                              (OP_RHIP, OP_LHIP))
    _close(only_hips, [gmof_by_hand(90.0) / 49] * B)


# -- the camera stage --------------------------------------------------------------------------------


def _torso_scene():
    """Sample 0 sees the whole OpenPose torso; sample 1 misses the OpenPose left hip, so uses the dataset torso."""
    points, camera_t, observed = _scene(2)
    op_offsets = {OP_RSHOULDER: (3.0, -4.0), OP_LSHOULDER: (1.0, 2.0), OP_RHIP: (-5.0, 0.5), OP_LHIP: (0.0, 6.0)}
    ds_offsets = {RIGHT_HIP: (10.0, 0.0), LEFT_HIP: (0.0, -7.0), RIGHT_SHOULDER: (2.0, 2.0), LEFT_SHOULDER: (-1.0, 3.0)}
    for b in range(B):
        for j, (du, dv) in {**op_offsets, **ds_offsets}.items():
            observed[b, j] += (du, dv, 0.3)  # confidences do not weight the camera stage's squared error
        observed[b, OP_NOSE] += (80.0, 80.0, 1.0)  # not a torso joint
    observed[1, OP_LHIP, 2] = 0.0
    return points, camera_t, observed, op_offsets, ds_offsets


def test_camera_stage_loss_uses_the_openpose_torso_when_all_four_are_seen_else_the_dataset_torso():
    points, camera_t, observed, op_offsets, ds_offsets = _torso_scene()
    initial_depth = camera_t[:, 2] - np.array([0.01, -0.03])
    depth_weight = 100.0
    squared = [sum(du**2 + dv**2 for du, dv in offsets.values()) for offsets in (op_offsets, ds_offsets)]
    expected = [squared[b] + depth_weight**2 * (camera_t[b, 2] - initial_depth[b]) ** 2 for b in range(B)]
    loss = camera_stage_loss(_t(points), _t(camera_t), _t(initial_depth), _t(observed), CameraConfig(),
                             depth_weight)
    _close(loss, expected)
    # the same numbers written out: four squared offsets, then 100^2 * (0.01^2 or 0.03^2)
    assert expected[0] == pytest.approx(25 + 5 + 25.25 + 36 + 1.0)
    assert expected[1] == pytest.approx(100 + 49 + 8 + 10 + 9.0)


def test_camera_stage_loss_depth_term_is_the_squared_weight_times_the_squared_depth_change():
    points, camera_t, observed, _, _ = _torso_scene()
    on_target = observed.copy()
    for j in (OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP, RIGHT_HIP, LEFT_HIP, RIGHT_SHOULDER, LEFT_SHOULDER):
        for b in range(B):
            on_target[b, j, :2] = project_by_hand(points[b, j], camera_t[b])
    loss = camera_stage_loss(_t(points), _t(camera_t), _t(camera_t[:, 2] + [0.5, -2.0]), _t(on_target),
                             CameraConfig(), 7.0)
    _close(loss, [49.0 * 0.25, 49.0 * 4.0])


def test_camera_stage_counts_only_the_visible_dataset_torso_joints():
    """spin-ray's choice, not SPIN's: SPIN's dataset-torso branch sums all four squared errors whatever their
    confidence, so an unseen joint pulls towards whatever coordinates it holds."""
    points, camera_t, observed, _, ds_offsets = _torso_scene()
    observed[1, LEFT_SHOULDER, 2] = 0.0
    loss = camera_stage_loss(_t(points), _t(camera_t), _t(camera_t[:, 2]), _t(observed), CameraConfig(), 100.0)
    spin_ray = sum(du**2 + dv**2 for j, (du, dv) in ds_offsets.items() if j != LEFT_SHOULDER)
    spin = sum(du**2 + dv**2 for du, dv in ds_offsets.values())
    _close(loss[1], spin_ray)
    assert spin_ray != pytest.approx(spin)


# -- the body stage ----------------------------------------------------------------------------------


class HalfSquaredNorm(torch.nn.Module):
    """A stand-in pose prior, 0.5 |body_pose|^2, that records what it was given."""

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        self.seen = body_pose.detach().clone()
        return 0.5 * (body_pose * body_pose).sum(-1)


def test_angle_prior_uses_spins_four_pose_entries_and_signs():
    # SPIN: exp(pose[:, [55-3, 58-3, 12-3, 15-3]] * [1, -1, -1, -1]) ** 2 on the 69-d body pose.
    assert ANGLE_PRIOR_INDICES == (55 - 3, 58 - 3, 12 - 3, 15 - 3)
    assert ANGLE_PRIOR_SIGNS == (1.0, -1.0, -1.0, -1.0)
    body_pose = np.zeros((B, 69))
    body_pose[0, [52, 55, 9, 12]] = [0.3, -0.2, 0.1, -0.4]
    body_pose[1, [52, 55, 9, 12]] = [-1.0, 0.5, 0.0, 0.25]
    body_pose[:, [58, 15, 54, 11]] = 2.0  # neighbours, and the unshifted 72-d indices: not bending joints
    expected = [
        np.exp(0.3) ** 2 + np.exp(0.2) ** 2 + np.exp(-0.1) ** 2 + np.exp(0.4) ** 2,
        np.exp(-1.0) ** 2 + np.exp(-0.5) ** 2 + 1.0 + np.exp(-0.25) ** 2,
    ]
    _close(angle_prior(_t(body_pose)), expected)
    _close(shape_prior(_t([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]])), [5.25, 9.0])


def test_body_stage_loss_is_reprojection_plus_squared_weights_times_priors():
    points, camera_t, observed = _scene(3)
    seen = [[(OP_NOSE, 1.0, (30.0, -40.0)), (RIGHT_KNEE, 0.5, (150.0, 0.0))],
            [(LEFT_WRIST, 0.8, (-5.0, 12.0))]]
    for b, rows in enumerate(seen):
        for j, c, (du, dv) in rows:
            observed[b, j] += (du, dv, c)
        observed[b, RIGHT_HIP] += (250.0, 0.0, 1.0)  # ignored through fit_confidences
    rng = np.random.default_rng(4)
    global_orient = rng.normal(0, 0.3, (B, 3))
    body_pose = rng.normal(0, 0.2, (B, 69))
    betas = rng.normal(0, 1.0, (B, 10))
    params = SmplifyParams(_t(global_orient), _t(body_pose), _t(betas), _t(camera_t))
    fitting = FittingConfig(pose_prior_weight=4.78, angle_prior_weight=15.2, shape_prior_weight=5.0)
    prior = HalfSquaredNorm()
    conf = fit_confidences(_t(observed), ignored_joints(fitting))

    loss = body_stage_loss(_t(points), params, _t(observed), conf, prior, CameraConfig(), fitting)

    expected = []
    for b, rows in enumerate(seen):
        reprojection = sum(c**2 * (gmof_by_hand(du) + gmof_by_hand(dv)) for _, c, (du, dv) in rows)
        pose_prior = 0.5 * sum(x * x for x in body_pose[b])
        bend = (np.exp(body_pose[b, 52]) ** 2 + np.exp(-body_pose[b, 55]) ** 2
                + np.exp(-body_pose[b, 9]) ** 2 + np.exp(-body_pose[b, 12]) ** 2)
        shape = sum(x * x for x in betas[b])
        expected.append(reprojection + 4.78**2 * pose_prior + 15.2**2 * bend + 5.0**2 * shape)
    _close(loss, expected)
    assert torch.equal(prior.seen, _t(body_pose))  # the prior sees the 69-d body pose, no global orientation


def test_body_stage_loss_with_the_real_pose_prior_adds_its_value_times_the_squared_weight():
    from spin_ray.fitting.priors import load_pose_prior

    points, camera_t, observed = _scene(5)
    body_pose = np.random.default_rng(6).normal(0, 0.2, (B, 69))
    params = SmplifyParams(_t(np.zeros((B, 3))), _t(body_pose), _t(np.zeros((B, 10))), _t(camera_t))
    prior = load_pose_prior(FittingConfig())
    gmm = prior(_t(body_pose)).numpy()  # the GMM's value is taken as a known number; the rest is by hand
    fitting = FittingConfig(pose_prior_weight=2.0, angle_prior_weight=0.0, shape_prior_weight=0.0)
    conf = _t(observed[..., 2])
    _close(body_stage_loss(_t(points), params, _t(observed), conf, prior, CameraConfig(), fitting), 4.0 * gmm)


# -- the training losses -----------------------------------------------------------------------------


def _training_batch():
    """Predictions and targets for two samples; sample 1 has no 3D and (with fit_error 150) an invalid fit."""
    rng = np.random.default_rng(10)
    pred_kp2d = rng.uniform(-1, 1, (B, 49, 2))
    target_kp2d = np.concatenate([rng.uniform(-1, 1, (B, 49, 2)), np.zeros((B, 49, 1))], axis=-1)
    target_kp2d[:, [OP_NOSE, OP_RSHOULDER], 2] = [[1.0, 0.5], [0.7, 1.0]]  # OpenPose keypoints
    target_kp2d[:, [RIGHT_KNEE, LEFT_WRIST, 40], 2] = [[1.0, 0.6, 0.0], [0.2, 1.0, 1.0]]  # dataset keypoints
    pred_kp3d = rng.normal(0, 0.3, (B, 49, 3))
    target_kp3d = np.concatenate([rng.normal(0, 0.3, (B, 24, 3)), rng.uniform(0, 1, (B, 24, 1))], axis=-1)
    target_kp3d[1] = 9.0  # no 3D for sample 1: any values
    pred_rotmat = rng.normal(0, 1, (B, 24, 3, 3))
    fit_rotmat = rng.normal(0, 1, (B, 24, 3, 3))
    pred_betas = rng.normal(0, 1, (B, 10))
    fit_betas = rng.normal(0, 1, (B, 10))
    fit_betas[1] = 50.0  # the invalid fit's values must not count
    pred_camera = np.array([[0.9, 0.1, -0.2], [0.1, 0.0, 0.3]])
    pred_vertices = rng.normal(0, 0.5, (B, 7, 3))
    fit_vertices = rng.normal(0, 0.5, (B, 7, 3))
    return dict(pred_kp2d=pred_kp2d, target_kp2d=target_kp2d, pred_kp3d=pred_kp3d, target_kp3d=target_kp3d,
                pred_rotmat=pred_rotmat, fit_rotmat=fit_rotmat, pred_betas=pred_betas, fit_betas=fit_betas,
                pred_camera=pred_camera, pred_vertices=pred_vertices, fit_vertices=fit_vertices,
                has_3d=np.array([True, False]), fit_error=np.array([50.0, 150.0]), has_smpl=np.array([False, False]))


def kp2d_by_hand(pred, target, openpose_weight, dataset_weight) -> float:
    """SPIN's keypoint_loss: mean over B x 49 x 2 of conf * group weight * (pred - target)^2."""
    total = 0.0
    for b in range(B):
        for j in range(49):
            weight = target[b, j, 2] * (openpose_weight if j < 25 else dataset_weight)
            total += sum(weight * (pred[b, j, c] - target[b, j, c]) ** 2 for c in range(2))
    return total / (B * 49 * 2)


def kp3d_by_hand(pred24, target, has_3d) -> float:
    """SPIN's keypoint_3d_loss: both sets minus their LSP-hip midpoint (joints 2, 3), mean of conf * squared error."""
    total, count = 0.0, 0
    for b in np.flatnonzero(has_3d):
        pred_pelvis = (pred24[b, 2] + pred24[b, 3]) / 2
        target_pelvis = (target[b, 2, :3] + target[b, 3, :3]) / 2
        for j in range(24):
            for c in range(3):
                error = (pred24[b, j, c] - pred_pelvis[c]) - (target[b, j, c] - target_pelvis[c])
                total += target[b, j, 3] * error**2
                count += 1
    return total / count


def mean_over_valid(diff_squared_or_abs: np.ndarray, valid: np.ndarray) -> float:
    """nn.MSELoss / nn.L1Loss (mean) on the valid samples only, as SPIN indexes them."""
    return float(diff_squared_or_abs[valid].mean())


def test_keypoint_2d_loss_value():
    d = _training_batch()
    for openpose_weight, dataset_weight in ((0.0, 1.0), (0.5, 2.0)):
        loss = keypoint_2d_loss(_t(d["pred_kp2d"]), _t(d["target_kp2d"]), openpose_weight, dataset_weight)
        _close(loss, kp2d_by_hand(d["pred_kp2d"], d["target_kp2d"], openpose_weight, dataset_weight))
    # one term written out: only the Right Knee of sample 0 is seen, so the mean divides its error by 2 * 49 * 2
    only = d["target_kp2d"].copy()
    only[..., 2] = 0.0
    only[0, RIGHT_KNEE, 2] = 1.0
    p, t = d["pred_kp2d"], only
    du, dv = p[0, RIGHT_KNEE] - t[0, RIGHT_KNEE, :2]
    expected = (du**2 + dv**2) / 196
    _close(keypoint_2d_loss(_t(p), _t(t), 0.0, 1.0), expected)


def test_keypoint_3d_loss_value_over_samples_with_3d_only():
    d = _training_batch()
    pred24 = d["pred_kp3d"][:, 25:]
    loss = keypoint_3d_loss(_t(pred24), _t(d["target_kp3d"]), torch.tensor(d["has_3d"]))
    _close(loss, kp3d_by_hand(pred24, d["target_kp3d"], d["has_3d"]))


def test_pose_and_betas_losses_are_mses_over_valid_fits_only():
    d = _training_batch()
    valid = np.array([True, False])
    pose, betas = smpl_losses(_t(d["pred_rotmat"]), _t(d["pred_betas"]), _t(d["fit_rotmat"]), _t(d["fit_betas"]),
                              torch.tensor(valid))
    _close(pose, mean_over_valid((d["pred_rotmat"] - d["fit_rotmat"]) ** 2, valid))
    _close(betas, mean_over_valid((d["pred_betas"] - d["fit_betas"]) ** 2, valid))
    # written out for sample 0: mean over its 24 * 9 rotation entries and 10 betas
    _close(pose, ((d["pred_rotmat"][0] - d["fit_rotmat"][0]) ** 2).sum() / 216)
    _close(betas, ((d["pred_betas"][0] - d["fit_betas"][0]) ** 2).sum() / 10)


def test_vertex_and_camera_losses_values():
    d = _training_batch()
    valid = np.array([False, True])
    _close(vertex_loss(_t(d["pred_vertices"]), _t(d["fit_vertices"]), torch.tensor(valid)),
           np.abs(d["pred_vertices"][1] - d["fit_vertices"][1]).sum() / 21)
    # SPIN: ((exp(-10 s)) ** 2).mean() over the batch
    _close(camera_loss(_t(d["pred_camera"])), (np.exp(-9.0) ** 2 + np.exp(-1.0) ** 2) / 2)


def _inputs_and_targets(d, has_smpl=None, fit_error=None):
    pred = LossInputs(rotmat=_t(d["pred_rotmat"]), betas=_t(d["pred_betas"]), camera=_t(d["pred_camera"]),
                      keypoints_2d=_t(d["pred_kp2d"]), keypoints_3d=_t(d["pred_kp3d"]),
                      vertices=_t(d["pred_vertices"]))
    target = LossTargets(keypoints_2d=_t(d["target_kp2d"]), keypoints_3d=_t(d["target_kp3d"]),
                         has_3d=torch.tensor(d["has_3d"]), fit_rotmat=_t(d["fit_rotmat"]),
                         fit_betas=_t(d["fit_betas"]),
                         fit_error=_t(d["fit_error"] if fit_error is None else fit_error),
                         has_smpl=torch.tensor(d["has_smpl"] if has_smpl is None else has_smpl),
                         fit_vertices=_t(d["fit_vertices"]))
    return pred, target


def test_spin_loss_terms_and_total_with_spins_weights_and_the_factor_60():
    d = _training_batch()
    weights, fitting = LossConfig(), FittingConfig()
    assert (weights.keypoint_loss_weight, weights.keypoint_3d_loss_weight, weights.pose_loss_weight,
            weights.beta_loss_weight, weights.shape_loss_weight, weights.cam_loss_weight,
            weights.openpose_train_weight, weights.gt_train_weight, weights.loss_scale) == (
        5.0, 5.0, 1.0, 0.001, 0.0, 1.0, 0.0, 1.0, 60.0)
    terms = spin_loss(*_inputs_and_targets(d), weights, fitting)

    valid = np.array([True, False])  # fit errors 50 and 150 against SPIN's threshold 100
    kp2d = kp2d_by_hand(d["pred_kp2d"], d["target_kp2d"], 0.0, 1.0)
    kp3d = kp3d_by_hand(d["pred_kp3d"][:, 25:], d["target_kp3d"], d["has_3d"])
    pose = mean_over_valid((d["pred_rotmat"] - d["fit_rotmat"]) ** 2, valid)
    betas = mean_over_valid((d["pred_betas"] - d["fit_betas"]) ** 2, valid)
    cam = (np.exp(-10 * 0.9) ** 2 + np.exp(-10 * 0.1) ** 2) / 2
    total = 60 * (5 * kp2d + 5 * kp3d + 1 * pose + 0.001 * betas + 1 * cam)

    assert terms.valid_fits.tolist() == [True, False]
    for got, want in ((terms.keypoints_2d, kp2d), (terms.keypoints_3d, kp3d), (terms.pose, pose),
                      (terms.betas, betas), (terms.camera, cam), (terms.total, total)):
        _close(got, want)
    assert terms.vertices.item() == 0.0


def test_spin_loss_with_a_vertex_weight_ground_truth_and_an_extreme_beta_fit():
    d = _training_batch()
    d["fit_betas"][0, 4] = 3.5  # |beta| > 3: SPIN supervises this fit's betas towards zero
    weights = LossConfig(shape_loss_weight=2.0, openpose_train_weight=0.5, cam_loss_weight=3.0)
    # sample 1: fit error inf but ground-truth SMPL, so it supervises, with its (large) betas kept
    terms = spin_loss(*_inputs_and_targets(d, has_smpl=np.array([False, True]),
                                           fit_error=np.array([50.0, np.inf])), weights, FittingConfig())

    betas_target = d["fit_betas"].copy()
    betas_target[0] = 0.0
    kp2d = kp2d_by_hand(d["pred_kp2d"], d["target_kp2d"], 0.5, 1.0)
    kp3d = kp3d_by_hand(d["pred_kp3d"][:, 25:], d["target_kp3d"], d["has_3d"])
    pose = ((d["pred_rotmat"] - d["fit_rotmat"]) ** 2).mean()
    betas = ((d["pred_betas"] - betas_target) ** 2).mean()
    verts = np.abs(d["pred_vertices"] - d["fit_vertices"]).mean()
    cam = (np.exp(-9.0) ** 2 + np.exp(-1.0) ** 2) / 2
    total = 60 * (5 * kp2d + 5 * kp3d + pose + 0.001 * betas + 2.0 * verts + 3.0 * cam)

    assert terms.valid_fits.tolist() == [True, True]
    for got, want in ((terms.keypoints_2d, kp2d), (terms.betas, betas), (terms.vertices, verts),
                      (terms.pose, pose), (terms.total, total)):
        _close(got, want)


# -- SPIN's fit-update rule and the edges of its supervision rules ------------------------------------


def spin_kept_fits(stored_error, new_error, has_smpl, stored_betas, new_betas, threshold=100.0, max_beta=3.0):
    """SPIN's step after SMPLify: a new fit replaces the stored one where its error is strictly lower; the kept
    error decides validity (strictly below the threshold, or ground truth); betas with any |beta| > 3 become
    zeros for supervision (the dictionary keeps them); ground truth replaces the fit where it exists."""
    update = new_error < stored_error
    error = np.where(update, new_error, stored_error)
    betas = np.where(update[:, None], new_betas, stored_betas)
    supervised = np.where((np.abs(betas) > max_beta).any(axis=1)[:, None], 0.0, betas)
    valid = (error < threshold) | has_smpl
    return update, error, betas, supervised, valid


def test_fit_update_rule_validity_threshold_and_betas_rule_at_spins_edges():
    stored_error = np.array([80.0, 100.0, 30.0, 120.0, 50.0, np.inf])
    new_error = np.array([60.0, 100.0, 30.0, 99.99, np.nan, 100.0])  # lower, equal at the threshold, tie, ...
    has_smpl = np.array([False, False, False, False, False, True])
    stored_betas = np.zeros((6, 10))
    new_betas = np.zeros((6, 10))
    new_betas[0, 2] = 3.0  # exactly 3: kept (SPIN's rule is > 3)
    new_betas[3, 7] = -3.0001  # beyond: supervised towards zero
    new_betas[5, 1] = 5.0  # ground truth: its betas are kept whatever their size
    update, error, betas, supervised, valid = spin_kept_fits(stored_error, new_error, has_smpl, stored_betas, new_betas)
    assert update.tolist() == [True, False, False, True, False, True]  # a tie and a NaN never replace

    # spin-ray: the store's keep-best writes only strictly lower errors (tests/test_fit_store.py); the rules
    # after it are these pure functions, compared here with SPIN's on the kept values.
    ours_valid = valid_fit_mask(torch.tensor(error), torch.tensor(has_smpl), FittingConfig().valid_error_threshold)
    assert ours_valid.tolist() == valid.tolist() == [True, False, True, True, True, True]
    ours = supervision_betas(torch.tensor(betas), torch.tensor(has_smpl), FittingConfig().max_abs_beta)
    gt_kept = supervised.copy()
    gt_kept[has_smpl] = betas[has_smpl]  # SPIN zeroes first, then ground truth replaces the betas
    np.testing.assert_array_equal(ours.numpy(), gt_kept)
    assert ours[0, 2] == 3.0 and ours[3].abs().sum() == 0 and ours[5, 1] == 5.0


def test_losses_with_nothing_to_supervise_are_zero_as_spins():
    """SPIN returns 0 for the 3D, SMPL and shape terms when no sample of the batch has what they need."""
    d = _training_batch()
    none = torch.zeros(B, dtype=torch.bool)
    assert keypoint_3d_loss(_t(d["pred_kp3d"][:, 25:]), _t(d["target_kp3d"]), none).item() == 0.0
    pose, betas = smpl_losses(_t(d["pred_rotmat"]), _t(d["pred_betas"]), _t(d["fit_rotmat"]), _t(d["fit_betas"]), none)
    assert pose.item() == 0.0 and betas.item() == 0.0
    assert vertex_loss(_t(d["pred_vertices"]), _t(d["fit_vertices"]), none).item() == 0.0
    # and a one-term change shows: the 3D term on sample 0 alone is its own hand value
    one = torch.tensor([True, False])
    _close(keypoint_3d_loss(_t(d["pred_kp3d"][:, 25:]), _t(d["target_kp3d"]), one),
           kp3d_by_hand(d["pred_kp3d"][:, 25:], d["target_kp3d"], np.array([True, False])))


# -- a deliberate difference from SPIN's code --------------------------------------------------------


def test_smplify_camera_stage_leaves_the_callers_keypoints_untouched():
    """SPIN zeroes the ignored joints' confidences in place on a view of the caller's keypoints."""
    from spin_ray.body.body_model import BodyModel
    from spin_ray.fitting.smplify import smplify

    points, camera_t, observed = _scene(7)
    observed[..., 2] = 1.0
    observed[..., :2] += 5.0
    keypoints = _t(observed).float()
    before = keypoints.clone()
    init = SmplifyParams(torch.zeros(B, 3), torch.zeros(B, 69), torch.zeros(B, 10),
                         torch.tensor([[0.0, 0.0, 50.0], [0.0, 0.0, 40.0]]))
    fitting = FittingConfig(iterations_camera=2, iterations_body=0)
    smplify(BodyModel.embedded(), HalfSquaredNorm(), keypoints, init, fitting, CameraConfig())
    assert torch.equal(keypoints, before)
    assert (keypoints[:, list(SPIN_IGNORED), 2] == 1.0).all()
