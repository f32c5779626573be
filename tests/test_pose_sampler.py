import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spin_ray.body.joints import SMPL_JOINT_NAMES, SMPL_PARENTS
from spin_ray.errors import InputError
from spin_ray.body.pose_sampler import FAMILIES, sample_body_poses, sample_global_orient
from spin_ray.geometry import axis_angle_to_matrix, perspective_projection

torch.set_num_threads(1)
J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}

# A rough SMPL-like T-pose stick skeleton (metres): x = person's left, y = up, z = forward.
REST = torch.tensor([
    [0.0, 0.0, 0.0], [0.1, -0.08, 0.0], [-0.1, -0.08, 0.0], [0.0, 0.1, 0.0],
    [0.1, -0.5, 0.0], [-0.1, -0.5, 0.0], [0.0, 0.25, 0.0], [0.1, -0.9, 0.0],
    [-0.1, -0.9, 0.0], [0.0, 0.3, 0.0], [0.1, -0.95, 0.12], [-0.1, -0.95, 0.12],
    [0.0, 0.5, 0.0], [0.08, 0.45, 0.0], [-0.08, 0.45, 0.0], [0.0, 0.6, 0.03],
    [0.18, 0.45, 0.0], [-0.18, 0.45, 0.0], [0.45, 0.45, 0.0], [-0.45, 0.45, 0.0],
    [0.7, 0.45, 0.0], [-0.7, 0.45, 0.0], [0.78, 0.45, 0.0], [-0.78, 0.45, 0.0],
], dtype=torch.float64)


def forward_kinematics(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (B, 24, 3) and global rotations (B, 24, 3, 3) of the stick skeleton."""
    local = axis_angle_to_matrix(pose.double().view(-1, 24, 3))
    rots, points = [local[:, 0]], [REST[0].expand(pose.shape[0], 3)]
    for j in range(1, 24):
        p = SMPL_PARENTS[j]
        rots.append(rots[p] @ local[:, j])
        points.append(points[p] + torch.einsum("bij,j->bi", rots[p], REST[j] - REST[p]))
    return torch.stack(points, 1), torch.stack(rots, 1)


def single_joint_pose(joint: str, axis: int, angle: float) -> torch.Tensor:
    pose = torch.zeros(1, 72, dtype=torch.float64)
    pose[0, 3 * J[joint] + axis] = angle
    return pose


@pytest.mark.parametrize("side", ["left", "right"])
def test_knee_flexion_axis_moves_ankle_backwards(side):
    points, _ = forward_kinematics(single_joint_pose(f"{side}_knee", 0, 1.0))
    ankle = points[0, J[f"{side}_ankle"]]
    assert ankle[2] < -0.3  # shin swung backwards
    assert ankle[1] > REST[J[f"{side}_ankle"], 1]


@pytest.mark.parametrize("side,sign", [("left", -1.0), ("right", 1.0)])
def test_elbow_flexion_axis_moves_wrist_forward_and_inward(side, sign):
    points, _ = forward_kinematics(single_joint_pose(f"{side}_elbow", 1, sign * 1.0))
    wrist = points[0, J[f"{side}_wrist"]]
    assert wrist[2] > 0.15
    assert abs(wrist[0]) < abs(REST[J[f"{side}_wrist"], 0])


def test_hip_flexion_is_negative_x_and_lifts_the_thigh_forward():
    points, _ = forward_kinematics(single_joint_pose("left_hip", 0, -1.0))
    assert points[0, J["left_knee"], 2] > 0.3


def test_sampler_is_deterministic_and_seed_dependent():
    a = sample_body_poses(64, torch.Generator().manual_seed(1))
    b = sample_body_poses(64, torch.Generator().manual_seed(1))
    c = sample_body_poses(64, torch.Generator().manual_seed(2))
    assert a.shape == (64, 72) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(a[:, :3], torch.zeros(64, 3))


def test_sampled_poses_never_bend_backwards():
    pose = sample_body_poses(4000, torch.Generator().manual_seed(3), dtype=torch.float64)
    per_joint = pose.view(-1, 24, 3)
    assert torch.isfinite(pose).all()
    assert (per_joint[:, J["left_knee"], 0] >= 0).all() and (per_joint[:, J["right_knee"], 0] >= 0).all()
    assert (per_joint[:, J["left_elbow"], 1] <= 0).all() and (per_joint[:, J["right_elbow"], 1] >= 0).all()
    # Each joint's angle stays well inside pi (no wrap-around ambiguity for the GMM).
    assert per_joint.norm(dim=-1).max() < 3.1
    points, rots = forward_kinematics(pose)
    for side in ("left", "right"):
        # In the thigh's frame the shin points down and never forward of the thigh line.
        shin = torch.einsum("bji,bj->bi", rots[:, J[f"{side}_hip"]],
                            points[:, J[f"{side}_ankle"]] - points[:, J[f"{side}_knee"]])
        assert (shin[:, 2] <= 0.03).all()
        # In the upper arm's frame the forearm never swings behind the arm's line.
        forearm = torch.einsum("bji,bj->bi", rots[:, J[f"{side}_shoulder"]],
                               points[:, J[f"{side}_wrist"]] - points[:, J[f"{side}_elbow"]])
        assert (forearm[:, 2] >= -0.03).all()
    # Knees do flex in a good share of samples (sitting, crouching, walking).
    assert (per_joint[:, J["left_knee"], 0] > 1.0).float().mean() > 0.2


def test_walking_swings_legs_in_anti_phase_and_arms_against_legs():
    pose = sample_body_poses(3000, torch.Generator().manual_seed(4), families=["walking"]).view(-1, 24, 3)
    left_hip, right_hip = pose[:, J["left_hip"], 0], pose[:, J["right_hip"], 0]
    assert torch.corrcoef(torch.stack((left_hip, right_hip)))[0, 1] < -0.9
    # Left arm forward (negative x after mirroring into the left-side convention) with the right leg.
    left_arm_forward = -pose[:, J["left_shoulder"], 0]
    right_leg_forward = -right_hip
    assert torch.corrcoef(torch.stack((left_arm_forward, right_leg_forward)))[0, 1] > 0.5
    with pytest.raises(InputError, match="unknown pose families"):
        sample_body_poses(3, torch.Generator(), families=["dancing"])
    assert set(FAMILIES) >= {"standing", "walking", "sitting"}


def project_skeleton(orient: torch.Tensor, pose: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame points and pixels of the stick skeleton plus nose and back-of-head markers."""
    n = orient.shape[0]
    full = torch.zeros(n, 72, dtype=torch.float64) if pose is None else pose.double().clone()
    full[:, :3] = orient.double()
    points, rots = forward_kinematics(full)
    head_rot, head = rots[:, J["head"]], points[:, J["head"]]
    nose = head + torch.einsum("bij,j->bi", head_rot, torch.tensor([0.0, 0.05, 0.1], dtype=torch.float64))
    back = head + torch.einsum("bij,j->bi", head_rot, torch.tensor([0.0, 0.05, -0.1], dtype=torch.float64))
    cam_points = torch.cat((points, nose[:, None], back[:, None]), 1)
    t = torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64).expand(n, 3)
    return cam_points + t[:, None], perspective_projection(cam_points, t, 5000.0, crop_size=224)


def test_global_orient_faces_the_camera_upright():
    max_yaw = math.radians(60)
    orient = sample_global_orient(500, max_yaw, torch.Generator().manual_seed(5), dtype=torch.float64)
    cam, px = project_skeleton(orient)
    head, ankles = px[:, J["head"]], px[:, [J["left_ankle"], J["right_ankle"]]]
    assert (head[:, 1] < ankles[..., 1].min(-1).values).all()  # head above the feet in the image
    assert (cam[:, 24, 2] < cam[:, 25, 2]).all()  # nose nearer the camera than the back of the head
    facing = torch.einsum("bij,j->bi", axis_angle_to_matrix(orient), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    yaw = torch.atan2(facing[:, 0], -facing[:, 2])
    assert yaw.abs().max() <= max_yaw + 1e-9 and yaw.abs().max() > 0.8 * max_yaw
    assert facing[:, 1].abs().max() < 1e-9  # upright: no pitch or roll


def test_zero_yaw_puts_the_persons_left_on_the_image_right():
    orient = sample_global_orient(4, 0.0, torch.Generator().manual_seed(6), dtype=torch.float64)
    _, px = project_skeleton(orient)
    assert (px[:, J["left_hip"], 0] > px[:, J["right_hip"], 0]).all()


OPEN_MODEL = Path(__file__).resolve().parents[1] / "spin_ray" / "body" / "assets" / "open_body_model.npz"


def load_open_model() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    with np.load(OPEN_MODEL, allow_pickle=False) as npz:
        arrays = {key: torch.from_numpy(np.asarray(npz[key], dtype=np.float32)) for key in
                  ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "keypoint_regressor")}
        parents = torch.from_numpy(npz["kintree_table"][0].astype(np.int64))
    parents[0] = -1
    return arrays, parents


def open_model_forward(poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices and 24 joints of the open model (mean shape) via smplx's lbs."""
    from smplx.lbs import lbs

    arrays, parents = load_open_model()
    # smplx's lbs wants posedirs as (207, 3V).
    posedirs = arrays["posedirs"].reshape(-1, arrays["posedirs"].shape[-1]).T
    return lbs(torch.zeros(poses.shape[0], arrays["shapedirs"].shape[-1]), poses.float(), arrays["v_template"],
               arrays["shapedirs"], posedirs, arrays["J_regressor"], parents, arrays["weights"])


@pytest.mark.skipif(not OPEN_MODEL.is_file(), reason="open body model not built yet")
def test_global_orient_on_the_open_body_model():
    from spin_ray.body.joints import EXTRA_KEYPOINT_NAMES

    orient = sample_global_orient(8, math.radians(45), torch.Generator().manual_seed(8))
    poses = torch.cat((orient, sample_body_poses(8, torch.Generator().manual_seed(9))[:, 3:]), dim=1)
    verts, joints = open_model_forward(poses)
    nose = load_open_model()[0]["keypoint_regressor"][EXTRA_KEYPOINT_NAMES.index("nose")] @ verts
    t = torch.tensor([[0.0, 0.0, 10.0]]).expand(8, 3)
    px = perspective_projection(joints, t, 5000.0, crop_size=224)
    assert (px[:, J["head"], 1] < px[:, [J["left_ankle"], J["right_ankle"]], 1].min(-1).values).all()
    assert (nose[:, 2] < joints[:, J["head"], 2]).all()


@pytest.mark.skipif(not OPEN_MODEL.is_file(), reason="open body model not built yet")
def test_flexion_axes_on_the_open_body_model():
    arrays, parents = load_open_model()
    poses = torch.cat([
        single_joint_pose("left_knee", 0, 1.0), single_joint_pose("right_knee", 0, 1.0),
        single_joint_pose("left_elbow", 1, -1.0), single_joint_pose("right_elbow", 1, 1.0),
        torch.zeros(1, 72, dtype=torch.float64),
    ]).float()
    _, joints = open_model_forward(poses)
    rest = joints[4]
    assert joints[0, J["left_ankle"], 2] < rest[J["left_ankle"], 2] - 0.1
    assert joints[1, J["right_ankle"], 2] < rest[J["right_ankle"], 2] - 0.1
    assert joints[2, J["left_wrist"], 2] > rest[J["left_wrist"], 2] + 0.1
    assert joints[3, J["right_wrist"], 2] > rest[J["right_wrist"], 2] + 0.1
    # Forearms fold inwards, towards the body's midline.
    assert joints[2, J["left_wrist"], 0] < rest[J["left_wrist"], 0] - 0.05
    assert joints[3, J["right_wrist"], 0] > rest[J["right_wrist"], 0] + 0.05
    # The person's left is +x and the head is up: the model shares the stick skeleton's frame.
    assert rest[J["left_hip"], 0] > rest[J["right_hip"], 0] and rest[J["head"], 1] > rest[J["pelvis"], 1]
