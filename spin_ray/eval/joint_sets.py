"""SPIN's evaluation joints: J17 (MPI-INF-3DHP) whose first 14 are J14 (3DPW, H36M), from a mesh or a dataset's S.

J17 is SPIN's `constants.J24_TO_J17` / `H36M_TO_J17`: the 14 LSP joints with the H36M head in place
of the LSP head top (H36M and 3DHP annotate no head top), then pelvis, spine and jaw. For SMPL the
joints are regressed from the vertices with the H36M regressor; for the embedded open model they are
the same named keypoints of its own 49-keypoint set (docs/CONFORMANCE.md, "Evaluation", says why).
"""

from __future__ import annotations

import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.body.joints import DATASET24_NAMES, H36M17_NAMES, H36M17_TO_LSP14, NUM_OPENPOSE

J17_NAMES: tuple[str, ...] = DATASET24_NAMES[:13] + ("Head (H36M)", "Pelvis (MPII)", "Spine (H36M)", "Jaw (H36M)")
DATASET24_TO_J17: tuple[int, ...] = tuple(DATASET24_NAMES.index(name) for name in J17_NAMES)
H36M17_TO_J17: tuple[int, ...] = H36M17_TO_LSP14 + tuple(
    H36M17_NAMES.index(name) for name in ("pelvis", "spine", "neck_nose"))
SPIN49_TO_J17: tuple[int, ...] = tuple(NUM_OPENPOSE + i for i in DATASET24_TO_J17)
NUM_J14 = 14
J14_PELVIS: tuple[int, ...] = (2, 3)  # SPIN centres J14 on the midpoint of the hips
J17_PELVIS: tuple[int, ...] = (J17_NAMES.index("Pelvis (MPII)"),)  # 3DHP's root joint


def eval_joints(body: BodyModel, rotmat: torch.Tensor, betas: torch.Tensor,
                use_h36m: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """J17 evaluation joints (B,17,3) and vertices (B,V,3): H36M regressor (use_h36m) or the model's keypoints."""
    out = body(rotmat, betas)
    if use_h36m:
        return body.h36m_joints(out.vertices)[:, list(H36M17_TO_J17)], out.vertices
    return out.keypoints[:, list(SPIN49_TO_J17)], out.vertices


def dataset_joints(S: torch.Tensor) -> torch.Tensor:
    """J17 joints (B,17,3) of a dataset's 24 3D joints S (B,24,4)."""
    return S[:, list(DATASET24_TO_J17), :3]
