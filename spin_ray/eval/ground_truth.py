"""Ground truth of an evaluation batch: SMPL meshes from the gender-specific models (3DPW's protocol) or joints S.

SPIN builds 3DPW's ground-truth vertices and joints with the male or female SMPL model of each row
(the dataset's `gender`) while the network's prediction uses the neutral model. `EvalBodies` holds
the three; rows whose gender model is not configured, or whose gender is unknown, use the neutral
model, and the result counts them so the report can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.model_file import embedded_model_path, load_body_model_arrays
from spin_ray.config import BodyConfig
from spin_ray.data.spin_format import GENDER_CODES
from spin_ray.eval.joint_sets import dataset_joints, eval_joints

MALE, FEMALE = GENDER_CODES["m"], GENDER_CODES["f"]


@dataclass(frozen=True)
class EvalBodies:
    """The neutral model (predictions) and, when configured, the male and female models (ground truth)."""

    neutral: BodyModel
    male: BodyModel | None = None
    female: BodyModel | None = None

    @property
    def use_h36m(self) -> bool:
        """Whether evaluation joints come from the H36M regressor (SMPL) or the model's keypoints (open model)."""
        body = self.neutral
        return body.has_h36m_regressor and Path(body.source).resolve() != embedded_model_path().resolve()

    def for_gender(self, code: int) -> BodyModel | None:
        """The model of a gender code (0 male, 1 female), or None when it is not configured or unknown."""
        return {MALE: self.male, FEMALE: self.female}.get(code)

    @classmethod
    def from_config(cls, cfg: BodyConfig, neutral: BodyModel | None = None) -> EvalBodies:
        """The neutral model of cfg (or the given one) and the gender models cfg names (same regressor files)."""
        def load(path: Path | None) -> BodyModel | None:
            if path is None:
                return None
            return BodyModel(load_body_model_arrays(path, cfg.joint_regressor_extra, cfg.joint_regressor_h36m,
                                                    cfg.num_betas))
        return cls(neutral or BodyModel.from_config(cfg), load(cfg.model_path_male), load(cfg.model_path_female))


class GroundTruth(NamedTuple):
    """J17 joints (B,17,3), vertices (B,V,3) or None, rows with 3D truth, m/f rows built with the neutral model."""

    joints: torch.Tensor
    vertices: torch.Tensor | None
    usable: torch.Tensor
    neutral_stand_in: torch.Tensor


def ground_truth(bodies: EvalBodies, batch: dict) -> GroundTruth:
    """Truth of a batch: from SMPL pose and shape where has_smpl (per-row gender model), else from S."""
    has_smpl = batch["has_smpl"].bool()
    joints = dataset_joints(batch["S"]).clone()
    gender = batch.get("gender", torch.full_like(has_smpl, -1, dtype=torch.long)).long()
    stand_in = torch.zeros_like(has_smpl)
    vertices = None
    if bool(has_smpl.any()):
        rows = has_smpl.nonzero().flatten()
        rotmat = axis_angle_pose_to_rotmats(batch["pose"][rows].float())
        betas = batch["betas"][rows][:, :bodies.neutral.num_betas].float()
        model_of_row = [bodies.for_gender(int(g)) for g in gender[rows]]
        for model in {id(m): m for m in model_of_row}.values():
            group = torch.tensor([m is model for m in model_of_row], device=rows.device)
            smpl_joints, smpl_vertices = eval_joints(model or bodies.neutral, rotmat[group], betas[group],
                                                     bodies.use_h36m)
            if vertices is None:
                vertices = smpl_vertices.new_zeros(len(has_smpl), *smpl_vertices.shape[1:])
            joints[rows[group]] = smpl_joints.to(joints.dtype)
            vertices[rows[group]] = smpl_vertices
        stand_in[rows] = torch.tensor([m is None for m in model_of_row], device=rows.device) & \
            ((gender[rows] == MALE) | (gender[rows] == FEMALE))
    return GroundTruth(joints, vertices, has_smpl | batch["has_3d"].bool(), stand_in)
