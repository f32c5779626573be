"""OpenPose `--write_json` output (one `<image stem>_keypoints.json` per image) read into a People table.

Each file is `{"people": [{"pose_keypoints_2d": [x0, y0, c0, ...]}]}` in image pixels; the model is told by
the length: 25 keypoints are BODY_25 (SPIN's first 25), 18 are OpenPose's COCO-18. An undetected keypoint
is (0, 0, 0). OpenPose gives no box and no person score.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from spin_ray.body.keypoint_formats import FORMATS
from spin_ray.data.importers.coco_json import load_json
from spin_ray.data.importers.people import People, as_float32, concat_people, make_people
from spin_ray.errors import DataError

FORMAT_OF_COUNT = {25: "openpose25", 18: "openpose18"}
_OTHER_MODELS = {15: "MPI"}
OPENPOSE_SUFFIX = "_keypoints.json"


def person_keypoints(values: object, index: int, path: Path) -> tuple[str, np.ndarray]:
    """(format, (J,3) keypoints) of one person's pose_keypoints_2d, or one line naming file, person and field."""
    if not isinstance(values, list):
        raise DataError(f"{path}: people[{index}] has no 'pose_keypoints_2d' list")
    count = len(values) // 3
    if len(values) % 3 or count not in FORMAT_OF_COUNT:
        hint = f" ({count} keypoints: OpenPose's {_OTHER_MODELS[count]} model?)" if count in _OTHER_MODELS else ""
        raise DataError(f"{path}: people[{index}].pose_keypoints_2d has {len(values)} values{hint}, expected 75 "
                        "(BODY_25) or 54 (COCO-18) as [x, y, c] per keypoint; run OpenPose with --model_pose BODY_25")
    try:
        keypoints = np.array(values, dtype=np.float64).reshape(count, 3)
    except (TypeError, ValueError):
        raise DataError(f"{path}: people[{index}].pose_keypoints_2d has non-numeric values") from None
    if not np.isfinite(keypoints).all():
        raise DataError(f"{path}: people[{index}].pose_keypoints_2d has NaN or infinite values")
    return FORMAT_OF_COUNT[count], keypoints


def read_openpose_people(path: Path, data: object) -> list[tuple[str, np.ndarray]]:
    """Every person of one parsed OpenPose JSON as (format, (J,3) keypoints); an empty list when none was found."""
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise DataError(f"{path} has no 'people' list; expected OpenPose's --write_json output "
                        '{"people": [{"pose_keypoints_2d": [...]}]}')
    return [person_keypoints(p.get("pose_keypoints_2d") if isinstance(p, dict) else None, i, path)
            for i, p in enumerate(people)]


def openpose_files(source: Path) -> list[Path]:
    """The JSON files of an OpenPose output folder (searched recursively), or the one file given."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder; give OpenPose's --write_json folder")
    files = sorted(source.rglob("*.json"))
    if not files:
        raise DataError(f"{source}: the folder holds no .json files; give the folder OpenPose's --write_json wrote")
    return files


def image_name(json_file: Path, root: Path, image_dir: Path | None) -> str:
    """The image a JSON file describes, relative to the image folder: `a/b_keypoints.json` -> `a/b.<ext found>`."""
    relative = json_file.relative_to(root).as_posix() if json_file != root else json_file.name
    stem = relative[:-len(OPENPOSE_SUFFIX)] if relative.endswith(OPENPOSE_SUFFIX) else relative[:-len(".json")]
    if image_dir is not None:
        found = sorted((image_dir / stem).parent.glob(Path(stem).name + ".*"))
        if found:
            return found[0].relative_to(image_dir).as_posix()
    return stem + ".jpg"


def read_openpose_folder(source: str | Path, image_dir: Path | None = None,
                         progress: Callable[[int], None] | None = None) -> People:
    """Detections of every OpenPose JSON under `source` (a folder or one file), in the OpenPose slots."""
    source = Path(source)
    tables = []
    formats = set()
    for path in openpose_files(source):
        people = read_openpose_people(path, load_json(path))
        name = image_name(path, source, image_dir)
        for fmt in sorted({f for f, _ in people}):
            rows = [i for i, (f, _) in enumerate(people) if f == fmt]
            joints = np.stack([people[i][1] for i in rows])
            joints[..., 2] = np.clip(joints[..., 2], 0.0, 1.0)
            tables.append(make_people(str(source), fmt, "detections", [name] * len(rows),
                                      [f"{path.name} people[{i}]" for i in rows],
                                      FORMATS[fmt].to_spin49(as_float32(joints), "openpose")))
            formats.add(fmt)
        if progress is not None:
            progress(1)
    fmt = formats.pop() if len(formats) == 1 else "openpose25"
    return concat_people(tables, str(source), fmt, "detections")
