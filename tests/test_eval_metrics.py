"""PCK, AUC (3DHP) and LSP segmentation scores on hand-made joints and masks whose answers are worked out here."""

import math

import numpy as np
import pytest
import torch

from spin_ray.errors import InputError
from spin_ray.eval.metrics import AUC_THRESHOLDS_MM, auc, pck, procrustes_aligned
from spin_ray.eval.segmentation import (
    IGNORE_LABEL,
    PART_CLASSES,
    accuracy,
    confusion_matrix,
    f1_per_class,
    foreground,
    macro_f1,
)
from spin_ray.geometry import axis_angle_to_matrix


def joints_off_by(errors_mm):
    """A target of len(errors_mm) joints and a prediction with joint i moved errors_mm[i] along x."""
    target = torch.randn(1, len(errors_mm), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pred = target.clone()
    pred[0, :, 0] += torch.tensor(errors_mm, dtype=torch.float64) / 1000.0
    return pred, target


def test_pck_counts_joints_strictly_below_the_threshold():
    pred, target = joints_off_by([0.0, 100.0, 149.9, 150.1, 200.0])
    assert pck(pred, target).item() == pytest.approx(3 / 5)  # 0, 100 and 149.9 mm are below 150
    assert pck(pred, target, threshold_mm=150.2).item() == pytest.approx(4 / 5)
    assert pck(pred, target, threshold_mm=0.0).item() == 0.0


@pytest.mark.parametrize("error_mm, thresholds_passed", [(0.0, 30), (12.0, 28), (149.0, 1), (150.5, 0)])
def test_auc_is_the_mean_pck_over_31_thresholds(error_mm, thresholds_passed):
    assert len(AUC_THRESHOLDS_MM) == 31 and AUC_THRESHOLDS_MM[0] == 0 and AUC_THRESHOLDS_MM[-1] == 150
    pred, target = joints_off_by([error_mm])
    # A joint 12 mm off passes the thresholds 15, 20, ..., 150 (28 of them); a perfect one all but 0.
    assert auc(pred, target).item() == pytest.approx(thresholds_passed / 31)


def test_auc_of_two_joints_averages_their_curves_and_is_batched():
    pred, target = joints_off_by([0.0, 12.0])
    both = auc(torch.cat([pred, target]), torch.cat([target, target]))
    assert both.shape == (2,)
    assert both.tolist() == pytest.approx([(30 + 28) / 62, 30 / 31])


def test_rigid_alignment_recovers_a_moved_scaled_prediction():
    target = torch.randn(2, 17, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.3
    rotation = axis_angle_to_matrix(torch.tensor([[0.3, -1.1, 0.4], [2.0, 0.1, 0.0]], dtype=torch.float64))
    pred = 0.8 * target @ rotation.transpose(1, 2) + torch.tensor([0.5, -0.2, 3.0], dtype=torch.float64)
    assert pck(pred, target).max() < 1.0
    aligned = procrustes_aligned(pred, target)
    assert pck(aligned, target).tolist() == [1.0, 1.0]
    assert auc(aligned, target).tolist() == pytest.approx([30 / 31, 30 / 31])


def test_pck_refuses_mismatched_joint_sets_and_auc_needs_thresholds():
    with pytest.raises(InputError, match="same B and N"):
        pck(torch.zeros(1, 17, 3), torch.zeros(1, 14, 3))
    with pytest.raises(InputError, match="at least one threshold"):
        auc(torch.zeros(1, 17, 3), torch.zeros(1, 17, 3), thresholds_mm=())


def test_foreground_scores_of_a_hand_made_mask():
    gt = np.array([[0, 0, 0], [0, 0, 1]])
    pred = np.array([[0, 0, 1], [1, 1, 1]])
    cm = confusion_matrix(pred, gt, 2)
    # background: TP 2, FN 3, FP 0 -> F1 4/7; person: TP 1, FP 3, FN 0 -> F1 2/5.
    assert cm.tolist() == [[2, 3], [0, 1], [0, 0]]
    assert accuracy(cm) == pytest.approx(3 / 6)
    assert f1_per_class(cm).tolist() == pytest.approx([4 / 7, 2 / 5])
    assert macro_f1(cm) == pytest.approx((4 / 7 + 2 / 5) / 2)


def test_part_scores_ignore_255_for_f1_and_count_it_as_background_for_accuracy():
    gt = np.array([[0, 1, IGNORE_LABEL], [2, 2, 0]])
    pred = np.array([[0, 1, 0], [2, 1, 3]])
    cm = confusion_matrix(pred, gt, PART_CLASSES)
    # Right: (0,0), (0,1), (1,0) and the ignored pixel predicted background; wrong: (1,1), (1,2).
    assert accuracy(cm) == pytest.approx(4 / 6)
    f1 = f1_per_class(cm)
    # class 0: TP 1, FN 1 -> 2/3; 1: TP 1, FP 1 -> 2/3; 2: TP 1, FN 1 -> 2/3; 3: FP 1 -> 0; 4-6 absent.
    assert f1[:4].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])
    assert all(math.isnan(v) for v in f1[4:])
    assert macro_f1(cm) == pytest.approx(2 / 4)
    # Summing the matrices of two images is scoring them as one dataset.
    twice = confusion_matrix(np.stack([pred, pred]), np.stack([gt, gt]), PART_CLASSES)
    assert np.array_equal(twice, 2 * cm)


def test_foreground_of_parts_keeps_ignored_pixels_and_bad_labels_are_refused():
    assert foreground(np.array([[0, 3, IGNORE_LABEL]])).tolist() == [[0, 1, IGNORE_LABEL]]
    with pytest.raises(InputError, match="labels must lie in 0..1"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(InputError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
