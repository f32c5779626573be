"""Keypoint conventions: names, flips and maps line up."""

import torch

from spin_ray.body import joints as J


def test_flip_permutations_are_involutions():
    for perm in (J.SMPL_FLIP_PERM, J.OPENPOSE25_FLIP_PERM, J.DATASET24_FLIP_PERM, J.SPIN49_FLIP_PERM):
        assert sorted(perm) == list(range(len(perm)))
        assert [perm[p] for p in perm] == list(range(len(perm)))


def test_flip_swaps_named_sides():
    names = J.SPIN49_NAMES
    assert names[J.SPIN49_FLIP_PERM[names.index("OP LWrist")]] == "OP RWrist"
    assert names[J.SPIN49_FLIP_PERM[names.index("Left Ear")]] == "Right Ear"
    assert names[J.SPIN49_FLIP_PERM[names.index("Neck (LSP)")]] == "Neck (LSP)"
    smpl = J.SMPL_JOINT_NAMES
    assert smpl[J.SMPL_FLIP_PERM[smpl.index("left_collar")]] == "right_collar"


def test_spin49_sources_match_names():
    sources = J.SMPL_JOINT_NAMES + J.EXTRA_KEYPOINT_NAMES
    picked = [sources[i] for i in J.SPIN49_FROM_JOINTS_AND_EXTRAS]
    assert len(picked) == J.NUM_KEYPOINTS
    assert picked[J.SPIN49_NAMES.index("OP RKnee")] == "right_knee"
    assert picked[J.SPIN49_NAMES.index("Right Knee")] == "right_knee"
    assert picked[J.SPIN49_NAMES.index("Top of Head (LSP)")] == "head_top"
    # Every extra keypoint is used, so a body model's regressor rows are never dead weight.
    assert set(J.EXTRA_KEYPOINT_NAMES) <= set(picked)


def test_flip_keypoints_twice_is_identity():
    pts = torch.randn(3, 49, 3)
    assert torch.equal(J.flip_keypoints(J.flip_keypoints(pts)), pts)
    flipped = J.flip_keypoints(pts)
    lw, rw = J.SPIN49_NAMES.index("OP LWrist"), J.SPIN49_NAMES.index("OP RWrist")
    assert torch.allclose(flipped[:, rw, 0], -pts[:, lw, 0])


def test_flip_pose_twice_is_identity_and_mirrors_axes():
    pose = torch.randn(5, 72)
    assert torch.allclose(J.flip_pose(J.flip_pose(pose)), pose)
    flipped = J.flip_pose(pose).view(5, 24, 3)
    lk, rk = J.SMPL_JOINT_NAMES.index("left_knee"), J.SMPL_JOINT_NAMES.index("right_knee")
    original = pose.view(5, 24, 3)
    assert torch.allclose(flipped[:, rk], original[:, lk] * torch.tensor([1.0, -1.0, -1.0]))


def test_lsp14_maps_name_the_same_joints():
    assert J.LSP14_NAMES == tuple(J.SPIN49_NAMES[i] for i in J.SPIN49_TO_LSP14)
    h36m_as_lsp = [J.H36M17_NAMES[i] for i in J.H36M17_TO_LSP14]
    for lsp_name, h36m_name in zip(J.LSP14_NAMES[:12], h36m_as_lsp[:12]):
        side, part = lsp_name.lower().split()
        assert h36m_name == f"{side}_{part}"
    assert J.SMPL_PARENTS[0] == -1 and all(p < i for i, p in enumerate(J.SMPL_PARENTS) if i)
