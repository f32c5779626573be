"""The demo's overlay video: frames written through OpenCV into a temporary folder, moved to --out when complete.

H.264 in .mp4 (`avc1`) where this OpenCV's FFmpeg has an H.264 encoder, else Motion-JPEG in .avi, which every OpenCV
build writes (the opencv-python wheels have no H.264 encoder). Nothing appears under --out unless the whole video was
written and reads back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from spin_ray.data.detect import quiet_stderr
from spin_ray.errors import InputError

# (suffix, fourcc) tried in order: H.264, then Motion-JPEG.
CODECS = ((".mp4", "avc1"), (".avi", "MJPG"))


class OverlayVideoWriter:
    """Write RGB frames of one size; `finish(stem_path)` moves the video to `stem_path` + its suffix."""

    def __init__(self, fps: float, width: int, height: int):
        self.size, self.frames = (width, height), 0
        self._folder = Path(tempfile.mkdtemp(prefix="spin-ray-video-"))
        for suffix, fourcc in CODECS:
            self.suffix, self.fourcc = suffix, fourcc
            self._path = self._folder / f"overlay{suffix}"
            with quiet_stderr():  # FFmpeg's lines about an encoder it lacks, before the next codec is tried
                self._writer = cv2.VideoWriter(str(self._path), cv2.VideoWriter_fourcc(*fourcc), float(fps),
                                               (width, height))
            if self._writer.isOpened():
                return
            self._writer.release()
        shutil.rmtree(self._folder, ignore_errors=True)
        raise InputError(f"this OpenCV cannot write a video ({', '.join(c for _, c in CODECS)} all refused at "
                         f"{width}x{height}); install opencv-python with FFmpeg")

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB uint8 frame of the writer's size."""
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise InputError(f"video frame of size {rgb.shape[1]}x{rgb.shape[0]}, expected {self.size[0]}x"
                             f"{self.size[1]} (a video whose frames change size is not supported)")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def finish(self, stem_path: Path) -> Path:
        """Close the video, check that it opens with its frame count, and move it to `stem_path` + suffix."""
        self._writer.release()
        check = cv2.VideoCapture(str(self._path))
        count = int(check.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if check.isOpened() else -1
        check.release()
        if count != self.frames:
            self.abort()
            raise InputError(f"the overlay video written with {self.fourcc} reads back with {count} frames, not "
                             f"{self.frames}; nothing written (this OpenCV's FFmpeg cannot round-trip the video)")
        target = stem_path.with_name(stem_path.name + self.suffix)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self._path), str(target))
        except OSError as err:
            raise InputError(f"could not write {target} ({err.strerror}); choose a writable --out folder") from None
        finally:
            self.abort()
        return target

    def abort(self) -> None:
        """Drop whatever was written."""
        self._writer.release()
        shutil.rmtree(self._folder, ignore_errors=True)
