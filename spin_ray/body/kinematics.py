"""Pure batched SMPL kinematics: shaped rest joints, forward kinematics, skinning of a vertex subset.

Conventions follow smplx's `lbs` so results match it: the pose feature is (R - I) of joints 1..23
flattened row-major, rest joints are J_regressor applied to the shaped (not pose-corrected) mesh,
and the skinning transforms map rest positions to posed positions.
"""

from __future__ import annotations

import torch


def joint_shape_basis(
    j_regressor: torch.Tensor, v_template: torch.Tensor, shapedirs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """J_template (J,3) and J_shapedirs (J,3,B): rest joints are linear in betas, so no mesh is needed."""
    j_template = j_regressor @ v_template
    j_shapedirs = torch.einsum("jv,vcb->jcb", j_regressor, shapedirs)
    return j_template, j_shapedirs


def shaped_rest_joints(betas: torch.Tensor, j_template: torch.Tensor, j_shapedirs: torch.Tensor) -> torch.Tensor:
    """Rest joints (B,J,3) of shapes betas (B,Bt)."""
    return j_template + torch.einsum("bk,jck->bjc", betas, j_shapedirs)


def kinematic_levels(parents: list[int]) -> list[list[int]]:
    """Joints grouped by depth in the tree (root first), so each level is one batched matmul."""
    depth = [0] * len(parents)
    for joint in range(1, len(parents)):
        depth[joint] = depth[parents[joint]] + 1
    return [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]


def _homogeneous(rotmats: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """4x4 transforms (...,4,4) from rotations (...,3,3) and translations (...,3)."""
    top = torch.cat([rotmats, translations.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def forward_kinematics(
    rotmats: torch.Tensor, rest_joints: torch.Tensor, parents: list[int], levels: list[list[int]] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints (B,J,3) and skinning transforms (B,J,4,4) from local rotations (B,J,3,3).

    `levels` is `kinematic_levels(parents)`; pass it precomputed to save the work per call.
    """
    levels = kinematic_levels(parents) if levels is None else levels
    # The root's offset is its own position; every other joint's is relative to its parent.
    offsets = torch.cat([rest_joints[:, :1], rest_joints[:, 1:] - rest_joints[:, list(parents[1:])]], dim=1)
    local = _homogeneous(rotmats, offsets)
    # Chain level by level (9 levels for SMPL instead of 23 joints in sequence).
    world: list[torch.Tensor | None] = [None] * len(parents)
    world_root = local[:, levels[0]]
    for j, joint in enumerate(levels[0]):
        world[joint] = world_root[:, j]
    for level in levels[1:]:
        parent_world = torch.stack([world[parents[j]] for j in level], dim=1)
        level_world = parent_world @ local[:, level]
        for j, joint in enumerate(level):
            world[joint] = level_world[:, j]
    transforms = torch.stack(world, dim=1)
    posed_joints = transforms[..., :3, 3]
    # Skinning transform: world transform applied after moving the rest joint to the origin.
    rest_rotated = (transforms[..., :3, :3] @ rest_joints.unsqueeze(-1)).squeeze(-1)
    translation = posed_joints - rest_rotated
    skinning = torch.cat([transforms[..., :3, :3], translation.unsqueeze(-1)], dim=-1)
    skinning = torch.cat([skinning, transforms[..., 3:, :]], dim=-2)
    return posed_joints, skinning


def pose_feature(rotmats: torch.Tensor) -> torch.Tensor:
    """smplx's pose-corrective feature (B, 9*(J-1)): R - I of every joint but the root, flattened."""
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    return (rotmats[:, 1:] - eye).flatten(1)


def skin_vertices(
    rotmats: torch.Tensor,
    skinning: torch.Tensor,
    betas: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor | None,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Posed positions (B,S,3) of a vertex subset: shape and pose blendshapes, then LBS.

    v_template (S,3), shapedirs (S,3,Bt), posedirs (P, S*3) in smplx's layout or None when all
    zero, weights (S,J).
    """
    batch = betas.shape[0]
    posed = v_template + torch.einsum("bk,sck->bsc", betas, shapedirs)
    if posedirs is not None:
        posed = posed + (pose_feature(rotmats) @ posedirs).view(batch, -1, 3)
    per_vertex = torch.einsum("sj,bjrc->bsrc", weights, skinning[..., :3, :])
    return (per_vertex[..., :3] @ posed.unsqueeze(-1)).squeeze(-1) + per_vertex[..., 3]


def keypoint_joint_basis(
    regressor: torch.Tensor,
    weights: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Per (keypoint, joint) sums that make regressed skinned points cost O(K*J), not O(vertices).

    A regressed point is sum_s R_ks sum_j W_sj (A_j v_s) = sum_j A_j applied to
    (sum_s R_ks W_sj v_s) with weight sum_s R_ks W_sj; v_s is linear in betas and the pose feature,
    so each (k, j) sum is too and can be precomputed. Inputs over the support vertices:
    regressor (K,S), weights (S,J), v_template (S,3), shapedirs (S,3,Bt), posedirs (S,3,P) or None
    when all zero.
    """
    coupling = regressor[:, :, None] * weights[None]  # (K, S, J)
    basis = {
        "pair_weight": coupling.sum(1),  # (K, J)
        "pair_template": torch.einsum("ksj,sc->kjc", coupling, v_template),
        "pair_shapedirs": torch.einsum("ksj,sct->kjct", coupling, shapedirs),
    }
    if posedirs is not None:
        # Stored as (P, K*J*3) so the pose feature multiplies it directly, like smplx's posedirs.
        basis["pair_posedirs"] = torch.einsum("ksj,scp->kjcp", coupling, posedirs).flatten(0, 2).T
    return basis


def regressed_skinned_points(
    rotmats: torch.Tensor,
    skinning: torch.Tensor,
    betas: torch.Tensor,
    basis: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Regressed posed points (B,K,3) from `keypoint_joint_basis`; equal to skinning then regressing."""
    batch = betas.shape[0]
    points = basis["pair_template"] + torch.einsum("bt,kjct->bkjc", betas, basis["pair_shapedirs"])
    if basis.get("pair_posedirs") is not None:
        points = points + (pose_feature(rotmats) @ basis["pair_posedirs"]).view(batch, *points.shape[1:])
    rotated = torch.einsum("bjrc,bkjc->bkr", skinning[..., :3, :3], points)
    return rotated + torch.einsum("kj,bjr->bkr", basis["pair_weight"], skinning[..., :3, 3])
