"""HMR (SPIN §3.2): a backbone's pooled features, then iterative error feedback on [24x6D pose, betas, camera]."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from spin_ray.body.joints import NUM_SMPL_JOINTS
from spin_ray.config import NetworkConfig
from spin_ray.errors import InputError, ModelError
from spin_ray.geometry import rot6d_to_matrix
from spin_ray.model.backbone import build_backbone
from spin_ray.model.mean_params import MeanParams, mean_params_from_path
from spin_ray.model.norm import freeze_batchnorm

POSE_6D_SIZE = 6 * NUM_SMPL_JOINTS
HIDDEN_SIZE = 1024
# SPIN initialises the three output layers with xavier gain 0.01, so the first prediction is the mean.
OUTPUT_INIT_GAIN = 0.01


class HMROutput(NamedTuple):
    """Regressor predictions for a batch."""

    rotmat: torch.Tensor  # (B, 24, 3, 3)
    pose_6d: torch.Tensor  # (B, 144)
    betas: torch.Tensor  # (B, num_betas)
    camera: torch.Tensor  # (B, 3) weak perspective [s, tx, ty]


class HMR(torch.nn.Module):
    """Backbone + iterative error feedback regressor, starting every image at the mean parameters."""

    def __init__(
        self,
        mean_params: MeanParams,
        backbone: str = "resnet18",
        pretrained_path: Path | None = None,
        ief_iterations: int = 3,
        dropout: float = 0.5,
    ) -> None:
        """Build the backbone (random or local weights) and the IEF head around the given mean."""
        super().__init__()
        if ief_iterations < 1:
            raise ModelError(f"ief_iterations must be at least 1, got {ief_iterations}")
        if mean_params.pose_6d.shape != (POSE_6D_SIZE,) or mean_params.camera.shape != (3,):
            raise ModelError(f"mean parameters have pose {tuple(mean_params.pose_6d.shape)} and camera "
                             f"{tuple(mean_params.camera.shape)}, expected ({POSE_6D_SIZE},) and (3,)")
        self.backbone, feature_size = build_backbone(backbone, pretrained_path)
        self.num_betas = int(mean_params.betas.shape[0])
        self.ief_iterations = ief_iterations
        param_size = POSE_6D_SIZE + self.num_betas + 3
        # As in SPIN's regressor there is no nonlinearity between the two hidden layers.
        self.fc1 = torch.nn.Linear(feature_size + param_size, HIDDEN_SIZE)
        self.drop1 = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)
        self.drop2 = torch.nn.Dropout(dropout)
        self.dec_pose = torch.nn.Linear(HIDDEN_SIZE, POSE_6D_SIZE)
        self.dec_betas = torch.nn.Linear(HIDDEN_SIZE, self.num_betas)
        self.dec_camera = torch.nn.Linear(HIDDEN_SIZE, 3)
        for layer in (self.dec_pose, self.dec_betas, self.dec_camera):
            torch.nn.init.xavier_uniform_(layer.weight, gain=OUTPUT_INIT_GAIN)
        self.register_buffer("init_pose", mean_params.pose_6d.detach().float().clone())
        self.register_buffer("init_betas", mean_params.betas.detach().float().clone())
        self.register_buffer("init_camera", mean_params.camera.detach().float().clone())

    @classmethod
    def from_config(cls, cfg: NetworkConfig, num_betas: int = 10) -> HMR:
        """The regressor a run config asks for."""
        model = cls(
            mean_params_from_path(cfg.mean_params_path, num_betas),
            backbone=cfg.backbone,
            pretrained_path=cfg.pretrained_path,
            ief_iterations=cfg.ief_iterations,
            dropout=cfg.dropout,
        )
        return freeze_batchnorm(model) if cfg.freeze_batchnorm else model

    def forward(self, images: torch.Tensor) -> HMROutput:
        """Regress SMPL parameters and camera from normalised images (B, 3, H, W)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"HMR expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        features = self.backbone(images)
        batch = features.shape[0]
        pose = self.init_pose.expand(batch, -1)
        betas = self.init_betas.expand(batch, -1)
        camera = self.init_camera.expand(batch, -1)
        for _ in range(self.ief_iterations):
            hidden = torch.cat([features, pose, betas, camera], dim=1)
            hidden = self.drop2(self.fc2(self.drop1(self.fc1(hidden))))
            pose = pose + self.dec_pose(hidden)
            betas = betas + self.dec_betas(hidden)
            camera = camera + self.dec_camera(hidden)
        rotmat = rot6d_to_matrix(pose.reshape(batch, NUM_SMPL_JOINTS, 6))
        return HMROutput(rotmat=rotmat, pose_6d=pose, betas=betas, camera=camera)

