"""What goes to a fitter and what comes back: a compact, picklable batch and its report.

A `FitRequest` holds numpy arrays only (float32, int64), so Ray ships it as a few contiguous
buffers (~60 kB for a batch of 64) and never pickles torch state. Predictions are in the batch's
augmented frame, as the network saw the sample; the fitter canonicalises before it writes.
Non-finite predictions or keypoints are allowed: SMPLify flags such samples and they are not written.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spin_ray.body.frames import AUG_DIM, AUG_FIELDS
from spin_ray.body.joints import NUM_KEYPOINTS
from spin_ray.errors import FitStoreError, PipelineError
from spin_ray.fitting.canonical_fits import SampleStarts
from spin_ray.store.records import BETAS_SIZE, POSE_SIZE, check_name

CAMERA_T_SIZE = 3


def new_request_id() -> int:
    """A random 63-bit id, unique across trainers without coordination."""
    return uuid.uuid4().int >> 65


def _array(value: Any, dtype: Any, name: str) -> np.ndarray:
    """A C-contiguous copy of numpy input or a (possibly CUDA) torch tensor, as `dtype`."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        # A copy: the caller may reuse its buffers while the request is in flight.
        return np.array(value, dtype=dtype, order="C", copy=True)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"fit request: {name} cannot be read as {np.dtype(dtype).name} numbers: {err}") from None


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...], meaning: str) -> None:
    if array.shape != shape:
        raise PipelineError(f"fit request: {name} has shape {array.shape}, expected {shape} ({meaning})")


@dataclass(frozen=True, eq=False)
class FitRequest:
    """One batch for a fitter: trainer predictions in the augmented frame, keypoints, sample ids, augmentation."""

    request_id: int
    step: int  # trainer step whose forward pass made the predictions
    datasets: tuple[str, ...]  # distinct dataset names; dataset_code indexes this tuple
    dataset_code: np.ndarray  # (B,) int16
    indices: np.ndarray  # (B,) int64 rows of each sample's dataset
    pose: np.ndarray  # (B, 72) float32 axis-angle, augmented frame
    betas: np.ndarray  # (B, 10) float32
    camera_t: np.ndarray  # (B, 3) float32 camera translation (from the network's weak-perspective camera)
    keypoints: np.ndarray  # (B, 49, 3) float32 [x, y, conf], normalised to [-1, 1] in the augmented crop
    aug: np.ndarray  # (B, 6) float32 augmentation records in AUG_FIELDS order

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def build(
        cls,
        step: int,
        datasets: str | Sequence[str],
        indices: Any,
        pose: Any,
        betas: Any,
        camera_t: Any,
        keypoints: Any,
        aug: Any,
        request_id: int | None = None,
    ) -> FitRequest:
        """A validated request from numpy arrays or torch tensors; `datasets` is one name or one per sample."""
        idx = _array(indices, np.int64, "indices").reshape(-1)
        n = idx.shape[0]
        names = [datasets] * n if isinstance(datasets, str) else [str(d) for d in datasets]
        if len(names) != n:
            raise PipelineError(
                f"fit request: {len(names)} dataset names for {n} indices; give one name or one per sample"
            )
        distinct = tuple(dict.fromkeys(names))
        code_of = {name: code for code, name in enumerate(distinct)}
        return cls(
            request_id=new_request_id() if request_id is None else int(request_id),
            step=int(step),
            datasets=distinct,
            dataset_code=np.array([code_of[name] for name in names], dtype=np.int16),
            indices=idx,
            pose=_array(pose, np.float32, "pose"),
            betas=_array(betas, np.float32, "betas"),
            camera_t=_array(camera_t, np.float32, "camera_t"),
            keypoints=_array(keypoints, np.float32, "keypoints"),
            aug=_array(aug, np.float32, "aug"),
        )

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of array payload (what Ray copies per request)."""
        arrays = (self.dataset_code, self.indices, self.pose, self.betas, self.camera_t, self.keypoints, self.aug)
        return sum(a.nbytes for a in arrays)

    def validate(self) -> None:
        """Raise PipelineError naming the first field with a wrong type, shape or value."""
        if not isinstance(self.step, int) or self.step < 0:
            raise PipelineError(f"fit request: step must be an integer >= 0 (the trainer step), got {self.step!r}")
        if not isinstance(self.request_id, int):
            raise PipelineError(f"fit request: request_id must be an integer, got {self.request_id!r}")
        n = self.indices.shape[0] if self.indices.ndim == 1 else -1
        if n < 1:
            raise PipelineError(f"fit request: indices must be a non-empty 1-d array, got shape {self.indices.shape}")
        if not self.datasets:
            raise PipelineError("fit request: no dataset names")
        for name in self.datasets:
            try:
                check_name("dataset", name)
            except FitStoreError as err:
                raise PipelineError(f"fit request: {err}") from None
        expected = {
            "dataset_code": ((n,), np.int16, "one code per sample into datasets"),
            "indices": ((n,), np.int64, "dataset rows"),
            "pose": ((n, POSE_SIZE), np.float32, "axis-angle of 24 joints in the augmented frame"),
            "betas": ((n, BETAS_SIZE), np.float32, "shape coefficients"),
            "camera_t": ((n, CAMERA_T_SIZE), np.float32, "camera translation; see weak_perspective_to_translation"),
            "keypoints": ((n, NUM_KEYPOINTS, 3), np.float32, "[x, y, conf] normalised in the augmented crop"),
            "aug": ((n, AUG_DIM), np.float32, f"augmentation records {AUG_FIELDS}"),
        }
        for name, (shape, dtype, meaning) in expected.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != dtype:
                got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise PipelineError(f"fit request: {name} must be a numpy {np.dtype(dtype).name} array, got {got}"
                                    " (use FitRequest.build to convert)")
            _check_shape(name, array, shape, meaning)
        if (self.indices < 0).any():
            row = int(np.flatnonzero(self.indices < 0)[0])
            raise PipelineError(f"fit request: indices[{row}] is {self.indices[row]}; dataset rows are >= 0")
        bad_code = (self.dataset_code < 0) | (self.dataset_code >= len(self.datasets))
        if bad_code.any():
            row = int(np.flatnonzero(bad_code)[0])
            raise PipelineError(
                f"fit request: dataset_code[{row}] is {self.dataset_code[row]}, "
                f"but there are {len(self.datasets)} dataset names"
            )
        # A non-finite augmentation would turn every fit of its sample into NaN silently: a trainer bug.
        if not np.isfinite(self.aug).all():
            row = int(np.flatnonzero(~np.isfinite(self.aug).all(axis=1))[0])
            raise PipelineError(f"fit request: aug[{row}] holds NaN or inf; augmentation records must be finite")

    @classmethod
    def from_predictions(cls, predictions: SampleStarts) -> FitRequest:
        """The request for one step's predictions (what the trainer hands the pool)."""
        return cls.build(predictions.step, predictions.datasets, predictions.indices, predictions.pose,
                         predictions.betas, predictions.camera_t, predictions.keypoints, predictions.aug)

    @classmethod
    def joined(cls, requests: Sequence[FitRequest]) -> FitRequest:
        """Several requests as one batch (their rows in order, the newest step), for one SMPLify call."""
        arrays = (np.concatenate([getattr(r, name) for r in requests])
                  for name in ("indices", "pose", "betas", "camera_t", "keypoints", "aug"))
        return cls.build(max(r.step for r in requests), [d for r in requests for d in r.row_datasets], *arrays)

    @property
    def row_datasets(self) -> np.ndarray:
        """(B,) the dataset name of each row."""
        return np.asarray(self.datasets, dtype=object)[self.dataset_code]



@dataclass(frozen=True)
class FitReport:
    """What a fitter did with one request."""

    request_id: int
    step: int
    batch_size: int
    fitted: int  # samples with a finite fit
    written: int  # fits that beat the stored one (keep_best wrote them)
    failed: int  # samples SMPLify rejected or lost to non-finite values
    mean_error: float  # mean canonical ranking error of the fitted samples; NaN if none
    elapsed_s: float  # wall time in the fitter
    actor_id: str
    cpu_s: float = float("nan")  # CPU time of the fitter process for this request: low vs elapsed_s = no free core
