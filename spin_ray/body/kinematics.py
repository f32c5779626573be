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


class KinematicPlan:
    """The tree in level order, for a forward kinematics of one matmul per level (9 for SMPL).

    Joints are renumbered so that each level is a contiguous slice and a joint's parent sits in the
    slice before; the index tensors are cached per device so a call builds none.
    """

    def __init__(self, parents: list[int]) -> None:
        self.parents = list(parents)
        self.levels = kinematic_levels(self.parents)
        self.order = [j for level in self.levels for j in level]
        position = {joint: i for i, joint in enumerate(self.order)}
        self.inverse = [position[j] for j in range(len(self.parents))]
        self.slices: list[tuple[int, int]] = []
        self.parent_positions: list[list[int]] = []  # within the previous level's slice
        start = 0
        for d, level in enumerate(self.levels):
            self.slices.append((start, len(level)))
            if d:
                previous = self.slices[d - 1][0]
                self.parent_positions.append([position[self.parents[j]] - previous for j in level])
            start += len(level)
        self._tensors: dict[torch.device, dict[str, object]] = {}

    def tensors(self, device: torch.device) -> dict[str, object]:
        """Index tensors on `device`: order, inverse, parents (of every joint), and per level the parent positions."""
        if device not in self._tensors:
            long = {"dtype": torch.long, "device": device}
            self._tensors[device] = {
                "order": torch.tensor(self.order, **long),
                "inverse": torch.tensor(self.inverse, **long),
                "parents": torch.tensor([max(p, 0) for p in self.parents], **long),
                # (J, 1) zero at the root: its offset is its own position.
                "non_root": torch.tensor([[float(p >= 0)] for p in self.parents], device=device),
                "levels": [None if positions == list(range(len(positions))) else torch.tensor(positions, **long)
                           for positions in self.parent_positions],
            }
        return self._tensors[device]


def small_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for tiny matrices (4x4 transforms): eager, torch.matmul; inside torch.compile, a broadcast product and
    sum, which inductor fuses with its neighbours where an extern bmm call per product costs more than the product."""
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def _homogeneous(rotmats: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
    """4x4 transforms (...,4,4) from rotations (...,3,3) and translations (...,3)."""
    top = torch.cat([rotmats, translations.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def forward_kinematics(
    rotmats: torch.Tensor, rest_joints: torch.Tensor, parents: list[int],
    levels: list[list[int]] | KinematicPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints (B,J,3) and skinning transforms (B,J,4,4) from local rotations (B,J,3,3).

    `levels` is a `KinematicPlan(parents)` (or the older `kinematic_levels(parents)`); pass it
    precomputed to save the work per call.
    """
    plan = levels if isinstance(levels, KinematicPlan) else KinematicPlan(parents)
    index = plan.tensors(rotmats.device)
    # The root's offset is its own position; every other joint's is relative to its parent.
    offsets = rest_joints - rest_joints.index_select(1, index["parents"]) * index["non_root"]
    local = _homogeneous(rotmats, offsets).index_select(1, index["order"])
    # Level by level: a level's parents are all in the level before, so one gather and one matmul each.
    start, count = plan.slices[0]
    world = [local.narrow(1, start, count)]
    for (start, count), positions in zip(plan.slices[1:], index["levels"]):
        parent_world = world[-1] if positions is None else world[-1].index_select(1, positions)
        world.append(small_matmul(parent_world, local.narrow(1, start, count)))
    transforms = torch.cat(world, dim=1).index_select(1, index["inverse"])
    rotations = transforms[..., :3, :3]
    posed_joints = transforms[..., :3, 3]
    # Skinning transform: world transform applied after moving the rest joint to the origin.
    translation = posed_joints - small_matmul(rotations, rest_joints.unsqueeze(-1)).squeeze(-1)
    return posed_joints, _homogeneous(rotations, translation)


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
        "coupled": (coupling != 0).any(1),  # (K, J): some vertex ties keypoint k to joint j
        "pair_template": torch.einsum("ksj,sc->kjc", coupling, v_template),
        "pair_shapedirs": torch.einsum("ksj,sct->kjct", coupling, shapedirs),
    }
    if posedirs is not None:
        # Stored as (P, K*J*3) so the pose feature multiplies it directly, like smplx's posedirs.
        basis["pair_posedirs"] = torch.einsum("ksj,scp->kjcp", coupling, posedirs).flatten(0, 2).T
    return basis


def pair_matrix(basis: dict[str, torch.Tensor]) -> torch.Tensor:
    """`keypoint_joint_basis` as one matrix (J*4, (1+Bt)*K), so regressed points are one matmul of the transforms.

    A point is sum_j A_j [p_kj; w_kj] with p_kj = template + shapedirs @ betas: row (j, c) of the
    matrix holds column c of that homogeneous point, for the template and each beta. Most (k, j)
    pairs are zero (80 of 480 couple on the open model), but one dense matmul beats gathering pairs.
    """
    weight, template, shapedirs = basis["pair_weight"], basis["pair_template"], basis["pair_shapedirs"]
    k, j, _, bt = shapedirs.shape
    point = torch.zeros(j, 4, 1 + bt, k, dtype=weight.dtype)
    point[:, :3, 0] = template.permute(1, 2, 0)
    point[:, 3, 0] = weight.T
    point[:, :3, 1:] = shapedirs.permute(1, 2, 3, 0)
    return point.reshape(j * 4, (1 + bt) * k)


def regressed_skinned_points(
    rotmats: torch.Tensor,
    skinning: torch.Tensor,
    betas: torch.Tensor,
    basis: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Regressed posed points (B,K,3) from `keypoint_joint_basis` or `sparse_pair_basis`; equal to skinning then
    regressing."""
    if "pair_matrix" in basis:
        return _matrix_regressed_points(rotmats, skinning, betas, basis)
    batch = betas.shape[0]
    points = basis["pair_template"] + torch.einsum("bt,kjct->bkjc", betas, basis["pair_shapedirs"])
    if basis.get("pair_posedirs") is not None:
        points = points + (pose_feature(rotmats) @ basis["pair_posedirs"]).view(batch, *points.shape[1:])
    rotated = torch.einsum("bjrc,bkjc->bkr", skinning[..., :3, :3], points)
    return rotated + torch.einsum("kj,bjr->bkr", basis["pair_weight"], skinning[..., :3, 3])


def coupled_pairs(matrix: torch.Tensor, keypoints: int) -> dict[str, torch.Tensor]:
    """The (keypoint, joint) pairs of a `pair_matrix` that are not all zero: pair_keypoint (P,), pair_joint (P,) and
    pair_points (P, 4, 1+Bt), each pair's homogeneous point basis, for `regressed_skinned_points` when compiled."""
    point = matrix.view(matrix.shape[0] // 4, 4, -1, keypoints)  # (J, 4, 1+Bt, K), pair_matrix's layout
    joint, keypoint = (point != 0).any(dim=2).any(dim=1).nonzero(as_tuple=True)
    return {"pair_keypoint": keypoint, "pair_joint": joint, "pair_points": point.permute(0, 3, 1, 2)[joint, keypoint]}


def _sparse_pair_points(skinning: torch.Tensor, betas: torch.Tensor, basis: dict[str, torch.Tensor],
                        keypoints: int) -> torch.Tensor:
    """Regressed points (B, K, 3) summed over the coupled pairs only (~1/6 of the dense pair matrix's products)."""
    coefficients = torch.nn.functional.pad(betas, (1, 0), value=1.0)  # (B, 1+Bt)
    homogeneous = torch.einsum("pcb,nb->npc", basis["pair_points"], coefficients)  # (B, P, 4)
    transforms = skinning.index_select(1, basis["pair_joint"])[..., :3, :]  # (B, P, 3, 4)
    products = (transforms * homogeneous[:, :, None, :]).sum(-1)  # (B, P, 3)
    return products.new_zeros(betas.shape[0], keypoints, 3).index_add(1, basis["pair_keypoint"], products)


def _matrix_regressed_points(
    rotmats: torch.Tensor, skinning: torch.Tensor, betas: torch.Tensor, basis: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The `pair_matrix` form: [A_j rows] @ matrix, then the template and beta columns mixed by [1, betas]."""
    batch, joints = skinning.shape[:2]
    keypoints = basis["pair_matrix"].shape[1] // (1 + betas.shape[1])
    if torch.compiler.is_compiling() and basis.get("pair_points") is not None:
        # Compiled: only the coupled pairs (80 of 480 on the open model); the dense matmul, mostly zeros, costs
        # more than the rest of the compiled fit. Eager keeps the dense form (its results to the bit).
        points = _sparse_pair_points(skinning, betas, basis, keypoints)
    else:
        rows = skinning[..., :3, :].transpose(1, 2).reshape(batch * 3, joints * 4)
        per_beta = (rows @ basis["pair_matrix"]).view(batch, 3, 1 + betas.shape[1], -1)
        coefficients = torch.nn.functional.pad(betas, (1, 0), value=1.0)
        points = small_matmul(coefficients[:, None, None, :], per_beta).squeeze(2).transpose(1, 2)  # (B, K, 3)
    if basis.get("pair_posedirs") is not None:
        # Pose correctives move p per (k, j) pair with the pose: the dense pair sum, as smplx's posedirs.
        offsets = (pose_feature(rotmats) @ basis["pair_posedirs"]).view(batch, points.shape[1], joints, 3)
        points = points + torch.einsum("bjrc,bkjc->bkr", skinning[..., :3, :3], offsets)
    return points
