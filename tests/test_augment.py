"""Crops and augmentation: inverses, flips, agreement between image, 2D, 3D and pose."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from spin_ray.body import frames as F
from spin_ray.body.joints import DATASET24_FLIP_PERM, SPIN49_FLIP_PERM
from spin_ray.data import augment as A
from spin_ray.errors import InputError
from spin_ray.geometry import normalised_to_pixels

torch.set_num_threads(1)


def random_aug(batch: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = [A.sample_aug_params(rng, rot_prob=1.0).as_array() for _ in range(batch)]
    aug = torch.from_numpy(np.stack(rows)).double()
    aug[::2, 0] = 1.0  # at least half flipped
    aug[1::2, 0] = 0.0
    return aug


def test_aug_record_round_trip_and_sampling_statistics():
    p = A.AugParams(flip=True, rot=-12.5, scale=1.1, noise=(0.7, 1.0, 1.3))
    back = A.AugParams.from_array(p.as_array())
    assert back.flip and back.rot == pytest.approx(-12.5) and back.noise == pytest.approx((0.7, 1.0, 1.3))
    with pytest.raises(InputError, match="6 values"):
        A.AugParams.from_array([1, 2, 3])

    rng = np.random.default_rng(0)
    draws = [A.sample_aug_params(rng) for _ in range(4000)]
    rot = np.array([d.rot for d in draws])
    scale = np.array([d.scale for d in draws])
    noise = np.array([d.noise for d in draws])
    assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.04
    assert abs((rot == 0).mean() - 0.6) < 0.04  # SPIN zeroes rotation with probability 0.6
    assert np.abs(rot).max() <= 60.0 and np.abs(rot).max() > 45.0
    assert scale.min() >= 0.75 and scale.max() <= 1.25 and (scale == 1.25).any()
    assert noise.min() >= 0.6 and noise.max() <= 1.4


def test_augment_then_canonicalise_is_identity_batched():
    torch.manual_seed(0)
    batch = 64
    aug = random_aug(batch)
    kp = torch.cat([torch.rand(batch, 49, 2) * 2 - 1, torch.rand(batch, 49, 1)], -1).double()
    joints = torch.cat([torch.randn(batch, 24, 3), torch.ones(batch, 24, 1)], -1).double()
    pose = (torch.rand(batch, 72) - 0.5).double()
    pose[:, :3] = torch.nn.functional.normalize(torch.randn(batch, 3), dim=-1).double() * 2.8  # large roots

    kp_aug = F.augment_keypoints(kp, aug)
    assert not torch.allclose(kp_aug, kp)
    torch.testing.assert_close(F.canonicalise_keypoints(kp_aug, aug), kp)
    j_aug = F.augment_joints3d(joints, aug)
    assert not torch.allclose(j_aug, joints)
    torch.testing.assert_close(F.canonicalise_joints3d(j_aug, aug), joints)
    p_aug = F.augment_pose(pose, aug)
    assert not torch.allclose(p_aug, pose)
    torch.testing.assert_close(F.canonicalise_pose(p_aug, aug), pose, atol=1e-9, rtol=0)
    # And the other direction: a fit found in the augmented frame survives storage in canonical form.
    torch.testing.assert_close(F.augment_pose(F.canonicalise_pose(pose, aug), aug), pose, atol=1e-9, rtol=0)


def test_flipping_twice_is_identity():
    torch.manual_seed(1)
    flip_only = torch.zeros(8, 6, dtype=torch.float64)
    flip_only[:, 0], flip_only[:, 2:] = 1.0, 1.0
    kp = torch.randn(8, 49, 3, dtype=torch.float64)
    joints = torch.randn(8, 24, 4, dtype=torch.float64)
    pose = torch.randn(8, 72, dtype=torch.float64) * 0.5
    once = F.augment_keypoints(kp, flip_only)
    assert not torch.allclose(once, kp)
    torch.testing.assert_close(F.augment_keypoints(once, flip_only), kp)
    torch.testing.assert_close(F.augment_joints3d(F.augment_joints3d(joints, flip_only), flip_only), joints)
    torch.testing.assert_close(F.augment_pose(F.augment_pose(pose, flip_only), flip_only), pose)
    # A flip moves the left wrist's data to the right wrist's slot, mirrored.
    lw, rw = 7, 4  # OP LWrist, OP RWrist
    assert SPIN49_FLIP_PERM[lw] == rw
    torch.testing.assert_close(once[:, rw, 0], -kp[:, lw, 0])


def test_pose_rotation_matches_joint_rotation_and_mirror():
    """The root turns exactly as the 3D joints do: R_aug = Rz(-rot) R, and a flip is M R M."""
    aug = random_aug(16, seed=3)
    pose = torch.zeros(16, 72, dtype=torch.float64)
    pose[:, :3] = torch.randn(16, 3, dtype=torch.float64)
    out = F.augment_pose(pose, aug).numpy()
    mirror = np.diag([-1.0, 1.0, 1.0])
    for i in range(16):
        rz = Rotation.from_euler("z", -aug[i, 1].item(), degrees=True).as_matrix()
        expected = rz @ Rotation.from_rotvec(pose[i, :3].numpy()).as_matrix()
        if aug[i, 0] > 0.5:
            expected = mirror @ expected @ mirror
        np.testing.assert_allclose(Rotation.from_rotvec(out[i, :3]).as_matrix(), expected, atol=1e-10)


def test_3d_and_2d_augmentations_agree_under_projection():
    """Projecting augmented 3D joints gives the augmented 2D keypoints of the canonical projection."""
    torch.manual_seed(2)
    batch, focal = 32, 2.0  # normalised focal: principal point 0, as in the crop
    aug = random_aug(batch, seed=4)
    joints = torch.randn(batch, 24, 3, dtype=torch.float64) * 0.4
    joints[..., 2] += 5.0

    def project(j):
        return focal * j[..., :2] / j[..., 2:3]

    via_3d = project(F.augment_joints3d(joints, aug))
    via_2d = F.augment_keypoints(project(joints), aug, flip_perm=DATASET24_FLIP_PERM)
    # 2D also scales by 1/scale (a wider box); 3D is unscaled, so compare after undoing the scale.
    torch.testing.assert_close(via_2d * aug[:, 2, None, None], via_3d)


@pytest.mark.parametrize(
    "params",
    [A.IDENTITY_AUG, A.AugParams(flip=True), A.AugParams(rot=35.0, scale=1.2),
     A.AugParams(flip=True, rot=-50.0, scale=0.8)],
)
def test_crop_puts_a_drawn_dot_where_the_keypoint_says(params):
    h, w, res = 300, 400, 64
    image = np.zeros((h, w, 3), np.uint8)
    dot = np.array([250.0, 120.0])
    cv2.circle(image, (250, 120), 3, (255, 255, 255), -1)
    keypoints = np.zeros((49, 3), np.float32)
    keypoints[2] = (*dot, 1.0)  # OP RShoulder; a flip moves it to the OP LShoulder slot
    slot = SPIN49_FLIP_PERM[2] if params.flip else 2
    crop, kp = A.augment_crop(image, keypoints, center=(230.0, 140.0), scale=0.5, params=params, res=res)
    assert crop.shape == (res, res, 3) and crop.dtype == np.float32
    xy = normalised_to_pixels(kp[slot, :2], res)
    gray = crop[..., 0]
    ys, xs = np.nonzero(gray > 0.3 * gray.max())
    weights = gray[ys, xs]
    centroid = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    assert np.linalg.norm(centroid - xy) < 0.75
    assert kp[slot, 2] == 1.0 and (kp[:, 2] > 0).sum() == 1


def test_pixel_crop_agrees_with_batched_keypoint_augmentation():
    rng = np.random.default_rng(5)
    keypoints = np.concatenate([rng.uniform(0, 500, (49, 2)), rng.uniform(0, 1, (49, 1))], 1).astype(np.float32)
    image = np.zeros((500, 500, 3), np.uint8)
    center, scale, res = (260.0, 240.0), 1.7, 224
    _, canonical = A.augment_crop(image, keypoints, center, scale, A.IDENTITY_AUG, res)
    for _ in range(5):
        params = A.sample_aug_params(rng, rot_prob=1.0)
        _, pixel_path = A.augment_crop(image, keypoints, center, scale, params, res)
        aug = torch.from_numpy(params.as_array()[None]).double()
        batched = F.augment_keypoints(torch.from_numpy(canonical[None]).double(), aug)[0].numpy()
        np.testing.assert_allclose(pixel_path, batched, atol=1e-5)


def test_strong_zoom_out_is_antialiased_and_still_aligned():
    h = w = 2400
    image = np.zeros((h, w, 3), np.uint8)
    image[::2] = 255  # one-pixel stripes: aliasing would show them as bands, averaging as grey
    cv2.circle(image, (1500, 900), 40, (0, 0, 255), -1)
    keypoints = np.zeros((49, 3), np.float32)
    keypoints[0] = (1500, 900, 1)
    crop, kp = A.augment_crop(image, keypoints, (1200.0, 1200.0), 10.0, A.IDENTITY_AUG, 64)
    stripes = crop[5:20, 5:20, 0]
    assert abs(stripes.mean() - 127.5) < 15 and stripes.std() < 15
    blue = crop[..., 2] - crop[..., 0]
    ys, xs = np.nonzero(blue > 0.5 * blue.max())
    assert np.linalg.norm([xs.mean(), ys.mean()] - normalised_to_pixels(kp[0, :2], 64)) < 0.5


def test_colour_noise_scales_channels_and_clips():
    image = np.full((2, 2, 3), 200, np.uint8)
    out = A.apply_colour_noise(image, (0.5, 1.0, 1.4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [100.0, 200.0, 255.0])


def test_bad_shapes_are_reported():
    with pytest.raises(InputError, match="aug must be"):
        F.augment_pose(torch.zeros(2, 72), torch.zeros(3, 6))
    with pytest.raises(InputError, match=r"\(B,72\)"):
        F.canonicalise_pose(torch.zeros(2, 69), torch.zeros(2, 6))
    with pytest.raises(InputError, match="scale"):
        A.crop_matrix((0, 0), 0.0, 224)


# -- SPIN's pipeline from its equations (utils/imutils.py, datasets/base_dataset.py), computed by hand --------
# Each helper below is written from SPIN's formulas; spin-ray's functions are compared against it.
# docs/CONFORMANCE.md ("SPIN's files and steps, shown equal") lists what is equal and what differs on purpose.

def _spin_crop_transform(center, scale: float, res: int, rot: float) -> np.ndarray:
    """SPIN's original-pixel -> crop-pixel matrix: zoom res / (200 s) about the box centre, then R(-rot) about res/2."""
    box = 200.0 * scale
    t = np.array([[res / box, 0.0, res * (0.5 - center[0] / box)],
                  [0.0, res / box, res * (0.5 - center[1] / box)],
                  [0.0, 0.0, 1.0]])
    if rot != 0:
        a = np.deg2rad(-rot)
        turn = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        to_centre = np.array([[1.0, 0.0, -res / 2], [0.0, 1.0, -res / 2], [0.0, 0.0, 1.0]])
        back = np.array([[1.0, 0.0, res / 2], [0.0, 1.0, res / 2], [0.0, 0.0, 1.0]])
        t = back @ turn @ to_centre @ t
    return t


def _spin_keypoints(kp: np.ndarray, center, scale: float, rot: float, flip: bool, res: int,
                    quantise: bool) -> np.ndarray:
    """SPIN's 2D keypoint processing; quantise=True adds its cast to int (toward zero) and +1 per coordinate."""
    t = _spin_crop_transform(center, scale, res, rot)
    xy = kp[:, :2].astype(np.float64) @ t[:2, :2].T + t[:2, 2]
    if quantise:
        xy = np.trunc(xy) + 1.0
    out = np.concatenate([2.0 * xy / res - 1.0, kp[:, 2:]], 1)
    if flip:
        out = out[list(SPIN49_FLIP_PERM)]
        out[:, 0] = -out[:, 0]
    return out


SPIN_CASES = [A.IDENTITY_AUG, A.AugParams(flip=True, scale=1.2), A.AugParams(rot=25.0, scale=0.8),
              A.AugParams(flip=True, rot=-40.0, scale=1.1, noise=(0.7, 1.2, 1.0))]


@pytest.mark.parametrize("params", SPIN_CASES)
def test_keypoints_equal_spins_transform(params):
    rng = np.random.default_rng(11)
    res, center, scale = 224, (260.3, 241.7), 1.37
    # inside every crop below (SPIN's cast to int rounds towards zero, so outside the crop its offset differs)
    xy = np.array(center) + rng.uniform(-70, 70, (49, 2))
    keypoints = np.concatenate([xy, rng.uniform(0, 1, (49, 1))], 1).astype(np.float32)
    _, ours = A.augment_crop(np.zeros((500, 500, 3), np.uint8), keypoints, center, scale, params, res)
    exact = _spin_keypoints(keypoints, center, scale * params.scale, params.rot, params.flip, res, quantise=False)
    np.testing.assert_allclose(ours, exact, atol=1e-4, rtol=0)
    # SPIN's own values are those cut to whole crop pixels (+1): within one crop pixel of spin-ray's, 0.5 px
    # to the right and below on average (docs/CONFORMANCE.md, "Where spin-ray differs on purpose").
    quantised = _spin_keypoints(keypoints, center, scale * params.scale, params.rot, params.flip, res, quantise=True)
    gap_px = (quantised[:, :2] - ours[:, :2]) * res / 2
    if params.flip:
        gap_px[:, 0] = -gap_px[:, 0]
    assert np.all(gap_px > -1e-4) and np.all(gap_px <= 1.0 + 1e-4)
    assert abs(gap_px.mean() - 0.5) < 0.15


def _spin_box_crop(image: np.ndarray, center, res: int) -> np.ndarray:
    """SPIN's crop of a box of exactly res pixels at integer corners inside the image: a copy, min-max
    stretched to [0, 255] (its float image through scipy's imresize), the same-size resize a no-op."""
    x0, y0 = int(center[0]) - res // 2, int(center[1]) - res // 2
    box = image[y0:y0 + res, x0:x0 + res].astype(np.float64)
    stretched = (box - box.min()) * 255.0 / (box.max() - box.min())
    return np.floor(stretched + 0.5)


def _spin_colour_noise(crop: np.ndarray, gains) -> np.ndarray:
    """SPIN's per-channel gain, clipped to [0, 255] and stored back into its uint8 crop (truncation)."""
    return np.trunc(np.clip(crop * np.asarray(gains).reshape(1, 1, 3), 0.0, 255.0))


def _photo(h: int = 400, w: int = 420, seed: int = 3) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    image[::37, ::41] = 0  # the crop holds 0 and 255, so SPIN's min-max stretch is the identity
    image[5::37, 3::41] = 255
    return image


def test_crop_pixels_equal_spins_at_unit_zoom_with_colour_noise():
    res, center = 224, (200.0, 190.0)
    image = _photo()
    params = A.AugParams(noise=(1.3, 0.75, 1.05))
    ours, _ = A.augment_crop(image, np.zeros((49, 3), np.float32), center, res / 200.0, params, res)
    spins = _spin_colour_noise(_spin_box_crop(image, center, res), params.noise)
    assert np.abs(ours - spins).max() <= 1.0  # 1/255 after SPIN's division by 255: its gain result is truncated


def test_flipped_crop_is_spins_fliplr_one_column_over():
    """spin-ray mirrors about res/2 (the principal point, so the image flip and negated x agree exactly);
    SPIN's np.fliplr mirrors about (res - 1)/2: the same picture one column over."""
    res, center = 224, (200.0, 190.0)
    image = _photo()
    ours, _ = A.augment_crop(image, np.zeros((49, 3), np.float32), center, res / 200.0, A.AugParams(flip=True), res)
    spins = _spin_box_crop(image, center, res)[:, ::-1]
    assert np.abs(ours[:, 1:] - spins[:, :-1]).max() <= 1.0
    assert np.abs(ours - spins).mean() > 10  # not the same column for column


def test_rotation_turns_the_crop_the_way_spins_does():
    """SPIN turns its box with imrotate(rot) (counter-clockwise on screen); spin-ray's rot does the same,
    about a centre half a pixel away, so a 90 degree turn is numpy's rot90 shifted by at most a pixel."""
    res, center = 64, (200.0, 190.0)
    image = _photo()
    flat, _ = A.augment_crop(image, np.zeros((49, 3), np.float32), center, res / 200.0, A.IDENTITY_AUG, res)
    turned, _ = A.augment_crop(image, np.zeros((49, 3), np.float32), center, res / 200.0, A.AugParams(rot=90.0), res)

    def best_shift_error(expected):
        return min(np.abs(turned[2:-2, 2:-2] - np.roll(expected, (dy, dx), (0, 1))[2:-2, 2:-2]).max()
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))

    assert best_shift_error(np.rot90(flat, 1)) <= 1.0  # counter-clockwise, as SPIN
    assert best_shift_error(np.rot90(flat, -1)) > 50


def test_network_input_is_spins_rgb_imagenet_normalisation():
    from spin_ray.data.dataset import normalise_crop

    crop = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((crop / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(normalise_crop(crop).numpy(), expected, atol=1e-6)


def _rodrigues(v: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


# SMPL's 24 joints by name order: pelvis, L/R hip, spine1, L/R knee, spine2, L/R ankle, spine3, L/R foot, neck,
# L/R collar, head, L/R shoulder, L/R elbow, L/R wrist, L/R hand: each left/right pair swaps on a flip.
_SMPL_PAIRS = [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23)]


def _spin_pose(pose: np.ndarray, rot: float, flip: bool) -> np.ndarray:
    """SPIN's pose processing: the root turned by Rz(-rot) (rot_aa), then flip_pose (swap sides, negate y and z)."""
    a = np.deg2rad(-rot)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    out = pose.reshape(24, 3).copy()
    out[0] = Rotation.from_matrix(rz @ _rodrigues(out[0])).as_rotvec()
    if flip:
        perm = list(range(24))
        for left, right in _SMPL_PAIRS:
            perm[left], perm[right] = right, left
        out = out[perm]
        out[:, 1:] = -out[:, 1:]
    return out.reshape(72)


def _spin_joints3d(joints: np.ndarray, rot: float, flip: bool) -> np.ndarray:
    """SPIN's 3D joint processing: xy turned by R(-rot), then the 24-joint flip (swap sides, negate x)."""
    a = np.deg2rad(-rot)
    out = joints.copy()
    out[:, :2] = joints[:, :2] @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
    if flip:
        out = out[list(DATASET24_FLIP_PERM)]
        out[:, 0] = -out[:, 0]
    return out


@pytest.mark.parametrize("params", SPIN_CASES)
def test_pose_and_3d_joints_equal_spins_processing(params):
    rng = np.random.default_rng(4)
    pose = rng.normal(0, 0.4, 72)
    pose[:3] = [2.8, 0.3, -0.2]  # a person upright in the image, as SPIN's data
    joints = np.concatenate([rng.normal(0, 0.5, (24, 3)), rng.uniform(0, 1, (24, 1))], 1)
    aug = torch.from_numpy(params.as_array()[None]).double()
    ours_pose = F.augment_pose(torch.from_numpy(pose[None]), aug)[0].numpy()
    spins_pose = _spin_pose(pose, params.rot, params.flip)
    # compare as rotations: an axis-angle near pi has two spellings
    for j in range(24):
        np.testing.assert_allclose(_rodrigues(ours_pose[3 * j:3 * j + 3]), _rodrigues(spins_pose[3 * j:3 * j + 3]),
                                   atol=1e-6)
    ours_joints = F.augment_joints3d(torch.from_numpy(joints[None]), aug)[0].numpy()
    np.testing.assert_allclose(ours_joints, _spin_joints3d(joints, params.rot, params.flip), atol=1e-6)


@pytest.mark.parametrize("params", SPIN_CASES)
def test_fits_go_back_to_the_canonical_frame_as_spins_fit_dictionary(params):
    """SPIN's fit dictionary stores a fit made in the augmented crop unflipped first, then its root turned by
    Rz(+rot); spin-ray's canonicalise_pose (the frame the store keeps) must give the same rotations."""
    rng = np.random.default_rng(8)
    pose = rng.normal(0, 0.4, 72)
    pose[:3] = [2.9, -0.2, 0.4]
    spins = pose.reshape(24, 3).copy()
    if params.flip:
        perm = list(range(24))
        for left, right in _SMPL_PAIRS:
            perm[left], perm[right] = right, left
        spins = spins[perm]
        spins[:, 1:] = -spins[:, 1:]
    a = np.deg2rad(params.rot)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    spins[0] = Rotation.from_matrix(rz @ _rodrigues(spins[0])).as_rotvec()
    aug = torch.from_numpy(params.as_array()[None]).double()
    ours = F.canonicalise_pose(torch.from_numpy(pose[None]), aug)[0].numpy().reshape(24, 3)
    for j in range(24):
        np.testing.assert_allclose(_rodrigues(ours[j]), _rodrigues(spins[j]), atol=1e-6)
