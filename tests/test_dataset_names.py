"""A dataset name in the store stands for one dataset: another dataset under a taken name is refused."""

import shutil

import numpy as np
import pytest

from spin_ray.data.identity import dataset_fingerprint
from spin_ray.data.spin_format import load_spin_npz, write_spin_npz
from spin_ray.errors import FitStoreError


def _rows(npz, rows, path, nudge: float = 0.0):
    data = load_spin_npz(npz, npz.parent)
    kp = data.keypoints49()[rows]
    kp[:, :, 0] += nudge
    return write_spin_npz(path, imgname=data.imgname[rows], center=data.center[rows], scale=data.scale[rows],
                          part=kp[:, 25:], openpose=kp[:, :25])


def test_the_fingerprint_is_the_content_not_the_name_or_path(tiny_spin_data, tmp_path):
    src = tiny_spin_data["tiny-itw"]
    a = _rows(src, np.arange(6), tmp_path / "a" / "data.npz")
    copy = tmp_path / "elsewhere" / "renamed.npz"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    fp = dataset_fingerprint(load_spin_npz(a, a.parent))
    assert fp == dataset_fingerprint(load_spin_npz(copy, src.parent, name="other-name"))
    # Any change to which rows there are or where their keypoints lie is another dataset.
    assert fp != dataset_fingerprint(load_spin_npz(_rows(src, np.arange(1, 7), tmp_path / "b.npz"), src.parent))
    assert fp != dataset_fingerprint(load_spin_npz(_rows(src, np.arange(6), tmp_path / "c.npz", 0.5), src.parent))
    assert fp != dataset_fingerprint(load_spin_npz(_rows(src, np.arange(5), tmp_path / "d.npz"), src.parent))


def test_a_taken_name_refuses_another_dataset_and_names_both_files(fit_store):
    fit_store.bind_dataset("data", "f" * 64, "a/data.npz")
    fit_store.bind_dataset("data", "f" * 64, "copy/data.npz")  # the same content from another path: fine
    with pytest.raises(FitStoreError, match=r"'data'.*a/data\.npz.*b/data\.npz.*--dataset-name"):
        fit_store.bind_dataset("data", "e" * 64, "b/data.npz")
    fit_store.bind_dataset("data-b", "e" * 64, "b/data.npz")
    fit_store.drop()  # dropping the namespace frees its names
    fit_store.bind_dataset("data", "e" * 64, "b/data.npz")


def test_an_unreadable_binding_is_named(fit_store):
    fit_store.client.hset(f"{fit_store.key_prefix}datasets", "data", b"\x00not json")
    with pytest.raises(FitStoreError, match="binding of dataset 'data' is not readable"):
        fit_store.bind_dataset("data", "f" * 64, "a/data.npz")
