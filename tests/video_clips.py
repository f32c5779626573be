"""Short clips and photo folders for the detector tests, rendered from the synthetic body (the generator's people on
its random backgrounds, which BlazePose finds: the tight part-coloured renders on black it often does not)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Samples of the synthetic test split's first chunk that the bundled detector finds (measured: 0, 1, 3, 4, 5, 6).
DETECTED = (0, 1, 3, 5)


def synthetic_people(count: int = 8) -> np.ndarray:
    """(count, 256, 256, 3) RGB renders of the synthetic generator's test split (one person each, with background)."""
    from spin_ray.config import RunConfig
    from spin_ray.data.synth_generator import ChunkSpec, SyntheticGenerator

    generator = SyntheticGenerator(RunConfig())
    try:
        return generator.render_chunk(ChunkSpec("synth-test", 0, count, 0)).images
    finally:
        generator.close()


def moving_pair(people: np.ndarray, frames: int, step: int = 3) -> np.ndarray:
    """(frames, 256, 512, 3): two people side by side, the left walking right and the right walking left by
    `step` px a frame (their backgrounds move with them, the edges repeat)."""
    left, right = people[DETECTED[0]], people[DETECTED[1]]
    out = []
    for k in range(frames):
        shift = np.float32([[1, 0, step * k], [0, 1, 0]])
        back = np.float32([[1, 0, -step * k], [0, 1, 0]])
        out.append(np.concatenate([cv2.warpAffine(left, shift, (256, 256), borderMode=cv2.BORDER_REPLICATE),
                                   cv2.warpAffine(right, back, (256, 256), borderMode=cv2.BORDER_REPLICATE)], axis=1))
    return np.stack(out)


def write_clip(path: Path, frames: np.ndarray, fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    """Write RGB frames as a video with OpenCV; check that it opened."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    """Frames OpenCV decodes from a video, read to its end."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count
