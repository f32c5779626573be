"""One predictor's evaluation on one dataset: per-sample joint errors, dataset-wide segmentation counts, means."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spin_ray.eval.segmentation import accuracy, f1_per_class, macro_f1

PERCENT = 100.0


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True)
class EvalResult:
    """Per-sample errors of one predictor on one dataset; NaN where a metric has no ground truth.

    Joint metrics are per row: MPJPE, PA-MPJPE (mm, J14), PVE (mm, rows with ground-truth SMPL),
    PCK and AUC (shares of J17 joints, 3DHP's definitions) without and with rigid alignment.
    Segmentation is counted over the whole dataset, as SPIN scores it: confusion matrices
    (eval/segmentation.py) of foreground/background and of the six parts, None without masks.
    """

    name: str
    dataset: str
    index: np.ndarray  # (N,) dataset rows evaluated
    mpjpe: np.ndarray  # (N,) NaN without 3D truth
    pa_mpjpe: np.ndarray  # (N,)
    pve: np.ndarray  # (N,) NaN without ground-truth SMPL
    pck: np.ndarray  # (N,) share of J17 joints within 150 mm, pelvis-centred
    auc: np.ndarray  # (N,) mean PCK over 0..150 mm
    pa_pck: np.ndarray  # (N,) after Procrustes alignment
    pa_auc: np.ndarray  # (N,)
    fb_confusion: np.ndarray | None = None  # (3, 2) pixel counts, or None without foreground masks
    parts_confusion: np.ndarray | None = None  # (8, 7), or None without part masks
    segmented: int = 0  # rows scored on masks
    skipped: int = 0  # rows of the evaluated range left out as bad samples (data.bad_samples: skip)
    neutral_stand_in: int = 0  # rows of gender m/f whose truth came from the neutral model (no gender model)
    joints: str = "h36m"  # "h36m": H36M regressor on the mesh; "keypoints": the body model's own keypoints

    def summary(self) -> dict[str, float | int | str | list[float]]:
        """Every mean (mm, % for PCK/AUC/accuracy, 0-1 for F1) and sample count, for tables and JSON."""
        out: dict[str, float | int | str | list[float]] = {
            "name": self.name, "dataset": self.dataset, "samples": int(len(self.index)),
            "samples_3d": int(np.isfinite(self.mpjpe).sum()),
            "mpjpe_mm": _mean(self.mpjpe), "pa_mpjpe_mm": _mean(self.pa_mpjpe), "pve_mm": _mean(self.pve),
            "pve_samples": int(np.isfinite(self.pve).sum()),
            "pck_pct": PERCENT * _mean(self.pck), "auc_pct": PERCENT * _mean(self.auc),
            "pa_pck_pct": PERCENT * _mean(self.pa_pck), "pa_auc_pct": PERCENT * _mean(self.pa_auc),
            "segmentation_samples": self.segmented, "skipped": self.skipped,
            "neutral_stand_in": self.neutral_stand_in, "joints": self.joints,
        }
        for key, confusion in (("fb", self.fb_confusion), ("parts", self.parts_confusion)):
            if confusion is None:
                out.update({f"{key}_accuracy_pct": float("nan"), f"{key}_f1": float("nan")})
                continue
            out.update({f"{key}_accuracy_pct": PERCENT * accuracy(confusion), f"{key}_f1": macro_f1(confusion),
                        f"{key}_f1_per_class": [float(v) for v in f1_per_class(confusion)],
                        f"{key}_confusion": confusion.tolist()})
        return out
