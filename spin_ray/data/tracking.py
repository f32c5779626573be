"""People followed across video frames by box overlap: each person keeps one id while their boxes overlap.

Greedy matching, most-overlapping pair first (enough for people who do not swap places between two frames); a
track not matched for `max_missed` frames read is closed, and a person matched to no open track starts a new id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) intersection over union of boxes a (M, 4) and b (N, 4), each x0, y0, x1, y1."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(previous: np.ndarray, current: np.ndarray, min_iou: float) -> np.ndarray:
    """(N,) index into `previous` (M, 4) matched to each of `current` (N, 4), or -1: greedy by overlap, each once."""
    overlap = iou_matrix(previous, current)
    match = np.full(len(current), -1, np.int64)
    if overlap.size == 0:
        return match
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = divmod(int(flat), overlap.shape[1])
        if overlap[i, j] < min_iou:
            break
        if match[j] < 0 and i not in match:
            match[j] = i
    return match


@dataclass
class IouTracker:
    """Open tracks (id, last box, frames since seen); `update(boxes)` gives each box of a frame its track id."""

    min_iou: float = 0.3  # boxes of one person in consecutive frames read overlap at least this much
    max_missed: int = 5  # frames read without a match before a track is closed
    next_id: int = 0
    ids: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)

    def update(self, boxes: np.ndarray) -> list[int]:
        """Track ids of this frame's boxes (N, 4), in their order."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        previous = np.array(self.boxes).reshape(-1, 4)
        match = match_boxes(previous, boxes, self.min_iou)
        ids = []
        for j, i in enumerate(match):
            if i >= 0:
                ids.append(self.ids[i])
                self.boxes[i], self.missed[i] = boxes[j], -1
            else:
                ids.append(self.next_id)
                self.ids.append(self.next_id)
                self.boxes.append(boxes[j])
                self.missed.append(-1)
                self.next_id += 1
        self.missed = [m + 1 for m in self.missed]
        keep = [k for k, m in enumerate(self.missed) if m <= self.max_missed]
        self.ids, self.boxes, self.missed = ([self.ids[k] for k in keep], [self.boxes[k] for k in keep],
                                             [self.missed[k] for k in keep])
        return ids
