"""COCO-format keypoints: a ground-truth annotation file or a detector's results file (COCO-17, Halpe-26/136,
COCO-WholeBody-133), read into a People table.

An annotation file is `{"images": [{id, file_name, width, height}], "annotations": [{image_id, bbox, keypoints,
iscrowd, ...}]}` with keypoints [x, y, v], v in {0, 1, 2} (0: not labelled): its people are ground truth, and
a labelled joint gets confidence 1 (SPIN's rule for COCO). A results file is a list of `{image_id, keypoints,
score, bbox?}` with keypoints [x, y, score]: its people are detections, each joint keeps its score (clipped to
[0, 1]). WholeBody annotations keep the body in `keypoints` (17) and the feet in `foot_kpts` (6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, FiniteFloat, TypeAdapter, ValidationError

from spin_ray.body.keypoint_formats import FORMATS, WHOLEBODY_FOOT_NAMES
from spin_ray.data.importers.people import People, Role, as_float32, make_people
from spin_ray.errors import DataError

# Joints per person that each --format accepts; the first format.num_joints of them are used.
# WholeBody's 23 are its annotation files' body (17, `keypoints`) and feet (6, `foot_kpts`) put together.
ACCEPTED_JOINTS: dict[str, tuple[int, ...]] = {"coco": (17,), "halpe": (26, 136), "wholebody": (133, 23)}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PERSON_NAME = "person"  # the category whose annotations are people, in a file that names its categories
COCO_PERSON_ID = "1"  # COCO's person category: taken when a file does not name its categories


class CocoImage(BaseModel):
    """One `images` entry."""

    model_config = ConfigDict(extra="ignore")
    id: int | str
    file_name: str
    width: FiniteFloat | None = None
    height: FiniteFloat | None = None


class CocoPerson(BaseModel):
    """One person: an `annotations` entry or a results-file entry."""

    model_config = ConfigDict(extra="ignore")
    image_id: int | str
    keypoints: list[FiniteFloat]
    bbox: tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    score: FiniteFloat | None = None
    iscrowd: int = 0
    foot_kpts: list[FiniteFloat] | None = None
    category_id: int | str | None = None


class CocoCategory(BaseModel):
    """One `categories` entry."""

    model_config = ConfigDict(extra="ignore")
    id: int | str
    name: str | None = None


class CocoAnnotations(BaseModel):
    """A COCO keypoint annotation file (the keys used here)."""

    model_config = ConfigDict(extra="ignore")
    images: list[CocoImage] = []
    annotations: list[CocoPerson]
    categories: list[CocoCategory] = []


_RESULTS = TypeAdapter(list[CocoPerson])
ImageTable = dict[str, tuple[str, float, float]]  # str(image id) -> (file name, width, height)


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the file"


def validation_error(path: Path, err: ValidationError, what: str) -> DataError:
    """One line naming the file, the entry and field, and what was wrong there."""
    first = err.errors()[0]
    loc = _where(tuple(first["loc"]))
    got = repr(first.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    return DataError(f"{path}: {loc}: {first['msg']} (got {got}); expected {what}")


def load_json(path: Path) -> object:
    """The parsed JSON of a file, or one line saying why it could not be read."""
    if not path.is_file():
        raise DataError(f"{path}: keypoint file does not exist (check the path)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not JSON ({err}); expected COCO-format keypoints or OpenPose's --write_json output") from None


def image_table(images: list[CocoImage]) -> ImageTable:
    """The `images` entries by id (the first entry of an id listed twice)."""
    nan = float("nan")
    table: ImageTable = {}
    for i in images:
        table.setdefault(str(i.id), (i.file_name, nan if i.width is None else i.width,
                                     nan if i.height is None else i.height))
    return table


def image_problems(images: list[CocoImage]) -> tuple[dict[str, str], list[str]]:
    """Image id -> why its people cannot be imported ("image_id": listed twice with different files; "image_size":
    width or height 0 or less), and notes on harmless repeats."""
    problems: dict[str, str] = {}
    seen: dict[str, CocoImage] = {}
    repeats: set[str] = set()
    for image in images:
        key = str(image.id)
        first = seen.setdefault(key, image)
        if first is not image:
            if (first.file_name, first.width, first.height) != (image.file_name, image.width, image.height):
                problems[key] = "image_id"
            else:
                repeats.add(key)
        if key not in problems and any(v is not None and v <= 0 for v in (image.width, image.height)):
            problems[key] = "image_size"
    notes = [f"{len(repeats)} image id(s) listed more than once with the same file, used once "
             f"(e.g. {sorted(repeats)[0]})"] if repeats else []
    return problems, notes


def person_category(path: Path, categories: list[CocoCategory], chosen: int | str | None) -> tuple[str, str | None]:
    """The category id whose annotations are people, and a note saying how it was chosen (None: nothing to say).

    --category-id wins; else the category named "person"; a file whose named categories hold no person is
    refused; a file that names none gets COCO's person id.
    """
    names = {str(c.id): c.name for c in categories}
    if chosen is not None:
        if categories and str(chosen) not in names:
            listed = ", ".join(f"{k} {v!r}" if v else k for k, v in names.items())
            raise DataError(f"{path}: --category-id {chosen} is not among the file's categories ({listed})")
        name = f" ({names[str(chosen)]!r})" if names.get(str(chosen)) else ""
        return str(chosen), f"took category_id {chosen}{name} as people (--category-id)"
    named = {k: v for k, v in names.items() if v}
    if not named:
        return COCO_PERSON_ID, None
    person = [k for k, v in named.items() if v.strip().lower() == PERSON_NAME]
    if not person:
        listed = ", ".join(f"{k} {v!r}" for k, v in named.items())
        raise DataError(f"{path}: none of its categories is a person ({listed}); its keypoints are not people's "
                        "(give --category-id ID to import one category as people anyway)")
    return person[0], None


def image_table_of(path: str | Path) -> ImageTable:
    """The `images` table of a COCO annotation file (empty for a results file), to name another file's image ids."""
    data = load_json(Path(path))
    if not isinstance(data, dict):
        return {}
    try:
        return image_table(TypeAdapter(list[CocoImage]).validate_python(data.get("images", [])))
    except ValidationError as err:
        raise validation_error(Path(path), err, "images entries {id, file_name, width, height}") from None


def images_in_folder(folder: Path) -> ImageTable:
    """Image files under `folder` by stem and by number (COCO's 000000397133.jpg is image id 397133)."""
    table: ImageTable = {}
    nan = float("nan")
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            name = path.relative_to(folder).as_posix()
            table.setdefault(path.stem, (name, nan, nan))
            if path.stem.isdigit():
                table.setdefault(str(int(path.stem)), (name, nan, nan))
    return table


def _joint_array(path: Path, people: list[CocoPerson], format: str, where: str) -> np.ndarray:
    """(N,J,3) of the format's J joints, one line naming the first entry with another count."""
    fmt = FORMATS[format]
    rows = [p.keypoints + (p.foot_kpts or []) if format == "wholebody" and len(p.keypoints) == 51 and p.foot_kpts
            else p.keypoints for p in people]
    counts = np.array([len(r) for r in rows])
    accepted = [3 * j for j in ACCEPTED_JOINTS[format]]
    bad = np.flatnonzero(~np.isin(counts, accepted))
    if len(bad):
        i, count = int(bad[0]), int(counts[bad[0]])
        other = [name for name, joints in ACCEPTED_JOINTS.items() if count in [3 * j for j in joints]]
        hint = f" ({count // 3} joints: use --format {other[0]})" if other and other[0] != format else ""
        foot = f", or 51 with {3 * len(WHOLEBODY_FOOT_NAMES)} in foot_kpts" if format == "wholebody" else ""
        raise DataError(f"{path}: {where}[{i}].keypoints has {count} values{hint}, expected {accepted[0]} "
                        f"({fmt.title} x [x, y, v]){foot} for --format {format}")
    if not rows:
        return np.zeros((0, fmt.num_joints, 3))
    width = min(accepted)
    return np.array([r[:width] for r in rows], np.float64).reshape(len(rows), -1, 3)[:, :fmt.num_joints]


def read_coco(path: str | Path, format: str = "coco", *, role: Role | None = None, images: ImageTable | None = None,
              image_dir: Path | None = None, category_id: int | str | None = None) -> People:
    """People of a COCO-format annotation or results file; `role` overrides the file kind's (e.g. the demo's).

    Only the person category's annotations are people (see person_category); the others, and the people of
    an image listed twice with different files or with a width or height of 0, are marked `excluded`.
    """
    path = Path(path)
    data = load_json(path)
    problems: dict[str, str] = {}
    notes: list[str] = []
    categories: list[CocoCategory] = []
    if isinstance(data, dict):
        what = "a COCO keypoint annotation file {images: [...], annotations: [{image_id, bbox, keypoints}]}"
        try:
            parsed = CocoAnnotations.model_validate(data)
        except ValidationError as err:
            raise validation_error(path, err, what) from None
        people, where, kind = parsed.annotations, "annotations", "gt"
        table = image_table(parsed.images)
        problems, notes = image_problems(parsed.images)
        categories = parsed.categories
    elif isinstance(data, list):
        what = "a COCO results file [{image_id, keypoints, score}, ...]"
        try:
            people = _RESULTS.validate_python(data)
        except ValidationError as err:
            raise validation_error(path, err, what) from None
        where, kind = "", "detections"
        table = images if images is not None else (images_in_folder(image_dir) if image_dir else {})
    else:
        raise DataError(f"{path}: expected a COCO annotation file (an object) or a results file (a list), "
                        f"got a JSON {type(data).__name__}")
    person, note = person_category(path, categories, category_id)
    notes += [note] if note else []
    joints = _joint_array(path, people, format, where)
    if kind == "gt":
        joints[..., 2] = joints[..., 2] > 0
    else:
        joints[..., 2] = np.clip(joints[..., 2], 0.0, 1.0)
    ids = [str(p.image_id) for p in people]
    missing = [i for i, key in enumerate(ids) if key not in table]
    if kind == "gt" and missing:
        raise DataError(f"{path}: annotations[{missing[0]}].image_id {ids[missing[0]]} is not among the file's "
                        "images (every annotation needs an images entry with its file_name)")
    nan = float("nan")
    info = [table.get(key, (key, nan, nan)) for key in ids]
    role = role or kind
    excluded = ["category" if p.category_id is not None and str(p.category_id) != person
                else problems.get(key, "") for p, key in zip(people, ids)]
    return make_people(
        str(path), format, role,
        imgname=[i[0] for i in info], entry=[f"{where}[{i}]" for i in range(len(people))],
        keypoints=FORMATS[format].to_spin49(as_float32(joints), "dataset" if role == "gt" else "openpose"),
        bbox=[p.bbox if p.bbox is not None else (nan,) * 4 for p in people],
        score=[nan if p.score is None else p.score for p in people],
        crowd=[p.iscrowd != 0 for p in people], image_size=[i[1:] for i in info],
        excluded=excluded, category=person, notes=tuple(notes),
    )
