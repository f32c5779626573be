"""The demo on a video: people found in every (k-th) frame, followed by box overlap, their keypoints smoothed over
time, every person of a frame through the network (and SMPLify) as one batch, and an overlay video written.

Outputs, named after the video in --out: `<stem>_overlay.mp4` (or .avi) with every mesh drawn and each person's
track id, and `<stem>_tracks.npz` with one row per person and frame (frame, track, raw and smoothed BODY_25
keypoints, box, SMPL pose, betas, camera translation). Nothing is written unless the whole video went through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from spin_ray.config import load_config
from spin_ray.data.smoothing import OneEuroSettings, OneEuroState, one_euro_step
from spin_ray.data.tracking import IouTracker
from spin_ray.data.video import VideoFrames
from spin_ray.demo.inputs import box_from_keypoints, check_person
from spin_ray.demo.predict import camera_frame_vertices, estimate_people, image_focal_length
from spin_ray.demo.run import load_model, write_all
from spin_ray.demo.video_out import OverlayVideoWriter
from spin_ray.demo.views import PlacedMesh, render_image_overlay, person_color
from spin_ray.errors import InputError
from spin_ray.eval.evaluate import mean_params_predictor, model_predictor

LABEL_SCALE = 0.7


@dataclass(frozen=True)
class VideoRequest:
    """What `spin-ray demo VIDEO` was asked to do."""

    video: Path
    out: Path
    every: int = 1  # mesh every k-th frame
    checkpoint: Path | None = None
    refine: bool = False
    recipe: str = "multistart"
    config: Path | None = None
    track: int | None = None  # mesh only this track id (None: every person)
    smoothing: OneEuroSettings = OneEuroSettings()
    progress: bool = True  # a progress bar on a terminal


@dataclass
class VideoResult:
    """What the video demo read, found and wrote."""

    written: list[Path]
    frames_read: int
    frames_written: int
    summary: str  # the reader's account of frames read, unreadable and missing
    tracks: dict[int, int]  # track id -> frames in which that person was meshed
    body_model: str
    frames_per_second: float  # frames processed per second of wall time (detection to written frame)
    refined: list[float] = field(default_factory=list)  # ranking error of every SMPLify fit (--refine)
    notes: list[str] = field(default_factory=list)


class TrackSmoother:
    """One One-Euro filter per track id, each remembering the frame it last saw."""

    def __init__(self, settings: OneEuroSettings, fps: float):
        self.settings, self.fps = settings, fps
        self._states: dict[int, tuple[OneEuroState, int]] = {}

    def smooth(self, track: int, frame: int, keypoints: np.ndarray, size: float) -> np.ndarray:
        """The track's keypoints (25, 3) at `frame`, smoothed over its earlier frames."""
        state, last = self._states.get(track, (None, frame - 1))
        state, out = one_euro_step(state, keypoints, max(frame - last, 1) / self.fps, max(size, 1.0), self.settings)
        self._states[track] = (state, frame)
        return out


def label_tracks(picture: np.ndarray, boxes: list[np.ndarray], tracks: list[int]) -> np.ndarray:
    """The picture with each person's track id written above their box, in their mesh colour."""
    out = picture.copy()
    for box, track in zip(boxes, tracks, strict=True):
        colour = tuple(int(255 * c) for c in person_color(track))
        x, y = int(box[0]), max(18, int(box[1]) - 6)
        for ink, thickness in (((0, 0, 0), 4), (colour, 2)):  # a dark rim keeps it readable on any background
            cv2.putText(out, str(track), (x, y), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, ink, thickness, cv2.LINE_AA)
    return out


def run_video(request: VideoRequest) -> VideoResult:
    """Read, detect, track, smooth, regress (and refine), draw and write the overlay video and the tracks."""
    from tqdm import tqdm

    from spin_ray.data.detect import PeopleDetector
    from spin_ray.render.renderer import MeshRenderer

    config = load_config(request.config) if request.config is not None else None
    frames = VideoFrames(request.video, request.every)  # a corrupt video fails here, before the model loads
    try:
        model, cfg, body, trained = load_model(request.checkpoint, config)
    except BaseException:
        frames.close()
        raise
    predictor = model_predictor(model) if trained else mean_params_predictor(model)
    # Eager stages: a clip's frames fit one person each, a compile (30-60 s) would not pay off.
    fitting = cfg.fitting.model_copy(update={"recipe": request.recipe, "compiled": False}) if request.refine else None
    tracker = IouTracker()
    smoother = TrackSmoother(request.smoothing, frames.info.fps / request.every)
    rows: dict[str, list] = {k: [] for k in ("frame", "track", "raw", "keypoints", "center", "scale", "pose",
                                             "betas", "camera_t", "error")}
    tracks: dict[int, int] = {}
    notes: list[str] = []
    left_out = 0
    writer: OverlayVideoWriter | None = None
    renderer = None
    start = time.perf_counter()
    try:
        with frames, PeopleDetector() as detector, tqdm(total=frames.expected() or None, desc=request.video.name,
                                                        unit="frame", disable=None if request.progress else True,
                                                        leave=False) as bar:
            for index, rgb in frames:
                if writer is None:
                    writer = OverlayVideoWriter(frames.info.fps / request.every, rgb.shape[1], rgb.shape[0])
                    renderer = MeshRenderer(rgb.shape[1], rgb.shape[0], body.faces)
                people = detector.detect(rgb)
                ids = tracker.update(np.array([p.box for p in people]).reshape(-1, 4))
                chosen = []
                for person, track in zip(people, ids, strict=True):
                    side = float(np.max(person.box[2:] - person.box[:2]))
                    smoothed = smoother.smooth(track, index, person.keypoints, side)
                    if request.track is not None and track != request.track:
                        continue
                    try:
                        center, scale = box_from_keypoints(smoothed, f"{request.video} frame {index}")
                        check_person(rgb, request.video, smoothed, center, scale, f"frame {index} track {track}")
                    except InputError:
                        left_out += 1
                        continue
                    chosen.append((track, person.keypoints, smoothed, center, scale, person.box))
                picture = rgb
                if chosen:
                    found = estimate_people(predictor, body, rgb, [(c, s) for _, _, _, c, s, _ in chosen],
                                            [k for _, _, k, _, _, _ in chosen], cfg.data.img_res, cfg.camera, fitting)
                    vertices = camera_frame_vertices(body, found.estimate)
                    placed = [PlacedMesh(v, image_focal_length(s, cfg.camera), tuple(c), person_color(t))
                              for v, (t, _, _, c, s, _) in zip(vertices, chosen, strict=True)]
                    picture, _ = render_image_overlay(rgb, placed, body.faces, renderer)
                    picture = label_tracks(picture, [b for *_, b in chosen], [t for t, *_ in chosen])
                    for i, (track, raw, smoothed, center, scale, _) in enumerate(chosen):
                        tracks[track] = tracks.get(track, 0) + 1
                        error = np.nan
                        if found.error is not None and not found.failed[i]:
                            error = float(found.error[i])
                        for key, value in (("frame", index), ("track", track), ("raw", raw), ("keypoints", smoothed),
                                           ("center", center), ("scale", scale), ("error", error),
                                           ("pose", found.estimate.pose[i].numpy()),
                                           ("betas", found.estimate.betas[i].numpy()),
                                           ("camera_t", found.estimate.camera_t[i].numpy())):
                            rows[key].append(value)
                writer.write(picture)
                bar.update(1)
        elapsed = time.perf_counter() - start
        if frames.read == 0:
            raise InputError(f"video {request.video}: no frame could be read by OpenCV (corrupt, or not a video); "
                             "nothing written")
        if not tracks:
            raise InputError(f"no person found in {request.video} ({frames.summary()}); nothing written")
        stem = request.out / request.video.stem
        video_path = writer.finish(stem.with_name(stem.name + "_overlay"))
        arrays = {key: np.asarray(value, np.int64 if key in ("frame", "track") else np.float32)
                  for key, value in rows.items()}
        try:
            written = [video_path] + write_all({request.out / f"{request.video.stem}_tracks.npz": _npz_bytes(arrays)})
        except InputError:
            video_path.unlink(missing_ok=True)
            raise
    finally:
        if writer is not None:
            writer.abort()
        if renderer is not None:
            renderer.close()
    if left_out:
        notes.append(f"{left_out} detection{'s' if left_out != 1 else ''} left out (fewer than 2 confident "
                     "keypoints, or a box the row checks refuse)")
    refined = [float(e) for e in arrays["error"] if np.isfinite(e)] if request.refine else []
    return VideoResult(written, frames.read, writer.frames, frames.summary(), tracks, body.identity,
                       frames.read / elapsed if elapsed > 0 else 0.0, refined, notes)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz of the arrays, in memory."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
