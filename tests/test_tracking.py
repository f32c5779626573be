"""Following people across frames by box overlap (spin_ray/data/tracking.py)."""

from __future__ import annotations

import numpy as np
import pytest

from spin_ray.data.detect import box_iou
from spin_ray.data.tracking import IouTracker, iou_matrix, match_boxes


def test_iou_matrix_equals_the_pairwise_overlap():
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 50, (5, 2))
    a = np.concatenate([low, low + rng.uniform(1, 40, (5, 2))], axis=1)
    b = a[::-1] + 3.0
    matrix = iou_matrix(a, b)
    assert matrix.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            assert matrix[i, j] == pytest.approx(box_iou(a[i], b[j]))
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 5)


def test_match_boxes_takes_the_best_overlap_first_and_each_box_once():
    previous = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    current = np.array([[21, 0, 31, 10], [1, 0, 11, 10], [200, 0, 210, 10]], float)
    assert match_boxes(previous, current, 0.3).tolist() == [1, 0, -1]
    # Two boxes on one former box: the better one gets it.
    two = np.array([[5, 0, 15, 10], [0, 0, 10, 10]], float)
    assert match_boxes(previous[:1], two, 0.3).tolist() == [-1, 0]


def test_people_keep_their_ids_while_they_walk_past_each_other_apart():
    tracker = IouTracker()
    seen = []
    for frame in range(20):
        left = [10 + 3 * frame, 50, 60 + 3 * frame, 150]
        right = [300 - 3 * frame, 40, 350 - 3 * frame, 160]
        order = (left, right) if frame % 2 else (right, left)  # the detector's order changes
        ids = tracker.update(np.array(order, float))
        seen.append(dict(zip(("left", "right") if frame % 2 else ("right", "left"), ids, strict=True)))
    assert {s["left"] for s in seen} == {seen[0]["left"]} and {s["right"] for s in seen} == {seen[0]["right"]}
    assert seen[0]["left"] != seen[0]["right"]


def test_a_new_person_gets_a_new_id_and_a_lost_track_closes():
    tracker = IouTracker(max_missed=2)
    box = np.array([[0, 0, 10, 20]], float)
    assert tracker.update(box) == [0]
    assert tracker.update(np.zeros((0, 4))) == []
    assert tracker.update(box) == [0]  # one frame missed: the same person
    for _ in range(3):
        tracker.update(np.zeros((0, 4)))
    assert tracker.update(box) == [1]  # missed too long: a new track
    assert tracker.update(np.concatenate([box, box + 100])) == [1, 2]
