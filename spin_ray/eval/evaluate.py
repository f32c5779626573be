"""Evaluation as in SPIN: a regressor's MPJPE, PA-MPJPE and PVE on a SPIN-format evaluation set.

Joints: the 14 LSP joints of both prediction and ground truth. For SMPL they are regressed from the
mesh vertices with the H36M regressor (H36M-17 -> LSP-14), as in SPIN. For the embedded open model
they are the model's own LSP keypoints (the first 14 dataset joints of its 49-keypoint set): its
H36M regressor is a rest-pose fit that lands up to ~25 cm off at bent knees (measured on sampler
poses), while its keypoint regressor is what the synthetic data's `S` was made with. Ground truth comes from the sample's SMPL pose and
shape through the same body model when it has them (as SPIN does for 3DPW), else from its 3D
joints `S` (the first 14 of the 24 dataset joints are LSP-14, as for H36M). Both sets are
pelvis-centred on the midpoint of the hips. PVE compares vertices after the same centring and
exists only for samples with ground-truth SMPL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spin_ray.body.body_model import BodyModel, axis_angle_pose_to_rotmats
from spin_ray.body.joints import H36M17_TO_LSP14, SPIN49_TO_LSP14
from spin_ray.body.model_file import embedded_model_path
from spin_ray.config import DataConfig
from spin_ray.data.dataset import SpinImageDataset
from spin_ray.data.row_checks import BadSamples
from spin_ray.data.spin_format import load_spin_npz
from spin_ray.errors import InputError
from spin_ray.eval.metrics import LSP14_PELVIS, mpjpe, pa_mpjpe, pelvis_centred, pve
from spin_ray.model.hmr import HMR, HMROutput
from spin_ray.geometry import rot6d_to_matrix

Predictor = Callable[[torch.Tensor], HMROutput]


@dataclass(frozen=True)
class EvalResult:
    """Per-sample errors in mm of one predictor on one dataset; NaN where a metric has no ground truth."""

    name: str
    dataset: str
    index: np.ndarray  # (N,) dataset rows evaluated
    mpjpe: np.ndarray  # (N,)
    pa_mpjpe: np.ndarray  # (N,)
    pve: np.ndarray  # (N,) NaN without ground-truth SMPL
    skipped: int = 0  # rows of the evaluated range left out as bad samples (data.bad_samples: skip)

    def summary(self) -> dict[str, float | int | str]:
        """Means in mm and sample counts, for tables and JSON."""
        def mean(values: np.ndarray) -> float:
            finite = values[np.isfinite(values)]
            return float(finite.mean()) if finite.size else float("nan")
        return {"name": self.name, "dataset": self.dataset, "samples": int(len(self.index)),
                "mpjpe_mm": mean(self.mpjpe), "pa_mpjpe_mm": mean(self.pa_mpjpe), "pve_mm": mean(self.pve),
                "pve_samples": int(np.isfinite(self.pve).sum()), "skipped": self.skipped}


def uses_h36m_regressor(body: BodyModel) -> bool:
    """Whether evaluation joints come from the H36M regressor (SMPL) or the model's own keypoints (open model)."""
    return body.has_h36m_regressor and Path(body.source).resolve() != embedded_model_path().resolve()


def lsp14_joints(body: BodyModel, rotmat: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LSP-14 evaluation joints (B,14,3) and the vertices (B,V,3) of SMPL parameters."""
    out = body(rotmat, betas)
    if uses_h36m_regressor(body):
        return body.h36m_joints(out.vertices)[:, list(H36M17_TO_LSP14)], out.vertices
    return out.keypoints[:, list(SPIN49_TO_LSP14)], out.vertices


def ground_truth(body: BodyModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Ground-truth LSP-14 joints (B,14,3), vertices (B,V,3) or None, and the mask of samples with any truth."""
    has_smpl = batch["has_smpl"].bool()
    has_3d = batch["has_3d"].bool()
    joints = batch["S"][:, :14, :3].clone()
    vertices = None
    if bool(has_smpl.any()):
        rotmat = axis_angle_pose_to_rotmats(batch["pose"].float())
        smpl_joints, vertices = lsp14_joints(body, rotmat, batch["betas"][:, :body.num_betas].float())
        joints = torch.where(has_smpl[:, None, None], smpl_joints, joints)
    return joints, vertices, has_smpl | has_3d


def mean_params_predictor(model: HMR) -> Predictor:
    """The baseline: every image gets the regressor's initial mean parameters."""
    def predict(images: torch.Tensor) -> HMROutput:
        n = images.shape[0]
        pose = model.init_pose.expand(n, -1)
        rotmat = rot6d_to_matrix(pose.reshape(n, 24, 6))
        return HMROutput(rotmat, pose, model.init_betas.expand(n, -1), model.init_camera.expand(n, -1))
    return predict


def model_predictor(model: HMR) -> Predictor:
    """The network in eval mode (no dropout)."""
    def predict(images: torch.Tensor) -> HMROutput:
        model.eval()
        return model(images)
    return predict


@torch.no_grad()
def evaluate(
    predict: Predictor, body: BodyModel, dataset: SpinImageDataset, batch_size: int = 32,
    limit: int | None = None, name: str = "model",
) -> EvalResult:
    """Per-sample MPJPE, PA-MPJPE and PVE (mm) of predict over dataset (unaugmented crops).

    Bad rows (only possible under data.bad_samples: skip) are left out and counted in `skipped`: rows
    with bad annotations are never loaded, and an item the dataset took from a later row because its
    own image was unusable (`skipped` > 0) is dropped, so no row is evaluated twice.
    """
    if dataset.train:
        raise InputError("evaluate needs an unaugmented dataset: build it with SpinImageDataset(..., train=False)")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    selected = np.flatnonzero(dataset.usable[:count])
    skipped = count - len(selected)
    rows, errors, aligned, vertex_errors = [], [], [], []
    device = next(body.buffers()).device
    loader = DataLoader(torch.utils.data.Subset(dataset, selected.tolist()), batch_size=batch_size, shuffle=False)
    for batch in loader:
        own = batch["skipped"] == 0
        skipped += int((~own).sum())
        if not bool(own.any()):
            continue
        batch = {k: v[own] if isinstance(v, torch.Tensor) else [x for x, o in zip(v, own) if o]
                 for k, v in batch.items()}
        pred = predict(batch["img"].to(device))
        joints, vertices = lsp14_joints(body, pred.rotmat, pred.betas)
        pred_joints = pelvis_centred(joints, LSP14_PELVIS)
        gt_joints, gt_vertices, usable = ground_truth(body, {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                                              for k, v in batch.items()})
        gt_centred = pelvis_centred(gt_joints, LSP14_PELVIS)
        keep = usable.cpu().numpy()
        rows.append(batch["index"].numpy()[keep])
        errors.append(mpjpe(pred_joints, gt_centred).cpu().numpy()[keep])
        aligned.append(pa_mpjpe(pred_joints, gt_centred).cpu().numpy()[keep])
        vertex_error = torch.full((len(keep),), float("nan"))
        if gt_vertices is not None:
            pred_pelvis = joints[:, list(LSP14_PELVIS)].mean(1, keepdim=True)
            gt_pelvis = gt_joints[:, list(LSP14_PELVIS)].mean(1, keepdim=True)
            per_sample = pve(vertices - pred_pelvis, gt_vertices - gt_pelvis).cpu()
            vertex_error = torch.where(batch["has_smpl"].bool(), per_sample, vertex_error)
        vertex_errors.append(vertex_error.numpy()[keep])
    if skipped == count:
        raise InputError(f"dataset '{dataset.spin.name}': all {count} rows in the evaluated range are bad samples "
                         "(see the warnings): nothing to evaluate")
    if not rows or sum(len(r) for r in rows) == 0:
        raise InputError(f"dataset '{dataset.spin.name}' has no sample with 3D ground truth (S or SMPL pose/shape) "
                         "in the evaluated range: nothing to evaluate")
    return EvalResult(name, dataset.spin.name, np.concatenate(rows), np.concatenate(errors),
                      np.concatenate(aligned), np.concatenate(vertex_errors), skipped)


def evaluation_dataset(
    npz: str | Path, image_root: str | Path | None, img_res: int, name: str | None = None,
    bad_samples: BadSamples | None = None,
) -> SpinImageDataset:
    """An unaugmented SpinImageDataset of a SPIN-format .npz (image root defaults to the npz's folder).

    `bad_samples` is data.bad_samples (None: its default): "raise" stops at the first bad row; "skip"
    leaves bad rows out of `evaluate`, which counts them (never replaced by another row).
    """
    npz = Path(npz)
    root = Path(image_root) if image_root is not None else npz.parent
    return SpinImageDataset(load_spin_npz(npz, root, name=name),
                            DataConfig(img_res=img_res, bad_samples=bad_samples or DataConfig().bad_samples),
                            train=False)


def format_table(results: list[EvalResult]) -> str:
    """A plain-text table of the results' means."""
    header = f"{'predictor':<12} {'dataset':<16} {'samples':>7} {'MPJPE':>8} {'PA-MPJPE':>9} {'PVE':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        s = r.summary()
        lines.append(f"{s['name']:<12} {s['dataset']:<16} {s['samples']:>7} {s['mpjpe_mm']:>8.1f} "
                     f"{s['pa_mpjpe_mm']:>9.1f} {s['pve_mm']:>8.1f}")
    lines.append("(mm; LSP-14 joints, pelvis-centred; PA = after Procrustes alignment)")
    for r in results[:1]:  # every predictor sees the same rows
        if r.skipped:
            lines.append(f"{r.skipped} row(s) of {r.dataset} skipped as bad samples (data.bad_samples: skip; "
                         "see the warnings)")
    return "\n".join(lines)
