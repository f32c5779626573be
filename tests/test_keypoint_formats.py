"""The keypoint formats people bring and where their joints go among SPIN's 49, name by name."""

from __future__ import annotations

import numpy as np
import pytest

from spin_ray.body.joints import OPENPOSE25_NAMES, SPIN49_NAMES, _swap_side
from spin_ray.body.keypoint_formats import (
    COCO17_NAMES,
    FORMATS,
    LIMB12_DATASET,
    LIMB12_OPENPOSE,
    WHOLEBODY133_NAMES,
)

COCO_TO_OPENPOSE = {
    "nose": "OP Nose", "left_eye": "OP LEye", "right_eye": "OP REye", "left_ear": "OP LEar", "right_ear": "OP REar",
    "left_shoulder": "OP LShoulder", "right_shoulder": "OP RShoulder", "left_elbow": "OP LElbow",
    "right_elbow": "OP RElbow", "left_wrist": "OP LWrist", "right_wrist": "OP RWrist", "left_hip": "OP LHip",
    "right_hip": "OP RHip", "left_knee": "OP LKnee", "right_knee": "OP RKnee", "left_ankle": "OP LAnkle",
    "right_ankle": "OP RAnkle",
}
COCO_TO_DATASET = {
    "nose": "Nose", "left_eye": "Left Eye", "right_eye": "Right Eye", "left_ear": "Left Ear", "right_ear": "Right Ear",
    "left_shoulder": "Left Shoulder", "right_shoulder": "Right Shoulder", "left_elbow": "Left Elbow",
    "right_elbow": "Right Elbow", "left_wrist": "Left Wrist", "right_wrist": "Right Wrist", "left_hip": "Left Hip",
    "right_hip": "Right Hip", "left_knee": "Left Knee", "right_knee": "Right Knee", "left_ankle": "Left Ankle",
    "right_ankle": "Right Ankle",
}
COCO18_TO_OPENPOSE = {
    "nose": "OP Nose", "neck": "OP Neck", "right_shoulder": "OP RShoulder", "right_elbow": "OP RElbow",
    "right_wrist": "OP RWrist", "left_shoulder": "OP LShoulder", "left_elbow": "OP LElbow", "left_wrist": "OP LWrist",
    "right_hip": "OP RHip", "right_knee": "OP RKnee", "right_ankle": "OP RAnkle", "left_hip": "OP LHip",
    "left_knee": "OP LKnee", "left_ankle": "OP LAnkle", "right_eye": "OP REye", "left_eye": "OP LEye",
    "right_ear": "OP REar", "left_ear": "OP LEar",
}
HALPE_EXTRAS_OPENPOSE = {
    "head": None, "neck": "OP Neck", "hip": "OP MidHip", "left_big_toe": "OP LBigToe", "right_big_toe": "OP RBigToe",
    "left_small_toe": "OP LSmallToe", "right_small_toe": "OP RSmallToe", "left_heel": "OP LHeel",
    "right_heel": "OP RHeel",
}
HALPE_EXTRAS_DATASET = {
    "head": "Top of Head (LSP)", "neck": None, "hip": "Pelvis (MPII)", "left_big_toe": None, "right_big_toe": None,
    "left_small_toe": None, "right_small_toe": None, "left_heel": None, "right_heel": None,
}
WHOLEBODY_FEET_OPENPOSE = {
    "left_big_toe": "OP LBigToe", "left_small_toe": "OP LSmallToe", "left_heel": "OP LHeel",
    "right_big_toe": "OP RBigToe", "right_small_toe": "OP RSmallToe", "right_heel": "OP RHeel",
}


def test_coco17_goes_where_spin_puts_it():
    coco = FORMATS["coco"]
    assert coco.joint_names == tuple(COCO_TO_OPENPOSE) and coco.num_joints == 17
    assert coco.detector == COCO_TO_OPENPOSE
    assert coco.ground_truth == COCO_TO_DATASET
    # SPIN's COCO 2014 preprocessing puts COCO's 17 joints at these of its 24 dataset joints.
    source, target = coco.gather("dataset")
    assert source.tolist() == list(range(17))
    assert (target - 25).tolist() == [19, 20, 21, 22, 23, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]


def test_openpose_body25_is_spins_first_25_and_coco18_its_subset():
    body25 = FORMATS["openpose25"]
    assert tuple(body25.detector.values()) == OPENPOSE25_NAMES
    assert body25.gather("openpose")[1].tolist() == list(range(25))
    coco18 = FORMATS["openpose18"]
    assert coco18.detector == COCO18_TO_OPENPOSE
    assert len(coco18.joint_names) == 18


def test_halpe26_is_coco17_plus_head_neck_pelvis_and_feet():
    halpe = FORMATS["halpe"]
    assert halpe.joint_names[:17] == COCO17_NAMES and halpe.num_joints == 26
    assert halpe.detector == {**COCO_TO_OPENPOSE, **HALPE_EXTRAS_OPENPOSE}
    assert halpe.ground_truth == {**COCO_TO_DATASET, **HALPE_EXTRAS_DATASET}


def test_wholebody133_fills_body_and_feet_only():
    whole = FORMATS["wholebody"]
    assert whole.num_joints == 133 and WHOLEBODY133_NAMES[:17] == COCO17_NAMES
    assert {n: whole.detector[n] for n in WHOLEBODY133_NAMES[:23]} == {**COCO_TO_OPENPOSE, **WHOLEBODY_FEET_OPENPOSE}
    assert all(whole.detector[n] is None and whole.ground_truth[n] is None for n in WHOLEBODY133_NAMES[23:])
    assert [n for n in WHOLEBODY133_NAMES[23:] if n.startswith("face_")] == [f"face_{i}" for i in range(68)]
    assert sum(n.startswith(("left_hand_", "right_hand_")) for n in WHOLEBODY133_NAMES) == 42


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_maps_commute_with_a_left_right_flip(name):
    """A left joint goes to a left slot: swapping sides before or after the map gives the same slot."""
    fmt = FORMATS[name]
    for table in (fmt.detector, fmt.ground_truth):
        for joint, slot in table.items():
            mirrored = table.get(_swap_side(joint))
            assert (slot is None and mirrored is None) or mirrored == _swap_side(slot), (name, joint)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_slot_is_filled_by_at_most_one_joint(name):
    for slots in ("openpose", "dataset"):
        _, target = FORMATS[name].gather(slots)
        assert len(set(target.tolist())) == len(target)
        assert all((t < 25) == (slots == "openpose") for t in target)


def test_to_spin49_puts_values_in_the_named_slots():
    coco = FORMATS["coco"]
    points = np.arange(17 * 3, dtype=float).reshape(1, 17, 3)
    for slots, table in (("openpose", COCO_TO_OPENPOSE), ("dataset", COCO_TO_DATASET)):
        out = coco.to_spin49(points, slots)
        for i, joint in enumerate(COCO17_NAMES):
            assert out[0, SPIN49_NAMES.index(table[joint])].tolist() == points[0, i].tolist()
        assert (out[0, :, 2] != 0).sum() == 17  # every other slot stays at confidence 0
        assert out.shape == (1, 49, 3)


def test_limb_joints_pair_the_same_joint_in_both_slot_sets():
    for op, ds in zip(LIMB12_OPENPOSE, LIMB12_DATASET, strict=True):
        side = {"R": "Right", "L": "Left"}[SPIN49_NAMES[op][3]]
        assert SPIN49_NAMES[ds] == f"{side} {SPIN49_NAMES[op][4:]}"


def test_openpose_joint_names_come_from_the_one_body25_list():
    from spin_ray.body.keypoint_formats import OPENPOSE_BODY25_NAMES, openpose_joint_name

    assert OPENPOSE_BODY25_NAMES[:9] == ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
                                         "left_shoulder", "left_elbow", "left_wrist", "mid_hip")
    assert OPENPOSE_BODY25_NAMES[19:] == ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
                                          "right_small_toe", "right_heel")
    assert [openpose_joint_name(n) for n in ("OP REye", "OP LEar", "OP RKnee")] == ["right_eye", "left_ear",
                                                                                     "right_knee"]


BLAZEPOSE_TO_OPENPOSE = {
    "nose": "OP Nose", "left_eye": "OP LEye", "right_eye": "OP REye", "left_ear": "OP LEar", "right_ear": "OP REar",
    "left_shoulder": "OP LShoulder", "right_shoulder": "OP RShoulder", "left_elbow": "OP LElbow",
    "right_elbow": "OP RElbow", "left_wrist": "OP LWrist", "right_wrist": "OP RWrist", "left_hip": "OP LHip",
    "right_hip": "OP RHip", "left_knee": "OP LKnee", "right_knee": "OP RKnee", "left_ankle": "OP LAnkle",
    "right_ankle": "OP RAnkle", "left_heel": "OP LHeel", "right_heel": "OP RHeel", "left_foot_index": "OP LBigToe",
    "right_foot_index": "OP RBigToe", "neck": "OP Neck", "mid_hip": "OP MidHip",
}


def test_blazepose33_goes_to_the_named_body25_slots_and_nothing_else():
    from spin_ray.body.keypoint_formats import BLAZEPOSE33_NAMES

    fmt = FORMATS["blazepose"]
    assert len(BLAZEPOSE33_NAMES) == 33 and fmt.joint_names[33:] == ("neck", "mid_hip")
    assert {j: s for j, s in fmt.detector.items() if s is not None} == BLAZEPOSE_TO_OPENPOSE
    # Every BODY_25 slot but the small toes is filled.
    assert sorted(set(OPENPOSE25_NAMES) - set(BLAZEPOSE_TO_OPENPOSE.values())) == ["OP LSmallToe", "OP RSmallToe"]


def test_blazepose_to_openpose25_puts_each_landmark_in_its_slot_with_midpoints_for_neck_and_mid_hip():
    from spin_ray.body.keypoint_formats import BLAZEPOSE33_NAMES, blazepose_to_openpose25

    rng = np.random.default_rng(0)
    landmarks = np.concatenate([rng.uniform(0, 500, (2, 33, 2)), rng.uniform(0.1, 1, (2, 33, 1))], -1)
    out = blazepose_to_openpose25(landmarks)
    assert out.shape == (2, 25, 3)
    for joint, slot in BLAZEPOSE_TO_OPENPOSE.items():
        if joint in ("neck", "mid_hip"):
            continue
        np.testing.assert_allclose(out[:, OPENPOSE25_NAMES.index(slot)], landmarks[:, BLAZEPOSE33_NAMES.index(joint)],
                                   rtol=1e-6)
    for slot, (a, b) in (("OP Neck", ("left_shoulder", "right_shoulder")), ("OP MidHip", ("left_hip", "right_hip"))):
        pa, pb = landmarks[:, BLAZEPOSE33_NAMES.index(a)], landmarks[:, BLAZEPOSE33_NAMES.index(b)]
        np.testing.assert_allclose(out[:, OPENPOSE25_NAMES.index(slot), :2], (pa[:, :2] + pb[:, :2]) / 2, rtol=1e-6)
        np.testing.assert_allclose(out[:, OPENPOSE25_NAMES.index(slot), 2], np.minimum(pa[:, 2], pb[:, 2]), rtol=1e-6)
    small_toes = [OPENPOSE25_NAMES.index(n) for n in ("OP LSmallToe", "OP RSmallToe")]
    assert (out[:, small_toes] == 0).all()


def test_blazepose_map_commutes_with_mirroring_the_image():
    """Mirror a person (x -> W - x, left and right landmarks swapped): its BODY_25 keypoints are the mirror of the
    original's under OpenPose's own flip permutation."""
    from spin_ray.body.joints import OPENPOSE25_FLIP_PERM
    from spin_ray.body.keypoint_formats import BLAZEPOSE33_NAMES, blazepose_to_openpose25

    rng = np.random.default_rng(1)
    landmarks = np.concatenate([rng.uniform(0, 500, (33, 2)), rng.uniform(0.1, 1, (33, 1))], -1)
    swap = [BLAZEPOSE33_NAMES.index(_swap_side(n)) if _swap_side(n) in BLAZEPOSE33_NAMES else i
            for i, n in enumerate(BLAZEPOSE33_NAMES)]
    swap[BLAZEPOSE33_NAMES.index("mouth_left")] = BLAZEPOSE33_NAMES.index("mouth_right")
    swap[BLAZEPOSE33_NAMES.index("mouth_right")] = BLAZEPOSE33_NAMES.index("mouth_left")
    mirrored = landmarks[swap].copy()
    mirrored[:, 0] = 500 - mirrored[:, 0]
    expected = blazepose_to_openpose25(landmarks)[list(OPENPOSE25_FLIP_PERM)]
    expected[:, 0] = np.where(expected[:, 2] > 0, 500 - expected[:, 0], 0)
    np.testing.assert_allclose(blazepose_to_openpose25(mirrored), expected, rtol=1e-5, atol=1e-4)
