"""`spin-ray demo`: regress (and optionally refine) every person's body in a photo; write pictures and meshes."""

from __future__ import annotations

import argparse
from pathlib import Path

from spin_ray.cli.arg_types import finite_float, non_negative_int
from spin_ray.config import RECIPES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="mesh of every person in an image (one overlay; per person a crop overlay, side view, .obj)",
        description="For every person (of the keypoint file, or found by the detector; --person picks one): crop the "
                    "person's box (from --bbox or SPIN's rule on the confident OpenPose keypoints), "
                    "regress SMPL with the checkpoint's network (without one: the shipped pretrained regressor, "
                    "trained on the open model's synthetic people, not on photos), "
                    "optionally refine with SMPLify on the keypoints (all people as one batch), and write every mesh "
                    "over the image in one picture (one colour per person, nearer over farther), and per person "
                    "the mesh over its crop, a side view on white and the mesh as .obj (IMAGE_N.obj) in the camera "
                    "frame of its box.",
    )
    parser.add_argument("image", type=Path, help="the photo (any format OpenCV reads)")
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
                             "(default: every person; with --bbox, the most confident)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from spin_ray.demo.run import DemoRequest, run_demo

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
