"""The demo end to end: read and check every input, regress and refine every person as one batch, draw, then write
all files at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig, load_config
from spin_ray.demo.inputs import (
    box_from_keypoints,
    box_from_xywh,
    check_person,
    read_image,
    read_keypoints,
    select_person,
)
from spin_ray.demo.predict import camera_frame_vertices, estimate_people, image_focal_length
from spin_ray.demo.views import (
    PlacedMesh,
    encode_png,
    obj_text,
    person_color,
    render_image_overlay,
    render_person_views,
    stamp,
)
from spin_ray.errors import InputError
from spin_ray.eval.evaluate import mean_params_predictor, model_predictor
from spin_ray.model.hmr import HMR
from spin_ray.model.pretrained import EMBEDDED_PRETRAINED


@dataclass(frozen=True)
class DemoRequest:
    """What `spin-ray demo` was asked to do."""

    image: Path
    keypoints: Path | None  # None: the bundled detector finds the people (data/detect.py)
    out: Path
    bbox: tuple[float, float, float, float] | None = None
    checkpoint: Path | None = None
    refine: bool = False
    person: int | None = None  # None: every person found
    config: Path | None = None  # a run config whose body model, camera and fitting settings the demo uses
    recipe: str = "multistart"  # fitting.recipe of --refine: the network's guess on a photo is often a poor start


@dataclass
class PersonResult:
    """What the demo found for one person."""

    person: int  # index into the people found (the keypoint file's, or the detector's)
    center: np.ndarray  # (2,) box center in image pixels
    scale: float  # box side / 200
    vertices: np.ndarray  # (V, 3) in the crop camera of this person's box
    smplify_error: float | None = None  # ranking error after SMPLify (None without --refine)
    initial_error: float | None = None  # ranking error of the regressor's estimate
    pixel_error: float | None = None  # mean keypoint distance after SMPLify, fitting-crop pixels
    rejected: bool = False  # the fit's ranking error is not below fitting.valid_error_threshold


@dataclass
class DemoResult:
    """What the demo did and wrote."""

    written: list[Path]
    people: list[PersonResult]
    img_res: int  # network input resolution (from the checkpoint's config)
    checkpoint: Path | None
    body_model: str  # the body model's identity
    image_mask: np.ndarray  # (H, W) bool: where any mesh covers the image
    recipe: str | None = None  # the fitting recipe of --refine
    notes: list[str] = field(default_factory=list)


def load_model(checkpoint: Path | None, config: RunConfig | None = None) -> tuple[HMR, RunConfig, BodyModel, bool]:
    """The checkpoint's regressor, config and body model; without one the shipped pretrained regressor (resnet18 @
    96 px on the open model), else the open model's defaults; and whether the network's weights were trained.

    With `config`, its body model, camera and fitting settings replace the checkpoint's (or the defaults); the
    network (backbone, input size) stays the checkpoint's, refused in one line if it was trained on another body.
    """
    from spin_ray.train.checkpoint import checkpoint_config, checkpoint_network, initial_network, load_checkpoint

    def with_config(cfg: RunConfig) -> RunConfig:
        if config is None:
            return cfg
        return cfg.model_copy(update={"body": config.body, "camera": config.camera, "fitting": config.fitting})

    if checkpoint is not None:
        payload = load_checkpoint(checkpoint)
        cfg = with_config(checkpoint_config(payload, checkpoint))
        body = BodyModel.from_config(cfg.body)
        model = checkpoint_network(payload, cfg, body, str(checkpoint),
                                   "its saved config" if config is None else "--config",
                                   "restore the body model file it was trained with, or use the checkpoint a run "
                                   "wrote" if config is None else "give the config of the run that trained it")
        return model.eval(), cfg, body, True
    if EMBEDDED_PRETRAINED.is_file():
        cfg = with_config(RunConfig.model_validate({"data": {"img_res": 96}, "network": {
            "backbone": "resnet18", "init_checkpoint": str(EMBEDDED_PRETRAINED)}}))
        body = BodyModel.from_config(cfg.body)
        return initial_network(cfg, body).eval(), cfg, body, True
    cfg = with_config(RunConfig())
    return HMR.from_config(cfg.network, cfg.body.num_betas).eval(), cfg, BodyModel.from_config(cfg.body), False


def output_paths(request: DemoRequest, people: list[int]) -> dict[str, Path]:
    """Where each output goes, named after the image in the output folder: one overlay of everybody, and a crop
    overlay, side view and .obj per person, numbered by the person's index."""
    stem = request.image.stem
    paths = {"image": request.out / f"{stem}_overlay.png"}
    for person in people:
        for kind, suffix in (("crop", "_overlay_crop.png"), ("side", "_side.png"), ("mesh", ".obj")):
            paths[f"{kind}{person}"] = request.out / f"{stem}_{person}{suffix}"
    return paths


def write_all(files: dict[Path, bytes]) -> list[Path]:
    """Write every file via a temporary name and a rename; on any failure remove what this call wrote."""
    written: list[Path] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
    except OSError as err:
        for path in written:
            path.unlink(missing_ok=True)
        raise InputError(f"could not write {err.filename or 'the outputs'} ({err.strerror}); "
                         "choose a writable --out folder") from None
    return written


def detect_people(image: np.ndarray, path: Path) -> list[np.ndarray]:
    """Every person's BODY_25-slot keypoints in the photo, from the bundled detector; nobody is an InputError."""
    from spin_ray.data.detect import PeopleDetector

    with PeopleDetector() as detector:
        people = [p.keypoints for p in detector.detect(image)]
    if not people:
        raise InputError(f"no person found in {path}; nothing written (give the keypoints with --keypoints)")
    return people


def people_to_mesh(
    image: np.ndarray, request: DemoRequest, people: list[np.ndarray], source: str,
) -> tuple[list[tuple[int, np.ndarray, float]], list[str]]:
    """(index, box center, box scale) of each person to mesh, and notes on those left out.

    --person or --bbox name one person (the most confident without --person), whose problems are errors;
    otherwise every person is meshed, one whose keypoints give no usable box is left out with a note, and
    if nobody is left the most confident person's problem is the error.
    """
    chosen = select_person(people, request.person, source)
    single = request.person is not None or request.bbox is not None
    candidates = [chosen] if single else [chosen] + [i for i in range(len(people)) if i != chosen]
    boxes, notes, first_error = [], [], None
    for person in candidates:
        try:
            if request.bbox is not None:
                center, scale = box_from_xywh(request.bbox)
                where = f"--bbox {' '.join(f'{v:g}' for v in request.bbox)}"
            else:
                center, scale = box_from_keypoints(people[person], source)
                where = f"{source}: person {person}"
            check_person(image, request.image, people[person], center, scale, where)
        except InputError as err:
            if single:
                raise
            first_error = first_error or err
            notes.append(f"person {person} left out: {err}")
            continue
        boxes.append((person, center, scale))
    if not boxes:
        raise first_error
    return sorted(boxes, key=lambda box: box[0]), notes


def run_demo(request: DemoRequest) -> DemoResult:
    """Crop, regress, optionally refine, render and write; nothing is written unless every step succeeded."""
    image = read_image(request.image)
    config = load_config(request.config) if request.config is not None else None
    source = request.keypoints if request.keypoints is not None else f"{request.image} (detected)"
    people = read_keypoints(request.keypoints, request.image) if request.keypoints is not None else \
        detect_people(image, request.image)
    boxes, notes = people_to_mesh(image, request, people, source)

    model, cfg, body, trained = load_model(request.checkpoint, config)
    if request.checkpoint is None:
        notes.append("no --checkpoint: " + (
            "the shipped pretrained regressor (trained on the open model's synthetic people, not on photos)"
            if trained else "the mesh starts from the open model's mean pose and shape, not from the image")
            + ("" if request.refine else " (add --refine to fit it to the keypoints)"))
    predictor = model_predictor(model) if trained else mean_params_predictor(model)
    camera = cfg.camera
    # Eager stages: a photo's few people fit in well under the 30-60 s a compile takes.
    fitting = cfg.fitting.model_copy(update={"recipe": request.recipe, "compiled": False})
    people_estimate = estimate_people(predictor, body, image, [(center, scale) for _, center, scale in boxes],
                                      [people[person] for person, _, _ in boxes], cfg.data.img_res, camera,
                                      fitting if request.refine else None)
    estimate = people_estimate.estimate
    results = [PersonResult(person, center, scale, np.empty((0, 3), np.float32)) for person, center, scale in boxes]
    if request.refine:
        threshold = fitting.valid_error_threshold
        for i, result in enumerate(results):
            result.initial_error = float(people_estimate.initial_error[i])
            if people_estimate.failed[i]:
                notes.append(f"person {result.person}: SMPLify failed (a non-finite loss); showing the regressor's "
                             "estimate instead")
                continue
            result.smplify_error = float(people_estimate.error[i])
            result.pixel_error = float(people_estimate.pixel_error[i])
            result.rejected = not result.smplify_error < threshold
            if result.rejected:
                notes.append(f"person {result.person}: the fit is REJECTED: its ranking error "
                             f"{result.smplify_error:.1f} is not below fitting.valid_error_threshold {threshold:g}, "
                             "so training would not use it; the pictures say so (check the keypoints and the box)")

    all_vertices = camera_frame_vertices(body, estimate)
    placed, files = [], {}
    paths = output_paths(request, [result.person for result in results])
    network = (f"checkpoint {request.checkpoint}" if request.checkpoint else
               "the shipped pretrained regressor" if trained else "the open model's mean parameters")
    for rank, result in enumerate(results):
        result.vertices = all_vertices[rank]
        color = person_color(rank)
        views = render_person_views(image, result.vertices, body.faces, result.center, result.scale,
                                    camera.crop_size, camera.focal_length, color)
        crop_overlay, side_view = views.crop_overlay, views.side_view
        if result.rejected:
            warning = f"fit rejected: error {result.smplify_error:.3g} >= {fitting.valid_error_threshold:g}"
            crop_overlay, side_view = stamp(crop_overlay, warning), stamp(side_view, warning)
        placed.append(PlacedMesh(result.vertices, image_focal_length(result.scale, camera), tuple(result.center),
                                 color))
        refined = f", refined with SMPLify ({request.recipe})" if result.smplify_error is not None else ""
        comment = (f"spin-ray demo of {request.image.name}, person {result.person}, {network}{refined}, body model "
                   f"{body.identity}{' (fit REJECTED: error above the validity threshold)' if result.rejected else ''}"
                   "\ncamera frame of this person's box (focal length "
                   f"{image_focal_length(result.scale, camera):.6g} px, principal point at the box center "
                   f"({result.center[0]:.6g}, {result.center[1]:.6g})): x right, y down, z forward (depth), metres; "
                   "faces 1-based")
        files[paths[f"crop{result.person}"]] = encode_png(crop_overlay, "crop overlay")
        files[paths[f"side{result.person}"]] = encode_png(side_view, "side view")
        files[paths[f"mesh{result.person}"]] = obj_text(result.vertices, body.faces, comment).encode()
    image_overlay, image_mask = render_image_overlay(image, placed, body.faces)
    rejected = [result.person for result in results if result.rejected]
    if rejected:
        image_overlay = stamp(image_overlay, f"fit rejected: person {', '.join(map(str, rejected))}")
    files = {paths["image"]: encode_png(image_overlay, "image overlay"), **files}
    written = write_all(files)
    return DemoResult(written, results, cfg.data.img_res, request.checkpoint, body.identity, image_mask,
                      request.recipe if request.refine else None, notes)
