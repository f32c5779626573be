"""Video frames read with OpenCV: every k-th frame as RGB, with the frames that could not be read counted.

A video that ends before its header's frame count, or has frames OpenCV cannot decode, keeps the frames read;
`VideoFrames.summary()` says how many were read, skipped as unreadable and promised by the header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from spin_ray.data.detect import quiet_stderr
from spin_ray.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
# Failed reads in a row before a video is taken to have ended (a truncated file fails every read after its end).
MAX_FAILED_IN_A_ROW = 10
DEFAULT_FPS = 30.0  # a video whose header has no frame rate


def is_video(path: str | Path) -> bool:
    """Whether `path` is a video: by its suffix, else by content (OpenCV cannot read it as an image but as a video)."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if not path.is_file() or cv2.haveImageReader(str(path)):
        return False
    capture = cv2.VideoCapture(str(path))
    try:
        return capture.isOpened() and capture.grab()
    finally:
        capture.release()


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says."""

    fps: float  # frames per second (DEFAULT_FPS where the header has none)
    frame_count: int  # frames the header promises (0 where unknown)
    width: int
    height: int


class VideoFrames:
    """Every `every`-th frame of a video as (frame index, RGB uint8 (H, W, 3)); counts what could not be read."""

    def __init__(self, path: str | Path, every: int = 1):
        if every < 1:
            raise InputError(f"--every must be 1 or more, got {every}")
        self.path, self.every = Path(path), every
        if not self.path.is_file():
            raise InputError(f"video {self.path} does not exist; give the path of a video file (MP4, AVI, ...)")
        with quiet_stderr():
            self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            self._capture.release()
            raise InputError(f"video {self.path} could not be opened by OpenCV (corrupt, or not a video format "
                             "its FFmpeg reads); nothing written")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.info = VideoInfo(fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS,
                              max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
                              int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.read = 0  # frames decoded and handed out
        self.unreadable = 0  # frames that failed to decode before the video's end
        self.position = 0  # frames passed (read, skipped by --every, or unreadable)

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        failed = 0  # failed reads since the last good one: unreadable frames if a good one follows, else the end
        while True:
            wanted = (self.position + failed) % self.every == 0
            with quiet_stderr():  # FFmpeg's own lines about a damaged frame; the summary counts them
                ok = self._capture.grab()
                frame = self._capture.retrieve()[1] if ok and wanted else None
            if not ok or (wanted and frame is None):
                # Within the header's frame count a failed read may be one bad frame: try the next ones.
                if self.position + failed >= self.info.frame_count or failed >= MAX_FAILED_IN_A_ROW:
                    return
                failed += 1
                continue
            self.unreadable += failed
            self.position += failed
            failed = 0
            index = self.position
            self.position += 1
            if wanted:
                self.read += 1
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def expected(self) -> int:
        """Frames the header promises at this --every (0 where unknown)."""
        return -(-self.info.frame_count // self.every)

    def summary(self) -> str:
        """'read 40 frames of 60 (every 1st); 2 unreadable, the video ended after frame 42 of 60' or the like."""
        text = f"read {self.read} frame{'s' if self.read != 1 else ''} of {self.path.name}"
        if self.every > 1:
            text += f" (1 in {self.every} of its {self.position})"
        problems = []
        if self.unreadable:
            problems.append(f"{self.unreadable} unreadable frame{'s' if self.unreadable != 1 else ''} skipped")
        if self.info.frame_count and self.position < self.info.frame_count:
            problems.append(f"the video ended after {self.position} of the {self.info.frame_count} frames its "
                            "header promises")
        return text + ("; " + ", ".join(problems) + " (the frames read are kept)" if problems else "")
