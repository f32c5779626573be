"""The demo end to end: read and check every input, regress, refine, draw, then write all files at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig
from spin_ray.demo.inputs import (
    box_from_keypoints,
    box_from_xywh,
    check_person,
    read_image,
    read_keypoints,
    select_person,
)
from spin_ray.demo.predict import (
    camera_frame_vertices,
    fitting_keypoints,
    from_smplify,
    image_focal_length,
    network_input,
    refine,
    regress,
)
from spin_ray.demo.views import encode_png, obj_text, render_views, stamp
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
    person: int | None = None
    recipe: str = "multistart"  # fitting.recipe of --refine: the network's guess on a photo is often a poor start


@dataclass
class DemoResult:
    """What the demo did and wrote."""

    written: list[Path]
    person: int
    center: np.ndarray  # (2,) box center in image pixels
    scale: float  # box side / 200
    img_res: int  # network input resolution (from the checkpoint's config)
    checkpoint: Path | None
    vertices: np.ndarray  # (V, 3) camera frame
    image_mask: np.ndarray  # (H, W) bool: where the mesh covers the image
    smplify_error: float | None = None  # ranking error after SMPLify (None without --refine)
    initial_error: float | None = None  # ranking error of the regressor's estimate
    pixel_error: float | None = None  # mean keypoint distance after SMPLify, fitting-crop pixels
    rejected: bool = False  # the fit's ranking error is not below fitting.valid_error_threshold
    recipe: str | None = None  # the fitting recipe of --refine
    notes: list[str] = field(default_factory=list)


def load_model(checkpoint: Path | None) -> tuple[HMR, RunConfig, BodyModel, bool]:
    """The checkpoint's regressor, config and body model; without one the shipped pretrained regressor (resnet18 @
    96 px on the open model), else the open model's defaults; and whether the network's weights were trained."""
    from spin_ray.train.checkpoint import initial_network, load_regressor

    if checkpoint is not None:
        return (*load_regressor(checkpoint), True)
    if EMBEDDED_PRETRAINED.is_file():
        cfg = RunConfig.model_validate({"data": {"img_res": 96}, "network": {
            "backbone": "resnet18", "init_checkpoint": str(EMBEDDED_PRETRAINED)}})
        body = BodyModel.from_config(cfg.body)
        return initial_network(cfg, body).eval(), cfg, body, True
    cfg = RunConfig()
    return HMR.from_config(cfg.network, cfg.body.num_betas).eval(), cfg, BodyModel.from_config(cfg.body), False


def output_paths(request: DemoRequest) -> dict[str, Path]:
    """Where each output goes: named after the image, in the output folder."""
    stem = request.image.stem
    return {kind: request.out / f"{stem}{suffix}" for kind, suffix in (
        ("crop", "_overlay_crop.png"), ("image", "_overlay.png"), ("side", "_side.png"), ("mesh", ".obj"))}


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


def run_demo(request: DemoRequest) -> DemoResult:
    """Crop, regress, optionally refine, render and write; nothing is written unless every step succeeded."""
    image = read_image(request.image)
    source = request.keypoints if request.keypoints is not None else f"{request.image} (detected)"
    people = read_keypoints(request.keypoints, request.image) if request.keypoints is not None else \
        detect_people(image, request.image)
    person = select_person(people, request.person, source)
    openpose = people[person]
    if request.bbox is not None:
        center, scale = box_from_xywh(request.bbox)
        where = f"--bbox {' '.join(f'{v:g}' for v in request.bbox)}"
    else:
        center, scale = box_from_keypoints(openpose, source)
        where = f"{source}: person {person}"
    check_person(image, request.image, openpose, center, scale, where)

    model, cfg, body, trained = load_model(request.checkpoint)
    notes = []
    if request.checkpoint is None:
        notes.append("no --checkpoint: " + (
            "the shipped pretrained regressor (trained on the open model's synthetic people, not on photos)"
            if trained else "the mesh starts from the open model's mean pose and shape, not from the image")
            + ("" if request.refine else " (add --refine to fit it to the keypoints)"))
    predictor = model_predictor(model) if trained else mean_params_predictor(model)
    camera = cfg.camera
    estimate = regress(predictor, network_input(image, center, scale, cfg.data.img_res), camera)
    initial_error = smplify_error = pixel_error = None
    rejected = False
    if request.refine:
        fitting = cfg.fitting.model_copy(update={"recipe": request.recipe})
        fit = refine(body, estimate, fitting_keypoints(openpose, center, scale, camera), fitting, camera)
        initial_error = float(fit.initial_error[0])
        if bool(fit.failed[0]):
            notes.append("SMPLify failed (a non-finite loss); showing the regressor's estimate instead")
        else:
            estimate = from_smplify(fit)
            smplify_error, pixel_error = float(fit.error[0]), float(fit.pixel_error[0])
            threshold = fitting.valid_error_threshold
            rejected = not smplify_error < threshold
            if rejected:
                notes.append(f"the fit is REJECTED: its ranking error {smplify_error:.1f} is not below "
                             f"fitting.valid_error_threshold {threshold:g}, so training would not use it; the "
                             "pictures say so (check the keypoints and the box)")

    vertices = camera_frame_vertices(body, estimate)
    views = render_views(image, vertices, body.faces, center, scale, camera.crop_size, camera.focal_length,
                         image_focal_length(scale, camera))
    if rejected:
        warning = f"fit rejected: error {smplify_error:.3g} >= {fitting.valid_error_threshold:g}"
        views = replace(views, crop_overlay=stamp(views.crop_overlay, warning),
                        image_overlay=stamp(views.image_overlay, warning), side_view=stamp(views.side_view, warning))
    paths = output_paths(request)
    source = (f"checkpoint {request.checkpoint}" if request.checkpoint else
              "the shipped pretrained regressor" if trained else "the open model's mean parameters")
    refined = f", refined with SMPLify ({request.recipe})" if smplify_error is not None else ""
    comment = (f"spin-ray demo of {request.image.name}, person {person}, {source}{refined}"
               f"{' (fit REJECTED: error above the validity threshold)' if rejected else ''}\n"
               "camera frame: x right, y down, z forward (depth), metres; faces 1-based")
    written = write_all({
        paths["crop"]: encode_png(views.crop_overlay, "crop overlay"),
        paths["image"]: encode_png(views.image_overlay, "image overlay"),
        paths["side"]: encode_png(views.side_view, "side view"),
        paths["mesh"]: obj_text(vertices, body.faces, comment).encode(),
    })
    return DemoResult(written, person, center, scale, cfg.data.img_res, request.checkpoint, vertices,
                      views.image_mask, smplify_error, initial_error, pixel_error, rejected,
                      request.recipe if request.refine else None, notes)
