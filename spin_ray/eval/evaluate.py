"""Evaluation as in SPIN: a regressor's joint, mesh and segmentation scores on a SPIN-format evaluation set.

Joints (eval/joint_sets.py): SPIN's J17, of which the first 14 (J14) give MPJPE and PA-MPJPE, centred
on the midpoint of the hips, and all 17 give 3DHP's PCK and AUC, centred on the pelvis joint, without
and with Procrustes alignment. For SMPL the joints are regressed from the mesh with the H36M
regressor; for the embedded open model they are its own keypoints of the same names (its H36M
regressor is a rest-pose fit that lands far off at bent knees: docs/CONFORMANCE.md, "Evaluation").
Ground truth (eval/ground_truth.py) comes from a row's SMPL pose and shape when it has them, through
its gender's model when configured (3DPW's protocol), else from its 3D joints `S`. PVE compares
vertices after the same hip centring, on rows with ground-truth SMPL. H36M's protocols 1 and 2 are
properties of the evaluation file given (all cameras, or the frontal one): the code path is one.
Segmentation (eval/part_render.py), when asked for and the dataset names masks (`maskname`,
`partname`), draws the predicted meshes' parts into the original image and counts pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spin_ray.body.body_model import BodyModel
from spin_ray.config import CameraConfig, DataConfig
from spin_ray.data.dataset import SpinImageDataset
from spin_ray.data.row_checks import BadSamples
from spin_ray.data.spin_format import load_spin_npz
from spin_ray.errors import InputError
from spin_ray.eval.ground_truth import EvalBodies, ground_truth
from spin_ray.eval.joint_sets import J14_PELVIS, J17_PELVIS, NUM_J14, eval_joints
from spin_ray.eval.metrics import auc, mpjpe, pa_mpjpe, pck, pelvis_centred, procrustes_aligned, pve
from spin_ray.eval.part_render import PartLabelRenderer, mask_files, segment_batch
from spin_ray.eval.result import EvalResult
from spin_ray.eval.segmentation import FB_CLASSES, PART_CLASSES
from spin_ray.geometry import rot6d_to_matrix
from spin_ray.model.hmr import HMR, HMROutput

__all__ = ["EvalBodies", "EvalResult", "evaluate", "evaluation_dataset", "ground_truth", "mean_params_predictor",
           "model_predictor"]

Predictor = Callable[[torch.Tensor], HMROutput]
_JOINT_KEYS = ("mpjpe", "pa_mpjpe", "pve", "pck", "auc", "pa_pck", "pa_auc")


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


def joint_scores(pred: torch.Tensor, pred_vertices: torch.Tensor, gt: torch.Tensor,
                 gt_vertices: torch.Tensor | None, has_smpl: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample MPJPE, PA-MPJPE, PVE (mm) and PCK, AUC without and with alignment of J17 joints (B,17,3)."""
    pred14 = pelvis_centred(pred[:, :NUM_J14], J14_PELVIS)
    gt14 = pelvis_centred(gt[:, :NUM_J14], J14_PELVIS)
    pred17, gt17 = pelvis_centred(pred, J17_PELVIS), pelvis_centred(gt, J17_PELVIS)
    aligned17 = procrustes_aligned(pred17, gt17)
    scores = {"mpjpe": mpjpe(pred14, gt14), "pa_mpjpe": pa_mpjpe(pred14, gt14), "pck": pck(pred17, gt17),
              "auc": auc(pred17, gt17), "pa_pck": pck(aligned17, gt17), "pa_auc": auc(aligned17, gt17)}
    vertex_error = torch.full((len(pred),), float("nan"), device=pred.device)
    if gt_vertices is not None:
        pred_pelvis = pred[:, list(J14_PELVIS)].mean(1, keepdim=True)
        gt_pelvis = gt[:, list(J14_PELVIS)].mean(1, keepdim=True)
        vertex_error = torch.where(has_smpl, pve(pred_vertices - pred_pelvis, gt_vertices - gt_pelvis), vertex_error)
    scores["pve"] = vertex_error
    return scores


@torch.no_grad()
def evaluate(
    predict: Predictor, body: BodyModel | EvalBodies, dataset: SpinImageDataset, batch_size: int = 32,
    limit: int | None = None, name: str = "model", segmentation: bool = False, camera: CameraConfig | None = None,
) -> EvalResult:
    """Per-sample joint scores and dataset-wide segmentation counts of predict over dataset (unaugmented crops).

    `body` is the neutral model, or EvalBodies with the gender models of the ground truth. With
    `segmentation`, rows are also scored on the dataset's masks (predicted camera: `camera`, the
    crop camera of training). Bad rows (only possible under data.bad_samples: skip) are left out and
    counted in `skipped`: rows with bad annotations are never loaded, and an item the dataset took
    from a later row because its own image was unusable is dropped, so no row is evaluated twice.
    """
    if dataset.train:
        raise InputError("evaluate needs an unaugmented dataset: build it with SpinImageDataset(..., train=False)")
    bodies = body if isinstance(body, EvalBodies) else EvalBodies(body)
    camera = camera or CameraConfig()
    masks = mask_files(dataset.spin) if segmentation else {}
    count = len(dataset) if limit is None else min(limit, len(dataset))
    selected = np.flatnonzero(dataset.usable[:count])
    skipped = count - len(selected)
    rows: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {key: [] for key in _JOINT_KEYS}
    fb = np.zeros((FB_CLASSES + 1, FB_CLASSES), np.int64)
    parts = np.zeros((PART_CLASSES + 1, PART_CLASSES), np.int64)
    stand_in = 0
    device = next(bodies.neutral.buffers()).device
    renderer = PartLabelRenderer(bodies.neutral.faces, bodies.neutral.smpl.lbs_weights.cpu().numpy()) if masks else None
    loader = DataLoader(torch.utils.data.Subset(dataset, selected.tolist()), batch_size=batch_size, shuffle=False)
    try:
        for batch in loader:
            own = batch["skipped"] == 0
            skipped += int((~own).sum())
            if not bool(own.any()):
                continue
            batch = {k: v[own].to(device) if isinstance(v, torch.Tensor) else [x for x, o in zip(v, own) if o]
                     for k, v in batch.items()}
            pred = predict(batch["img"])
            joints, vertices = eval_joints(bodies.neutral, pred.rotmat, pred.betas, bodies.use_h36m)
            truth = ground_truth(bodies, batch)
            stand_in += int(truth.neutral_stand_in.sum())
            batch_scores = joint_scores(joints, vertices, truth.joints, truth.vertices, batch["has_smpl"].bool())
            usable = truth.usable.cpu().numpy()
            for key, value in batch_scores.items():
                scores[key].append(np.where(usable, value.float().cpu().numpy(), np.nan))
            index = batch["index"].cpu().numpy()
            rows.append(index)
            if renderer is not None:
                batch_fb, batch_parts = segment_batch(renderer, vertices, pred.camera, batch["center"], batch["scale"],
                                                      dataset.spin.image_root, masks, index, camera)
                fb, parts = fb + batch_fb, parts + batch_parts
    finally:
        if renderer is not None:
            renderer.close()
    if skipped == count:
        raise InputError(f"dataset '{dataset.spin.name}': all {count} rows in the evaluated range are bad samples "
                         "(see the warnings): nothing to evaluate")
    per_row = {key: np.concatenate(values) if values else np.zeros(0) for key, values in scores.items()}
    if not masks and not np.isfinite(per_row["mpjpe"]).any():
        raise InputError(f"dataset '{dataset.spin.name}' has no sample with 3D ground truth (S or SMPL pose/shape) "
                         "in the evaluated range, and no segmentation masks: nothing to evaluate")
    evaluated = int(sum(len(r) for r in rows))
    return EvalResult(
        name, dataset.spin.name, np.concatenate(rows) if rows else np.zeros(0, np.int64), **per_row,
        fb_confusion=fb if "maskname" in masks else None, parts_confusion=parts if "partname" in masks else None,
        segmented=evaluated if masks else 0, skipped=skipped, neutral_stand_in=stand_in,
        joints="h36m" if bodies.use_h36m else "keypoints",
    )


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
