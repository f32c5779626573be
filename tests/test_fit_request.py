"""FitRequest: built from a trainer's tensors, validated with errors that name the field, compact when pickled."""

import pickle

import numpy as np
import pytest
import torch

from spin_ray.errors import PipelineError
from spin_ray.pipeline.requests import FitRequest

B = 6


def _arrays(b=B):
    g = torch.Generator().manual_seed(0)
    return dict(
        indices=torch.arange(10, 10 + b),
        pose=0.1 * torch.randn(b, 72, generator=g, dtype=torch.float64),
        betas=torch.zeros(b, 10),
        camera_t=torch.tensor([[0.0, 0.1, 40.0]]).expand(b, 3),
        keypoints=torch.rand(b, 49, 3, generator=g) * 2 - 1,
        aug=np.tile(np.array([0, 0, 1, 1, 1, 1], np.float32), (b, 1)),
    )


def test_build_converts_tensors_to_float32_copies_and_codes_datasets():
    a = _arrays()
    names = ["coco", "mpii", "coco", "h36m", "mpii", "coco"]
    req = FitRequest.build(step=7, datasets=names, **a)
    assert req.pose.dtype == np.float32 and req.indices.dtype == np.int64 and req.keypoints.dtype == np.float32
    assert req.datasets == ("coco", "mpii", "h36m")
    assert [req.datasets[c] for c in req.dataset_code] == names
    assert req.row_datasets.tolist() == names
    # A copy: the trainer may overwrite its buffers while the request is in flight.
    a["pose"].fill_(5.0)
    assert np.abs(req.pose).max() < 5.0
    assert req.batch_size == B and req.step == 7


def test_request_ids_are_distinct_and_a_given_one_is_kept():
    a = _arrays()
    ids = {FitRequest.build(0, "coco", **a).request_id for _ in range(50)}
    assert len(ids) == 50
    assert FitRequest.build(0, "coco", request_id=42, **a).request_id == 42


def test_pickled_request_is_compact():
    req = FitRequest.build(3, "coco", **_arrays(64))
    blob = pickle.dumps(req)
    assert len(blob) < 1.1 * req.nbytes + 2000  # arrays dominate; no torch or body-model state rides along
    back = pickle.loads(blob)
    assert back.request_id == req.request_id and np.array_equal(back.keypoints, req.keypoints)


def test_non_finite_predictions_and_keypoints_are_allowed():
    a = _arrays()
    a["pose"][1] = float("nan")
    a["keypoints"][2, 3] = float("inf")
    req = FitRequest.build(0, "coco", **a)
    assert np.isnan(req.pose[1]).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pose", torch.zeros(B, 69), "pose has shape (6, 69), expected (6, 72)"),
        ("keypoints", torch.zeros(B, 24, 3), "keypoints has shape (6, 24, 3), expected (6, 49, 3)"),
        ("aug", np.zeros((B, 5), np.float32), "aug has shape (6, 5)"),
        ("camera_t", torch.zeros(B, 2), "camera_t has shape (6, 2)"),
        ("betas", torch.zeros(B + 1, 10), "betas has shape (7, 10)"),
        ("indices", torch.tensor([0, 1, -3, 4, 5, 6]), "indices[2] is -3"),
        ("aug", np.full((B, 6), np.nan, np.float32), "aug[0] holds NaN"),
        ("pose", "not numbers", "pose cannot be read as float32"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    a = _arrays()
    a[field] = value
    with pytest.raises(PipelineError) as err:
        FitRequest.build(0, "coco", **a)
    assert message in str(err.value)


def test_bad_dataset_names_and_counts_and_steps():
    a = _arrays()
    with pytest.raises(PipelineError, match="dataset name 'co:co' is not allowed"):
        FitRequest.build(0, "co:co", **a)
    with pytest.raises(PipelineError, match="2 dataset names for 6 indices"):
        FitRequest.build(0, ["coco", "mpii"], **a)
    with pytest.raises(PipelineError, match="step must be an integer >= 0"):
        FitRequest.build(-1, "coco", **a)
    with pytest.raises(PipelineError, match="non-empty"):
        FitRequest.build(0, [], **_arrays(0))


def test_direct_construction_is_validated_too():
    req = FitRequest.build(0, "coco", **_arrays())
    with pytest.raises(PipelineError, match="pose must be a numpy float32 array, got float64"):
        FitRequest(**{**req.__dict__, "pose": req.pose.astype(np.float64)})
    with pytest.raises(PipelineError, match="dataset_code\\[0\\] is 3, but there are 1 dataset names"):
        FitRequest(**{**req.__dict__, "dataset_code": np.full(B, 3, np.int16)})
