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
