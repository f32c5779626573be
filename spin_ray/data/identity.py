"""What a dataset is, as opposed to what it is called: a fingerprint of the content that fits belong to."""

from __future__ import annotations

import hashlib

import numpy as np

from spin_ray.data.spin_format import SpinDataset

# The arrays that decide which person each row is and what SMPLify fits to: a fit stored for row i of
# one dataset means nothing for row i of a dataset that differs in any of them.
_FINGERPRINT_FIELDS = ("imgname", "center", "scale", "part", "openpose")


def dataset_fingerprint(data: SpinDataset) -> str:
    """SHA-256 (hex) of the dataset's rows: image names, boxes and keypoints, in row order."""
    digest = hashlib.sha256()
    digest.update(f"rows={len(data)}".encode())
    for field in _FINGERPRINT_FIELDS:
        values = getattr(data, field)
        if values.dtype.kind in "US":
            blob = "\0".join(str(v) for v in values.tolist()).encode("utf-8")
        else:
            blob = np.ascontiguousarray(values, dtype="<f4").tobytes()
        digest.update(f"{field}:{len(blob)}:".encode())
        digest.update(blob)
    return digest.hexdigest()
