"""Torch datasets over SPIN-format data: augmented crops and targets per sample, and a ratio mix.

Bad samples are never cropped silently. Annotations are checked for every row when the dataset is
built (data/row_checks.py, the same check as `spin-ray fit` and eval); missing or unreadable images
and boxes outside the image are found when a row is loaded. With `bad_samples="raise"` the first one
raises a DataError naming the dataset, row and reason; with `"skip"` they are counted, warned about
(bad annotations once, in one warning, when the dataset is built) and replaced by the next valid row
(the item's `index` is the row actually used, `skipped` how many were passed over).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spin_ray.body.frames import augment_joints3d, augment_pose
from spin_ray.config import DataConfig
from spin_ray.data.augment import (
    IDENTITY_AUG,
    AugParams,
    augment_crop,
    sample_aug_params,
)
from spin_ray.data.row_checks import SKIP_HINT, box_overlaps_image, check_rows, describe
from spin_ray.data.spin_format import SpinDataset, load_spin_npz
from spin_ray.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalise_crop(crop: np.ndarray) -> torch.Tensor:
    """An RGB crop (H,W,3) in [0,255] as the network's input (3,H,W) float32, ImageNet-normalised."""
    img = (np.asarray(crop, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


class SpinImageDataset(Dataset):
    """Items of one SPIN-format dataset: normalised crop, 49 keypoints, SMPL and 3D targets, aug record."""

    def __init__(self, spin: SpinDataset, cfg: DataConfig, train: bool = True, max_skips: int = 100):
        if len(spin) == 0:
            raise DataError(f"dataset '{spin.name}' ({spin.source}) has no samples")
        self.spin = spin
        self.cfg = cfg
        self.train = train
        self.max_skips = max_skips
        self._keypoints = spin.keypoints49()
        # Bad annotations refuse the dataset now (raise) or are announced once and passed over (skip).
        self.rows = check_rows(spin)
        self.usable = self.rows.enforce(cfg.bad_samples)
        # Per-process counts of skipped rows by reason (each DataLoader worker keeps its own; the
        # trainer sums the items' `skipped` field for a global count).
        self.skip_counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.spin)

    def draw_params(self) -> AugParams:
        """Augmentation for one item: SPIN's random draw when training, identity otherwise."""
        if not self.train:
            return IDENTITY_AUG
        # Seeded from torch's RNG, which DataLoader seeds per worker and per epoch, so workers never
        # repeat each other's augmentations and a run is reproducible from torch.manual_seed.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        c = self.cfg
        return sample_aug_params(rng, c.rot_factor, c.scale_factor, c.noise_factor, c.flip_prob, c.rot_prob)

    def annotation_problem(self, index: int) -> str | None:
        """Why row `index`'s annotations cannot be used, or None (no file access)."""
        return self.rows.detail(index) if self.rows.bad[index] else None

    def _read_image(self, index: int) -> np.ndarray:
        path = self.spin.image_path(index)
        if not path.is_file():
            raise _BadSample("missing image", f"image {path} does not exist")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise _BadSample("unreadable image", f"image {path} could not be decoded (corrupt or not an image)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def load(self, index: int, params: AugParams) -> dict:
        """The item of row `index` under `params`; raises _BadSample for an unusable row."""
        problem = self.annotation_problem(index)
        if problem:
            raise _BadSample("bad annotations", problem)
        image = self._read_image(index)
        s = self.spin
        h, w = image.shape[:2]
        size = np.array([[w, h]], np.float64)
        if not box_overlaps_image(s.center[index][None], s.scale[index][None], size)[0]:
            raise _BadSample("box outside image", describe(s, index, "box", size[0]))
        res = self.cfg.img_res
        crop, keypoints = augment_crop(image, self._keypoints[index], s.center[index], float(s.scale[index]), params, res)
        aug = torch.from_numpy(params.as_array())[None]
        withheld = self.train and self.cfg.ignore_3d  # the unpaired setting: fits are the only 3D supervision
        has_smpl, has_3d = bool(s.has_smpl[index]) and not withheld, bool(s.has_3d[index]) and not withheld
        pose = torch.from_numpy(s.pose[index])[None]
        joints = torch.from_numpy(s.S[index])[None]
        return {
            "img": normalise_crop(crop),
            "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
            # Unavailable targets stay zero (and flagged) rather than becoming augmented "data".
            "pose": augment_pose(pose, aug)[0] if has_smpl else torch.zeros(72),
            "betas": torch.from_numpy(s.betas[index]) if has_smpl else torch.zeros(s.betas.shape[1]),
            "S": augment_joints3d(joints, aug)[0] if has_3d else torch.zeros_like(joints[0]),
            "has_smpl": torch.tensor(has_smpl),
            "has_3d": torch.tensor(has_3d),
            "gender": torch.tensor(int(s.gender[index])),
            "dataset": s.name,
            "index": torch.tensor(index),
            "imgname": str(s.imgname[index]),
            "center": torch.from_numpy(s.center[index].copy()),
            "scale": torch.tensor(float(s.scale[index])),
            "aug": aug[0],
        }

    def __getitem__(self, index: int) -> dict:
        params = self.draw_params()
        for skipped in range(min(self.max_skips, len(self)) + 1):
            row = (index + skipped) % len(self)
            try:
                item = self.load(row, params)
            except _BadSample as bad:
                where = f"dataset '{self.spin.name}' row {row} ({self.spin.imgname[row]})"
                if self.cfg.bad_samples == "raise":
                    raise DataError(f"{where}: {bad.detail} ({SKIP_HINT})") from None
                self.skip_counts[bad.reason] += 1
                if bad.reason != "bad annotations":  # those were announced when the dataset was built
                    warnings.warn(f"skipping {where}: {bad.detail}", stacklevel=2)
                continue
            item["skipped"] = torch.tensor(skipped)
            return item
        raise DataError(
            f"dataset '{self.spin.name}': rows {index} to {row} are all unusable (see the warnings); "
            "check the image root and the npz annotations"
        )


class _BadSample(Exception):
    """A row that cannot be loaded; `reason` is a short category for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class MixedDataset(Dataset):
    """Draws each item from one of several datasets with the given ratios (SPIN's mixed training set)."""

    def __init__(self, datasets: Sequence[SpinImageDataset], ratios: Sequence[float], length: int | None = None):
        if not datasets or len(datasets) != len(ratios):
            raise DataError(f"need one ratio per dataset, got {len(datasets)} datasets and {len(ratios)} ratios")
        weights = np.asarray(ratios, dtype=np.float64)
        if (weights < 0).any() or not weights.sum() > 0:
            raise DataError(f"dataset ratios must be >= 0 with a positive sum, got {list(ratios)}")
        self.datasets = list(datasets)
        self.probabilities = weights / weights.sum()
        self._cumulative = np.cumsum(self.probabilities)
        # As in SPIN, an "epoch" is as long as the largest dataset.
        self.length = int(length) if length is not None else max(len(d) for d in self.datasets)

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int, u: float) -> tuple[int, int]:
        """(dataset, row) for item `index` given a uniform draw `u` in [0, 1)."""
        k = int(np.searchsorted(self._cumulative, u, side="right"))
        k = min(k, len(self.datasets) - 1)
        while self.probabilities[k] == 0:  # u at the float edge of a zero-ratio dataset
            k -= 1
        return k, index % len(self.datasets[k])

    def __getitem__(self, index: int) -> dict:
        k, row = self.locate(index, float(torch.rand(())))
        return self.datasets[k][row]


def build_dataset(cfg: DataConfig, train: bool = True) -> MixedDataset:
    """The configured datasets, loaded and mixed by their ratios."""
    if not cfg.datasets:
        raise DataError("data.datasets is empty: list at least one SPIN-format dataset (name, npz, image_root)")
    parts = [
        SpinImageDataset(load_spin_npz(Path(d.npz), Path(d.image_root), name=d.name), cfg, train=train)
        for d in cfg.datasets
    ]
    return MixedDataset(parts, [d.ratio for d in cfg.datasets])


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True) -> DataLoader:
    """A DataLoader that keeps its workers between epochs and drops the last partial batch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        pin_memory=False,
    )
