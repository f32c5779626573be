"""The front door of the keypoint readers: a source and its --format to People, and one image's people for the demo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spin_ray.body.joints import NUM_OPENPOSE
from spin_ray.data.importers.coco_json import ACCEPTED_JOINTS, ImageTable, load_json, read_coco
from spin_ray.data.importers.openpose_json import read_openpose_folder
from spin_ray.data.importers.people import People, Role
from spin_ray.data.importers.to_spin import ImportOptions, check_image_dir, import_people
from spin_ray.errors import DataError

if TYPE_CHECKING:
    from spin_ray.data.spin_format import SpinDataset

SOURCE_FORMATS = ("coco", "openpose", "halpe", "wholebody")


def read_source(source: str | Path, format: str, *, image_dir: Path | None = None, role: Role | None = None,
                images: ImageTable | None = None, progress: Callable[[int], None] | None = None,
                category_id: int | str | None = None) -> People:
    """People of `source`: an OpenPose folder or file (`openpose`), else a COCO-format JSON of `format`'s joints
    (`category_id`: the COCO category taken as people, default the one named "person")."""
    if format not in SOURCE_FORMATS:
        raise DataError(f"unknown keypoint format {format!r}; use one of {', '.join(SOURCE_FORMATS)}")
    check_image_dir(image_dir)
    if format == "openpose":
        return read_openpose_folder(source, image_dir, progress)
    if Path(source).is_dir():
        raise DataError(f"{source} is a folder; --format {format} reads one COCO-format JSON file "
                        "(use --format openpose for a folder of OpenPose JSON files)")
    return read_coco(source, format, role=role, images=images, image_dir=image_dir, category_id=category_id)


def coco_format_of(data: object) -> str:
    """The COCO-format --format whose joint count the first person of parsed JSON has ('coco' when unsure)."""
    people = data.get("annotations") if isinstance(data, dict) else data
    first = people[0] if isinstance(people, list) and people and isinstance(people[0], dict) else {}
    values = first.get("keypoints")
    count = len(values) // 3 if isinstance(values, list) else 17
    return next((name for name, counts in ACCEPTED_JOINTS.items() if count in counts
                 or (name == "wholebody" and count == 17 and "foot_kpts" in first)), "coco")


def people_of_image(path: str | Path, image: str | Path) -> list[np.ndarray]:
    """Each person's (25,3) OpenPose-slot keypoints in the JSON `path` for `image`: OpenPose or any COCO format.

    A COCO file's people are those whose image file name is `image`'s; a results file's, those whose
    image_id is `image`'s stem (as a number too), or all of them when the file covers a single image.
    """
    path, image = Path(path), Path(image)
    data = load_json(path)
    if isinstance(data, dict) and "annotations" not in data or not isinstance(data, (dict, list)):
        return list(read_openpose_folder(path).keypoints[:, :NUM_OPENPOSE])
    people = read_coco(path, coco_format_of(data), role="detections")
    names = np.array([Path(n).name for n in people.imgname])
    ids = {image.name, image.stem} | ({str(int(image.stem))} if image.stem.isdigit() else set())
    mine = np.isin(names, list(ids)) & (people.excluded != "category")  # another category's keypoints: no person
    if not mine.any() and len(set(names)) == 1 and not isinstance(data, dict):
        mine[:] = True
    if not mine.any() and len(people):
        raise DataError(f"{path}: none of its {len(people)} people is in image {image.name} (looked for file_name "
                        f"or image_id {sorted(ids)}); pass the keypoint file of this image")
    return [k[:NUM_OPENPOSE] for k in people.keypoints[mine]]



def dataset_from_keypoints(source: str | Path, image_dir: Path | None = None) -> "SpinDataset":
    """The SPIN-format rows that `spin-ray data import` with default options writes for `source`, in memory.

    The format is told from the file (an OpenPose folder or file, else COCO, Halpe or WholeBody by joint
    count), so the rows and their order equal those of the imported .npz the store's indices refer to.
    """
    source = Path(source)
    if source.is_dir():
        format = "openpose"
    else:
        data = load_json(source)
        format = "openpose" if isinstance(data, dict) and "people" in data else coco_format_of(data)
    dataset, _ = import_people(read_source(source, format, image_dir=image_dir), ImportOptions(), None, image_dir)
    return dataset
