"""`spin-ray data import`: a researcher's own keypoints (COCO, OpenPose, Halpe, COCO-WholeBody), or the bundled
detector's people in a folder of photos or a video, as a SPIN-format `.npz`."""

from __future__ import annotations

import argparse
from pathlib import Path

from spin_ray.cli.arg_types import non_negative_float, non_negative_int, path_with_suffix, positive_float, positive_int

PROGRESS_MIN = 200  # OpenPose files; fewer read in a blink


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` subcommand group (`data import`)."""
    group = subparsers.add_parser("data", help="bring your own images and keypoints (data import)",
                                  description="Datasets from keypoints you bring.")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    parser = actions.add_parser(
        "import", help="keypoints (COCO, OpenPose, Halpe, WholeBody), or photos / a video through the detector, to "
                       "a SPIN-format .npz",
        description="Read COCO-format keypoints (an annotations.json: ground truth, into SPIN's 24 dataset joints; "
                    "a detector's results file: detections, into the 25 OpenPose joints), a folder of OpenPose "
                    "JSON files (BODY_25 or COCO-18), or Halpe-26 / COCO-WholeBody-133; box every person by SPIN's "
                    "rule (center = box centre, scale = --box-factor x longer side / 200), leave out crowds, "
                    "low scores, people with few joints, tiny and truncated people (each counted), and write a "
                    "SPIN-format .npz that `spin-ray fit` and training read. --format detect: SOURCE is a folder of "
                    "photos (searched recursively; imgname is relative to it) or a video (every --every K-th frame "
                    "written as JPEG under --images, default the .npz's folder, in VIDEO_frames/); the bundled "
                    "detector (`make detect`) finds every person, their keypoints fill the 25 OpenPose joints, and "
                    "what it found is kept in SOURCE.detections.json beside the .npz, so a rerun (or a run after a "
                    "stop) detects only new or changed images.",
    )
    parser.add_argument("source", type=Path, help="COCO-format JSON file, OpenPose's --write_json folder, or (--format "
                                                  "detect) a folder of photos or a video")
    parser.add_argument("--format", choices=("coco", "openpose", "halpe", "wholebody", "detect"), required=True,
                        help="the source's keypoint format; detect: no keypoints, the bundled detector finds them")
    parser.add_argument("--every", type=positive_int, default=1, metavar="K",
                        help="--format detect on a video: every K-th frame (default 1)")
    parser.add_argument("--out", type=path_with_suffix(".npz"), required=True, help="the SPIN-format .npz to write")
    parser.add_argument("--images", type=Path, default=None,
                        help="image folder (imgname is relative to it; image sizes are read from file headers "
                             "where the source has none; default: the .npz's folder)")
    parser.add_argument("--gt-and-detections", type=Path, default=None, metavar="DETECTIONS",
                        help="SPIN 3.3: SOURCE is ground truth, DETECTIONS a detector's output (COCO results "
                             "file or OpenPose folder) matched to it per person for the openpose joints")
    parser.add_argument("--detections-format", choices=("coco", "openpose", "halpe", "wholebody"), default=None,
                        help="format of DETECTIONS (default: openpose for a folder, else --format)")
    parser.add_argument("--box", choices=("box", "keypoints"), default="box",
                        help="the tight box: the source's bbox (SPIN's rule; OpenPose has none) or the keypoints")
    parser.add_argument("--box-factor", type=positive_float, default=1.2,
                        help="scale = factor x the tight box's longer side / 200 (default 1.2, SPIN's)")
    parser.add_argument("--min-joints", type=non_negative_int, default=6,
                        help="leave out people with fewer visible joints (default 6; SPIN's COCO used all 12 limbs)")
    parser.add_argument("--min-box-side", type=non_negative_float, default=32.0,
                        help="leave out people whose tight box's longer side is below this many pixels (default 32)")
    parser.add_argument("--min-inside", type=non_negative_float, default=0.5,
                        help="leave out people with less than this fraction of their box inside the image, where its "
                             "size is known (default 0.5)")
    parser.add_argument("--min-score", type=non_negative_float, default=0.0,
                        help="leave out detections whose person score is below this (default 0: keep all)")
    parser.add_argument("--match-tolerance", type=positive_float, default=0.1,
                        help="--gt-and-detections: largest mean limb distance / person size of a match (default 0.1)")
    parser.add_argument("--keypoint-margin", type=non_negative_float, default=0.1,
                        help="keypoints further outside their image than this fraction of its longer side are set "
                             "to not visible, where the image size is known (default 0.1)")
    parser.add_argument("--category-id", default=None, metavar="ID",
                        help="COCO: the category whose annotations are people (default: the category named "
                             "'person'; COCO's id 1 in a file that names none); the others are left out and counted")
    parser.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from tqdm import tqdm

    from spin_ray.cli.outputs import writable_output
    from spin_ray.data.importers.coco_json import image_table_of
    from spin_ray.data.importers.sources import read_source
    from spin_ray.data.importers.to_spin import ImportOptions, check_image_dir, import_people
    from spin_ray.errors import ConfigError

    try:
        options = ImportOptions(box=args.box, box_factor=args.box_factor, min_joints=args.min_joints,
                                min_box_side=args.min_box_side, min_inside=args.min_inside,
                                min_score=args.min_score, match_tolerance=args.match_tolerance,
                                keypoint_margin=args.keypoint_margin)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    # Before any reading: a large import must not end in "cannot write".
    writable_output(args.out, "--out")
    check_image_dir(args.images)
    if args.format == "detect":
        return _import_detected(args, options)
    if args.every != 1:
        raise ConfigError("--every is for --format detect on a video")

    def read(source: Path, fmt: str, images=None):
        files = sum(1 for _ in source.rglob("*.json")) if fmt == "openpose" and source.is_dir() else 0
        with tqdm(total=files, desc=f"reading {source.name}", unit="file", disable=files < PROGRESS_MIN) as bar:
            return read_source(source, fmt, image_dir=args.images, images=images, progress=bar.update,
                               category_id=args.category_id)

    people = read(args.source, args.format)
    detections = None
    if args.gt_and_detections is not None:
        fmt = args.detections_format or ("openpose" if args.gt_and_detections.is_dir() else args.format)
        detections = read(args.gt_and_detections, fmt, image_table_of(args.source) if args.format != "openpose" else None)
    _, report = import_people(people, options, args.out, args.images, detections)
    if args.images is None:
        report.notes.append(f"no --images: the image files were not checked (fit and train look for them in "
                            f"{args.out.parent}, the .npz's folder)")
    print(f"{people.source}: {len(people)} people ({people.role}, {people.format})"
          + (f"; {len(detections)} detections from {detections.source}" if detections is not None else ""))
    for line in report.lines():
        print(line)
    return 0


def _import_detected(args: argparse.Namespace, options) -> int:
    from tqdm import tqdm

    from spin_ray.data.importers.detect_source import detect_people_in
    from spin_ray.data.importers.to_spin import import_people
    from spin_ray.errors import ConfigError

    if args.gt_and_detections is not None:
        raise ConfigError("--gt-and-detections needs ground truth as SOURCE; --format detect has none")
    video = args.source.is_file()
    if not video and args.images is not None and args.images.resolve() != args.source.resolve():
        raise ConfigError(f"--images {args.images}: with --format detect on a folder the images are that folder "
                          f"({args.source}); leave --images out")
    cache = args.out.parent / f"{args.source.name}.detections.json"
    with tqdm(desc=f"detecting people in {args.source.name}", unit="image", disable=None) as bar:
        def total(n: int) -> None:
            bar.total = n or None
            bar.refresh()

        found = detect_people_in(args.source, cache, frames_dir=args.images or args.out.parent, every=args.every,
                                 progress=bar.update, total=total)
    _, report = import_people(found.people, options, args.out, found.image_root)
    if found.video_summary:
        print(found.video_summary)
    print(f"{args.source}: {found.images} {'frames' if video else 'images'} ({found.detected} through the detector, "
          f"{found.cached} from the cache {cache}), {len(found.people)} people found"
          + (f"; {len(found.unreadable)} unreadable: {', '.join(found.unreadable[:5])}"
             + (", ..." if len(found.unreadable) > 5 else "") if found.unreadable else ""))
    for note in found.notes:
        print(f"note: {note}")
    for line in report.lines():
        print(line)
    print(f"next: spin-ray fit {args.out} --image-root {found.image_root}")
    return 0
