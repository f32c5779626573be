"""LSP segmentation scores as SPIN computes them (its eval.py, after UP-3D): accuracy and macro F1 from label maps.

Label maps are integer images: for foreground/background 0 = background, 1 = person (2 classes);
for parts 0 = background and 1..6 the six parts (7 classes), with IGNORE_LABEL (255) in the ground
truth marking pixels nobody scores. Counts are accumulated over a whole dataset in one
`(classes + 1, classes)` confusion matrix whose last row holds the ignored pixels by predicted
class, so that both of SPIN's rules can be read from it:
- F1: per class, 2 TP / (2 TP + FP + FN) over the pixels not ignored, summed over the dataset before
  dividing; the score is the mean over classes (macro F1).
- accuracy: correct pixels / all pixels, where an ignored pixel counts as background (SPIN sets 255
  to 0 in both maps before comparing), so it is correct when the prediction says background.
"""

from __future__ import annotations

import numpy as np

from spin_ray.errors import InputError

IGNORE_LABEL = 255
FB_CLASSES = 2
PART_CLASSES = 7  # background + head, torso, left arm, right arm, left leg, right leg


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes + 1, num_classes) pixel counts: row = ground truth (last row: ignored), column = prediction."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} label maps must have the same shape")
    bad_pred = (pred < 0) | (pred >= num_classes)
    bad_gt = ((gt < 0) | (gt >= num_classes)) & (gt != IGNORE_LABEL)
    if bad_pred.any() or bad_gt.any():
        found = np.unique(np.concatenate([pred[bad_pred].ravel(), gt[bad_gt].ravel()]))[:5].tolist()
        raise InputError(f"labels must lie in 0..{num_classes - 1} (ground truth may also be {IGNORE_LABEL}, "
                         f"ignored); found {found}")
    rows = np.where(gt == IGNORE_LABEL, num_classes, gt).astype(np.int64)
    codes = rows.ravel() * num_classes + pred.astype(np.int64).ravel()
    counts = np.bincount(codes, minlength=(num_classes + 1) * num_classes)
    return counts.reshape(num_classes + 1, num_classes)


def accuracy(confusion: np.ndarray) -> float:
    """Share of all pixels labelled right; an ignored pixel is right when predicted background (SPIN's rule)."""
    num_classes = confusion.shape[1]
    total = int(confusion.sum())
    if total == 0:
        return float("nan")
    return float((np.trace(confusion[:num_classes]) + confusion[num_classes, 0]) / total)


def f1_per_class(confusion: np.ndarray) -> np.ndarray:
    """F1 of each class (classes,) over the pixels not ignored; NaN for a class absent from both maps."""
    scored = confusion[:-1].astype(np.float64)
    tp = np.diag(scored)
    fp = scored.sum(axis=0) - tp
    fn = scored.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes (SPIN's `np.mean(f1)`); classes absent from both maps are left out."""
    scores = f1_per_class(confusion)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def foreground(labels: np.ndarray) -> np.ndarray:
    """Foreground/background labels (0/1) of a part label map; ignored pixels stay IGNORE_LABEL."""
    labels = np.asarray(labels)
    return np.where(labels == IGNORE_LABEL, IGNORE_LABEL, labels > 0).astype(np.uint8)
