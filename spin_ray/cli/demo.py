"""`spin-ray demo`: regress (and optionally refine) every person's body in a photo; write pictures and meshes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spin_ray.cli.arg_types import finite_float, non_negative_int, positive_int
from spin_ray.config import RECIPES
from spin_ray.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="mesh of every person in an image (one overlay; per person a crop overlay, side view, .obj) "
                     "or a video (an overlay video and every person's parameters per frame)",
        description="For every person (of the keypoint file, or found by the detector; --person picks one): crop the "
                    "person's box (from --bbox or SPIN's rule on the confident OpenPose keypoints), "
                    "regress SMPL with the checkpoint's network (without one: the shipped pretrained regressor, "
                    "trained on the open model's synthetic people, not on photos), "
                    "optionally refine with SMPLify on the keypoints (all people as one batch), and write every mesh "
                    "over the image in one picture (one colour per person, nearer over farther), and per person "
                    "the mesh over its crop, a side view on white and the mesh as .obj (IMAGE_N.obj) in the camera "
                    "frame of its box. A video (by its suffix, or a file OpenCV reads as a video, not as an image): "
                    "the detector's people in every (--every K-th) frame, each followed across frames by box "
                    "overlap (one track id a person), their keypoints smoothed over time (One-Euro filter), every "
                    "person of a frame through the network (and --refine) as one batch; writes VIDEO_overlay.mp4 "
                    "(.avi where this OpenCV cannot write MP4) and VIDEO_tracks.npz (per person and frame: track, "
                    "keypoints raw and smoothed, box, SMPL pose, betas, camera translation).",
    )
    parser.add_argument("image", type=Path, help="the photo (any format OpenCV reads) or a video")
    parser.add_argument("--keypoints", type=Path, default=None,
                        help="default: the bundled detector finds the people (install it with `make detect`); else "
                             "the image's keypoints: OpenPose --write_json output (BODY_25 or COCO-18), or a COCO-format "
                             "annotation or results file (COCO-17, Halpe-26, COCO-WholeBody-133; its people of this "
                             "image are used)")
    parser.add_argument("--bbox", type=finite_float, nargs=4, metavar=("X", "Y", "W", "H"), default=None,
                        help="person box in pixels: top-left corner, width, height (default: from the keypoints)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint written by `spin-ray train` (default: the shipped pretrained regressor)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a run config (YAML) whose body model (e.g. SMPL's files), camera and fitting settings "
                             "the demo uses (default: the checkpoint's saved config, or the embedded open model)")
    parser.add_argument("--refine", action="store_true", help="refine the estimate with SMPLify on the keypoints")
    parser.add_argument("--recipe", choices=RECIPES, default="multistart",
                        help="fitting recipe of --refine (default multistart: the network's guess and the pose prior's "
                             "component means screened, the best refined as staged; it recovers from a poor guess. "
                             "staged: from the guess alone; spin: the paper's SMPLify)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    parser.add_argument("--person", type=non_negative_int, default=None,
                        help="mesh only this person: an index into the people of the keypoint file or the detector "
                             "(default: every person; with --bbox, the most confident); of a video: this track id")
    parser.add_argument("--every", type=positive_int, default=1, metavar="K",
                        help="video: mesh every K-th frame (default 1: every frame); the overlay video has those")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from spin_ray.data.video import is_video
    from spin_ray.demo.run import DemoRequest, run_demo

    if is_video(args.image):
        return _video(args)
    if args.every != 1:
        raise InputError(f"--every {args.every} is for a video; {args.image} is a photo")

    result = run_demo(DemoRequest(
        image=args.image, keypoints=args.keypoints, out=args.out, bbox=tuple(args.bbox) if args.bbox else None,
        checkpoint=args.checkpoint, refine=args.refine, person=args.person, config=args.config,
        recipe=args.recipe,
    ))
    for note in result.notes:
        print(f"note: {note}")
    print(f"body model {result.body_model}, network input {result.img_res} px")
    for person in result.people:
        cx, cy = person.center
        print(f"person {person.person}: box center ({cx:.1f}, {cy:.1f}), side {200 * person.scale:.1f} px")
        if person.smplify_error is not None:
            verdict = "REJECTED (above fitting.valid_error_threshold)" if person.rejected else "valid"
            print(f"person {person.person}: SMPLify ({result.recipe}): ranking error {person.initial_error:.2f} -> "
                  f"{person.smplify_error:.2f}, mean keypoint distance {person.pixel_error:.2f} px in the fitting "
                  f"crop: {verdict}")
    for path in result.written:
        print(f"wrote {path}")
    return 0


def _video(args: argparse.Namespace) -> int:
    from spin_ray.demo.video_run import VideoRequest, run_video

    for flag, value in (("--keypoints", args.keypoints), ("--bbox", args.bbox)):
        if value is not None:
            raise InputError(f"{flag} is for a photo; on a video {args.image} the detector finds the people in "
                             "every frame (leave out " + flag + ")")
    result = run_video(VideoRequest(
        video=args.image, out=args.out, every=args.every, checkpoint=args.checkpoint, refine=args.refine,
        recipe=args.recipe, config=args.config, track=args.person,
    ))
    for note in result.notes:
        print(f"note: {note}")
    print(f"body model {result.body_model}")
    print(f"{result.summary}; {result.frames_written} frames written, {result.frames_per_second:.2f} frames/s")
    people = ", ".join(f"track {t}: {n} frame{'s' if n != 1 else ''}" for t, n in sorted(result.tracks.items()))
    print(f"{len(result.tracks)} {'person' if len(result.tracks) == 1 else 'people'} followed ({people})")
    if result.refined:
        print(f"SMPLify ({args.recipe}): {len(result.refined)} fits, median ranking error "
              f"{float(np.median(result.refined)):.2f}")
    for path in result.written:
        print(f"wrote {path}")
    return 0
