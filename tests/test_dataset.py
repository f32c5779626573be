"""Torch datasets over a hand-made SPIN-format file with tiny PNGs: items, bad rows, the mix, workers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from spin_ray.body import frames as F
from spin_ray.config import DataConfig, DatasetEntry
from spin_ray.data import augment as A
from spin_ray.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MixedDataset,
    SpinImageDataset,
    build_dataset,
    make_loader,
)
from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import DataError
from spin_ray.geometry import normalised_to_pixels

torch.set_num_threads(1)
RES = 32
H, W = 90, 120


def make_dataset(root, name="toy", n=6, with_smpl=True, seed=0):
    """n images with a white dot at keypoint 'Right Wrist' (row 25 + 6), in SPIN's exact format."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    part = np.zeros((n, 24, 3))
    part[:, :, :2] = rng.uniform(30, 80, (n, 24, 2))
    part[:, :, 2] = 1.0
    names = []
    for i in range(n):
        image = np.full((H, W, 3), 40, np.uint8)
        x, y = np.rint(part[i, 6, :2]).astype(int)
        part[i, 6, :2] = (x, y)
        cv2.circle(image, (int(x), int(y)), 2, (255, 255, 255), -1)
        names.append(f"images/{name}_{i}.png")
        cv2.imwrite(str(root / names[-1]), image)
    extra = {}
    if with_smpl:
        extra = dict(pose=rng.normal(size=(n, 72)) * 0.3, shape=rng.normal(size=(n, 10)),
                     S=np.concatenate([rng.normal(size=(n, 24, 3)), np.ones((n, 24, 1))], -1),
                     has_smpl=np.ones(n), gender=np.array(["m", "f"] * (n // 2)))
    openpose = np.zeros((n, 25, 3))  # empty detections: all-zero confidence
    path = write_spin_npz(root / f"{name}.npz", imgname=names, center=np.tile([[60.0, 45.0]], (n, 1)),
                          scale=np.full(n, 0.4), part=part, openpose=openpose, **extra)
    return load_spin_npz(path, root, name=name)


@pytest.fixture
def cfg():
    return DataConfig(img_res=RES)


def test_item_contents_and_normalisation(tmp_path, cfg):
    spin = make_dataset(tmp_path)
    item = SpinImageDataset(spin, cfg, train=False)[2]
    assert item["img"].shape == (3, RES, RES) and item["img"].dtype == torch.float32
    assert item["keypoints"].shape == (49, 3) and item["S"].shape == (24, 4)
    assert item["pose"].shape == (72,) and item["betas"].shape == (10,)
    assert item["dataset"] == "toy" and int(item["index"]) == 2 and int(item["skipped"]) == 0
    assert item["has_smpl"] and item["has_3d"] and int(item["gender"]) == 0
    torch.testing.assert_close(item["aug"], torch.from_numpy(A.IDENTITY_AUG.as_array()))
    # Background pixels (grey 40) are ImageNet-normalised.
    expected = torch.from_numpy((40 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(item["img"][:, 1, 1], expected, atol=1e-3, rtol=0)
    # The dot is where the keypoint says, in the normalised crop.
    wrist = item["keypoints"][25 + 6]
    u, v = normalised_to_pixels(wrist[:2].numpy(), RES)
    red = item["img"][0].numpy()
    ys, xs = np.nonzero(red > red.max() * 0.6)
    assert abs(xs.mean() - u) < 1.0 and abs(ys.mean() - v) < 1.0
    # Unavailable openpose stays at zero confidence.
    assert (item["keypoints"][:25, 2] == 0).all()


def test_training_items_canonicalise_back_to_the_unaugmented_item(tmp_path, cfg):
    spin = make_dataset(tmp_path)
    plain = SpinImageDataset(spin, cfg, train=False)
    train = SpinImageDataset(spin, cfg.model_copy(update={"rot_prob": 1.0, "flip_prob": 0.5}), train=True)
    torch.manual_seed(0)
    batch = [train[i % 6] for i in range(12)]
    aug = torch.stack([b["aug"] for b in batch]).double()
    assert aug[:, 0].min() == 0 and aug[:, 0].max() == 1 and (aug[:, 1] != 0).all()
    ref = [plain[i % 6] for i in range(12)]
    for key, inverse in (("keypoints", F.canonicalise_keypoints), ("S", F.canonicalise_joints3d),
                         ("pose", F.canonicalise_pose)):
        got = inverse(torch.stack([b[key] for b in batch]).double(), aug)
        want = torch.stack([r[key] for r in ref]).double()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_no_smpl_targets_stay_zero_and_flagged(tmp_path, cfg):
    spin = make_dataset(tmp_path, with_smpl=False)
    train = SpinImageDataset(spin, cfg.model_copy(update={"rot_prob": 1.0}), train=True)
    item = train[0]
    assert not item["has_smpl"] and not item["has_3d"] and int(item["gender"]) == -1
    assert (item["pose"] == 0).all() and (item["S"] == 0).all()


def test_ignore_3d_withholds_the_truth_in_training_only(tmp_path, cfg):
    spin = make_dataset(tmp_path)
    unpaired = cfg.model_copy(update={"ignore_3d": True})
    item = SpinImageDataset(spin, unpaired, train=True)[0]
    assert not item["has_smpl"] and not item["has_3d"]
    assert (item["pose"] == 0).all() and (item["betas"] == 0).all() and (item["S"] == 0).all()
    assert item["keypoints"][:, 2].sum() > 0  # the 2D keypoints still supervise
    held_out = SpinImageDataset(spin, unpaired, train=False)[0]  # evaluation keeps its ground truth
    assert held_out["has_smpl"] and held_out["has_3d"]


def test_bad_rows_are_counted_skips_or_errors(tmp_path, cfg):
    spin = make_dataset(tmp_path)
    (tmp_path / spin.imgname[1]).unlink()  # missing image
    (tmp_path / spin.imgname[2]).write_bytes(b"\x89PNG broken")  # unreadable image
    spin.center[3] = (500.0, 45.0)  # outside the 120x90 image
    spin.part[4, 0, 0] = np.nan  # NaN keypoint
    with pytest.warns(UserWarning, match=r"skipping 1 of 6 rows .*row 4"):  # annotations: once, when built
        ds = SpinImageDataset(spin, cfg, train=False)
    with pytest.warns(UserWarning) as caught:
        item = ds[1]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and "toy_1.png does not exist" in messages[0] and "decoded" in messages[1]
    # Rows 1-4 are bad, so the item comes from row 5, with the skips recorded.
    assert int(item["index"]) == 5 and int(item["skipped"]) == 4
    assert ds.skip_counts == {"missing image": 1, "unreadable image": 1, "box outside image": 1,
                              "bad annotations": 1}
    with pytest.raises(DataError, match=r"row 4 .*NaN"):  # bad annotations refuse the dataset when built
        SpinImageDataset(spin, cfg.model_copy(update={"bad_samples": "raise"}), train=False)
    spin.part[4, 0, 0] = 50.0
    strict = SpinImageDataset(spin, cfg.model_copy(update={"bad_samples": "raise"}), train=False)
    with pytest.raises(DataError, match=r"row 3 .*outside the 120x90 image"):
        strict[3]
    with pytest.raises(DataError, match="toy_1.png does not exist"):
        strict[1]


def test_all_bad_rows_raise(tmp_path, cfg):
    spin = make_dataset(tmp_path, n=2)
    for name in spin.imgname:
        (tmp_path / name).unlink()
    with pytest.warns(UserWarning), pytest.raises(DataError, match="all unusable"):
        SpinImageDataset(spin, cfg, train=False)[0]


def test_mixed_dataset_follows_ratios(tmp_path, cfg):
    a = SpinImageDataset(make_dataset(tmp_path / "a", name="a", n=4), cfg, train=False)
    b = SpinImageDataset(make_dataset(tmp_path / "b", name="b", n=6), cfg, train=False)
    z = SpinImageDataset(make_dataset(tmp_path / "z", name="z", n=2), cfg, train=False)
    mixed = MixedDataset([a, b, z], [3.0, 1.0, 0.0])
    assert len(mixed) == 6
    rng = np.random.default_rng(0)
    picks = np.array([mixed.locate(i, rng.uniform())[0] for i in range(4000)])
    assert abs((picks == 0).mean() - 0.75) < 0.03 and (picks != 2).all()
    assert mixed.locate(5, 0.1) == (0, 1)  # row wraps within the smaller dataset
    torch.manual_seed(0)
    names = {mixed[i]["dataset"] for i in range(20)}
    assert names == {"a", "b"}
    with pytest.raises(DataError, match="ratios"):
        MixedDataset([a, b], [0.0, 0.0])


def test_build_from_config_and_load_with_workers(tmp_path):
    make_dataset(tmp_path / "a", name="a", n=8)
    make_dataset(tmp_path / "b", name="b", n=8, with_smpl=False)
    cfg = DataConfig(img_res=RES, datasets=[
        DatasetEntry(name="a", npz=tmp_path / "a" / "a.npz", image_root=tmp_path / "a", ratio=0.5),
        DatasetEntry(name="b", npz=tmp_path / "b" / "b.npz", image_root=tmp_path / "b", ratio=0.5),
    ])
    dataset = build_dataset(cfg, train=True)
    torch.manual_seed(0)
    batches = list(make_loader(dataset, batch_size=4, num_workers=2))
    assert len(batches) == 2
    batch = batches[0]
    assert batch["img"].shape == (4, 3, RES, RES) and batch["aug"].shape == (4, 6)
    assert set(batch["dataset"]) <= {"a", "b"}
    # Both workers' items together: augmentations differ between items (no repeated RNG streams).
    all_aug = torch.cat([b["aug"] for b in batches])
    assert len({tuple(row.tolist()) for row in all_aug}) == len(all_aug)
    with pytest.raises(DataError, match="data.datasets is empty"):
        build_dataset(DataConfig())
