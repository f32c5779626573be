"""People found by the bundled detector in a folder of photos, or in a video's frames, as a People table.

The detector's landmarks of every image are kept in a cache file (JSON, keyed by the image's path, size and
modification time, and the detector's settings), written as the import goes: a rerun, or a run after a stop,
detects only the images the cache does not hold. A video's frames are written as JPEG files (the dataset's
images) beside the .npz.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from spin_ray.body.keypoint_formats import FORMATS, with_blazepose_midpoints
from spin_ray.data.importers.people import People, concat_people, make_people
from spin_ray.errors import DataError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
CACHE_VERSION = 1
SAVE_EVERY = 20  # images detected between two writes of the cache (what a stop loses at most)
FRAME_QUALITY = 95  # JPEG quality of a video's frames


@dataclass
class DetectionCache:
    """Landmarks (33, 3), box and score of every person of every image seen, keyed by image path, size, mtime."""

    path: Path
    settings: dict
    entries: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, settings: dict) -> DetectionCache:
        """The cache at `path`; an unreadable one, or one of another source or detector settings, starts empty (with a note)."""
        cache = cls(Path(path), settings)
        if not cache.path.is_file():
            return cache
        try:
            data = json.loads(cache.path.read_text())
            ok = data.get("version") == CACHE_VERSION and data.get("settings") == settings
            entries = data.get("images") if ok else None
        except (OSError, ValueError, AttributeError):
            entries = None
        if isinstance(entries, dict):
            cache.entries = entries
        else:
            cache.notes.append(f"the detection cache {cache.path} is unreadable, of another source or of other detector settings; "
                               "every image is detected again")
        return cache

    def save(self) -> None:
        """Write the cache atomically (a stop mid-write leaves the former one)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "settings": self.settings, "images": self.entries}))
            os.replace(tmp, self.path)
        except OSError as err:
            raise DataError(f"could not write the detection cache {self.path} ({err.strerror}); choose a writable "
                            "--out folder") from None
        finally:
            tmp.unlink(missing_ok=True)


def cache_key(path: Path, name: str, extra: str = "") -> str:
    """The key of an image (or of one frame of a video): its name, byte size and modification time."""
    stat = path.stat()
    return f"{name}|{stat.st_size}|{stat.st_mtime_ns}{extra}"


@dataclass
class DetectedImages:
    """What reading a folder or video through the detector found."""

    people: People
    images: int  # images (or frames) looked at
    detected: int  # images run through the detector in this call
    cached: int  # images whose people came from the cache
    unreadable: list[str]  # images OpenCV could not decode
    image_root: Path  # the folder the People's imgname is relative to
    video_summary: str | None = None  # a video's frames read, unreadable and missing
    notes: list[str] = field(default_factory=list)


def photo_files(folder: Path) -> list[Path]:
    """The photos under `folder` (searched recursively, by suffix), sorted."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give a folder of photos or a video file")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no photos in it ({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder of photos")
    return files


def _photos(folder: Path, unreadable: list[str]) -> Iterator[tuple[str, str, Callable[[], np.ndarray | None]]]:
    """(image name relative to folder, cache key, reader of its RGB pixels) of every photo."""
    for path in photo_files(folder):
        name = path.relative_to(folder).as_posix()

        def read(path=path, name=name) -> np.ndarray | None:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                unreadable.append(name)
                return None
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        yield name, cache_key(path, name), read


def detect_people_in(
    source: Path, cache_path: Path, frames_dir: Path | None = None, every: int = 1,
    progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None,
) -> DetectedImages:
    """Every person the detector finds in a folder of photos or in a video (every `every`-th frame; its frames are
    written under `frames_dir`, default: beside the cache), through the cache at `cache_path`."""
    from spin_ray.data.detect import DetectorSettings, PeopleDetector
    from spin_ray.data.video import VideoFrames, is_video

    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such folder or video; give a folder of photos or a video file")
    # The source's own path belongs to the key: two folders of one name (a/photos, b/photos) imported beside each
    # other share the cache file's name, and their files may share names, sizes and times (copies, archives).
    settings = {**asdict(DetectorSettings()), "every": every, "source": str(source.resolve())}
    cache = DetectionCache.open(cache_path, settings)
    unreadable: list[str] = []
    detector = None
    tables, images, detected, cached, since_save = [], 0, 0, 0, 0
    video = is_video(source) and source.is_file()
    if video:
        root = Path(frames_dir) if frames_dir is not None else cache.path.parent
        frames = VideoFrames(source, every)
        items = _video_frames(source, frames, root)
        if total is not None:
            total(frames.expected())
    else:
        root, frames = source, None
        files = photo_files(source)
        if total is not None:
            total(len(files))
        items = _photos(source, unreadable)
    try:
        for name, key, read in items:
            images += 1
            entry = cache.entries.get(key)
            if entry is None:
                rgb = read()
                if rgb is None:
                    if progress is not None:
                        progress(1)
                    continue
                if detector is None:
                    detector = PeopleDetector()
                found = detector.detect(rgb)
                entry = {"size": [int(rgb.shape[1]), int(rgb.shape[0])],
                         "people": [{"landmarks": np.round(p.landmarks, 3).tolist(), "score": round(p.score, 5)}
                                    for p in found]}
                cache.entries[key] = entry
                detected += 1
                since_save += 1
                if since_save >= SAVE_EVERY:
                    cache.save()
                    since_save = 0
            else:
                cached += 1
            tables.append(_people_of(entry, name, str(source)))
            if progress is not None:
                progress(1)
    finally:
        if detector is not None:
            detector.close()
        if frames is not None:
            frames.close()
        if since_save:
            cache.save()
    if images == 0:
        raise DataError(f"{source}: no frame could be read by OpenCV (corrupt, or not a video); nothing written")
    people = concat_people(tables, str(source), "blazepose", "detections")
    return DetectedImages(people, images, detected, cached, unreadable, root,
                          frames.summary() if frames is not None else None, cache.notes)


def _video_frames(video: Path, frames, root: Path) -> Iterator[tuple[str, str, Callable[[], np.ndarray | None]]]:
    """(frame image name relative to root, cache key, reader) of every kept frame; each frame is written once as a
    JPEG under root/<video stem>_frames/."""
    folder = f"{video.stem}_frames"
    for index, rgb in frames:
        name = f"{folder}/{index:06d}.jpg"
        target = root / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
            if not ok:
                raise InputError(f"OpenCV could not encode frame {index} of {video} as JPEG")
            target.write_bytes(data.tobytes())
        yield name, cache_key(video, video.name, f"|frame {index}"), lambda rgb=rgb: rgb


def _people_of(entry: dict, name: str, source: str) -> People:
    """The People rows of one image's cache entry: landmarks mapped to the OpenPose slots of SPIN's 49."""
    people = entry["people"]
    landmarks = np.array([p["landmarks"] for p in people], np.float32).reshape(len(people), 33, 3)
    keypoints = FORMATS["blazepose"].to_spin49(with_blazepose_midpoints(landmarks), "openpose")
    return make_people(source, "blazepose", "detections", [name] * len(people),
                       [f"{name} person {k}" for k in range(len(people))], keypoints,
                       score=[p["score"] for p in people], image_size=[entry["size"]] * len(people))
