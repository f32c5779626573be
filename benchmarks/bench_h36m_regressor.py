"""How far the open model's J_regressor_h36m falls from its own keypoints on posed bodies (docs/CONFORMANCE.md).

Poses from the pose sampler, betas ~ N(0, 1), one seed; per LSP joint the distance between the H36M
regressor's joint (from the mesh) and the open model's keypoint of the same name. Prints the table
and writes it to RESULTS.md.

    python benchmarks/bench_h36m_regressor.py [--poses 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_section  # noqa: E402

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats  # noqa: E402
from spin_ray.body.joints import H36M17_TO_LSP14, LSP14_NAMES, NUM_OPENPOSE  # noqa: E402
from spin_ray.body.pose_sampler import sample_body_poses  # noqa: E402

SHOWN = ("Right Knee", "Left Knee", "Right Elbow", "Left Elbow", "Right Ankle", "Left Ankle", "Right Wrist",
         "Left Wrist", "Right Hip", "Left Hip", "Neck (LSP)")


def distances(body: BodyModel, poses: torch.Tensor, betas: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """(N, 14) mm between the H36M regressor's LSP-14 joints and the model's own LSP-14 keypoints."""
    out = []
    with torch.no_grad():
        for start in range(0, len(poses), batch):
            result = body(axis_angle_pose_to_rotmats(poses[start:start + batch]), betas[start:start + batch])
            regressed = body.h36m_joints(result.vertices)[:, list(H36M17_TO_LSP14)]
            own = result.keypoints[:, NUM_OPENPOSE:NUM_OPENPOSE + 14]
            out.append(1000.0 * (regressed - own).norm(dim=-1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    body = BodyModel.embedded()
    generator = torch.Generator().manual_seed(0)
    poses = sample_body_poses(args.poses, generator)
    betas = torch.randn(args.poses, body.num_betas, generator=generator)
    posed = distances(body, poses, betas)
    rest = distances(body, torch.zeros_like(poses[:1]), torch.zeros_like(betas[:1]))
    rows = ["| joint | at rest mm | posed mean mm | posed 95th pct mm | posed max mm |", "| --- | --- | --- | --- | --- |"]
    for name in SHOWN:
        j = LSP14_NAMES.index(name)
        d = posed[:, j]
        rows.append(f"| {name} | {rest[0, j]:.0f} | {d.mean():.0f} | {d.quantile(0.95):.0f} | {d.max():.0f} |")
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        write_section("## Open model: J_regressor_h36m vs its own keypoints (benchmarks/bench_h36m_regressor.py)",
                      f"{machine_line()}\nCommand: `python benchmarks/bench_h36m_regressor.py --poses {args.poses}` "
                      f"(pose-sampler poses, betas ~ N(0, 1), seed 0).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
