"""Rotations, the crop camera and rigid alignment: pure batched torch functions.

Conventions used throughout spin-ray:
- Rotation matrices act on column vectors: ``x_world = R @ x_local``.
- 6D rotations (Zhou et al. 2019) are the first two columns of the matrix, laid out as the
  ``(..., 3, 2)`` matrix flattened row-major to ``(..., 6)``: that is SPIN's layout, so a 6D vector
  ``x`` has columns ``a1 = x.view(..., 3, 2)[..., :, 0]`` and ``a2 = ...[..., :, 1]``.
- The camera sits at the origin with identity rotation, looks down +z, image x to the right and
  image y down; a point ``P`` in the camera frame lands on the pixel ``f * P_xy / P_z + center``.
"""

from __future__ import annotations

import torch

from spin_ray.errors import InputError

# Below this angle (radians) Rodrigues' coefficients switch to their Taylor series: the closed
# forms lose all precision when theta^2 is near float32's epsilon.
_SMALL_ANGLE = 1e-3
# Smallest weak-perspective scale used to compute depth: s -> 0 means a person infinitely far away.
WEAK_PERSPECTIVE_MIN_SCALE = 1e-4


def _check_last_dims(name: str, tensor: torch.Tensor, dims: tuple[int, ...]) -> None:
    """Raise InputError unless the trailing dimensions of tensor are dims."""
    if tuple(tensor.shape[-len(dims):]) != dims or tensor.dim() < len(dims):
        raise InputError(f"{name} must have shape (..., {', '.join(map(str, dims))}), got {tuple(tensor.shape)}")


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Map 6D rotations (..., 6) to rotation matrices (..., 3, 3) by Gram-Schmidt on the two columns."""
    _check_last_dims("6D rotation", x, (6,))
    cols = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def matrix_to_rot6d(rotation: torch.Tensor) -> torch.Tensor:
    """Map rotation matrices (..., 3, 3) to 6D rotations (..., 6): the first two columns, SPIN's layout."""
    _check_last_dims("rotation matrix", rotation, (3, 3))
    return rotation[..., :, :2].reshape(*rotation.shape[:-2], 6)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3)."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        (zero, -z, y, z, zero, -x, -y, x, zero), dim=-1
    ).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle vectors (..., 3) to rotation matrices (..., 3, 3); exact and differentiable at 0."""
    _check_last_dims("axis-angle", axis_angle, (3,))
    theta2 = (axis_angle * axis_angle).sum(-1)
    small = theta2 < _SMALL_ANGLE**2
    # sqrt of a safe value keeps the unused branch's gradient finite at exactly zero.
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    sin_term = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    cos_term = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta * theta))
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand(k.shape)
    return eye + sin_term[..., None, None] * k + cos_term[..., None, None] * (k @ k)


def matrix_to_axis_angle(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) to axis-angle (..., 3) with angle in [0, pi]; stable near 0 and pi."""
    _check_last_dims("rotation matrix", rotation, (3, 3))
    r = rotation
    # sin(theta) * axis from the antisymmetric part, cos(theta) from the trace.
    sin_axis = 0.5 * torch.stack(
        (r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]), dim=-1
    )
    cos = 0.5 * (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    sin = sin_axis.norm(dim=-1)
    theta = torch.atan2(sin, cos)

    # theta <= pi/2: axis = sin_axis / sin, with theta / sin from its Taylor series near 0.
    small = theta < _SMALL_ANGLE
    safe_sin = torch.where(small, torch.ones_like(sin), sin)
    ratio = torch.where(small, 1.0 + theta * theta / 6.0, theta / safe_sin)
    near_zero_branch = sin_axis * ratio[..., None]

    # theta > pi/2: sin_axis vanishes near pi, so read the axis from the symmetric part,
    # (R + R^T) / 2 - cos I = (1 - cos) n n^T, using its column with the largest diagonal entry.
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    sym = 0.5 * (r + r.transpose(-1, -2)) - cos[..., None, None] * eye
    best = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
    column = torch.take_along_dim(sym, best[..., None, None].expand(*best.shape, 3, 1), dim=-1)[..., 0]
    axis = torch.nn.functional.normalize(column, dim=-1)
    # n and -n give the same symmetric part; the antisymmetric part picks the sign (either is
    # right at exactly pi, where it is zero).
    sign = torch.where((axis * sin_axis).sum(-1) < 0, -1.0, 1.0).to(r.dtype)
    near_pi_branch = axis * (sign * theta)[..., None]

    return torch.where((cos < 0)[..., None], near_pi_branch, near_zero_branch)


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """(...,3) axis-angle to unit quaternions (...,4) [w, x, y, z]."""
    angle = aa.norm(dim=-1, keepdim=True)
    # sin(angle/2)/angle written with sinc, so it is smooth at angle 0.
    return torch.cat([torch.cos(angle / 2), aa * 0.5 * torch.sinc(angle / (2 * torch.pi))], -1)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (...,4) to axis-angle (...,3) with angle in [0, pi]."""
    q = torch.where(q[..., :1] < 0, -q, q)  # same rotation, w >= 0 gives the shortest angle
    w, v = q[..., :1], q[..., 1:]
    sin_half = v.norm(dim=-1, keepdim=True)
    safe = sin_half.clamp_min(1e-12)
    factor = torch.where(sin_half > 1e-7, 2.0 * torch.atan2(sin_half, w) / safe, 2.0 / w.clamp_min(1e-12))
    return v * factor


def z_rotation_quaternion(angle_deg: torch.Tensor) -> torch.Tensor:
    """Quaternions (...,4) of rotations about z by angles in degrees."""
    half = torch.deg2rad(angle_deg) / 2
    zero = torch.zeros_like(half)
    return torch.stack([torch.cos(half), zero, zero, torch.sin(half)], -1)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of quaternions (...,4) [w, x, y, z]."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def pixels_to_normalised(xy, crop_size: float):
    """Crop pixels to SPIN's [-1, 1] keypoint coordinates (2 x / crop - 1); numpy arrays or tensors."""
    return 2.0 * xy / crop_size - 1.0


def normalised_to_pixels(xy, crop_size: float):
    """Inverse of `pixels_to_normalised`."""
    return (xy + 1.0) * (crop_size / 2.0)


def keypoints_to_pixels(keypoints: torch.Tensor, crop_size: float) -> torch.Tensor:
    """Normalised keypoints (..., J, 3) [x, y, conf] to crop pixels; the confidence is kept."""
    return torch.cat([normalised_to_pixels(keypoints[..., :2], crop_size), keypoints[..., 2:]], dim=-1)


def _center(
    batch: int, dtype: torch.dtype, device: torch.device,
    camera_center: torch.Tensor | None, crop_size: float | None,
) -> torch.Tensor:
    """Principal point (B, 2): the given one, or the middle of a square crop."""
    if camera_center is not None:
        return camera_center.to(dtype).expand(batch, 2)
    if crop_size is None:
        raise InputError("give camera_center (B, 2) or crop_size (the principal point is the crop's middle)")
    return torch.full((batch, 2), crop_size / 2.0, dtype=dtype, device=device)


def _focal(focal_length: float | torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Focal length as a (B,) tensor."""
    return torch.as_tensor(focal_length, dtype=dtype, device=device).expand(batch)


def perspective_projection(
    points: torch.Tensor,
    translation: torch.Tensor,
    focal_length: float | torch.Tensor,
    camera_center: torch.Tensor | None = None,
    crop_size: float | None = None,
) -> torch.Tensor:
    """Project points (B, N, 3) translated by (B, 3) to pixels (B, N, 2).

    pixel = f * (X + tx) / (Z + tz) + center, with an identity camera rotation (SPIN's convention);
    center is camera_center (B, 2) if given, else (crop_size / 2, crop_size / 2).
    """
    _check_last_dims("points", points, (3,))
    _check_last_dims("translation", translation, (3,))
    batch = points.shape[0]
    center = _center(batch, points.dtype, points.device, camera_center, crop_size)
    f = _focal(focal_length, batch, points.dtype, points.device)
    cam = points + translation[:, None, :]
    return f[:, None, None] * cam[..., :2] / cam[..., 2:3] + center[:, None, :]


def weak_perspective_to_translation(
    cam: torch.Tensor, focal_length: float, crop_size: float, min_scale: float = WEAK_PERSPECTIVE_MIN_SCALE
) -> torch.Tensor:
    """Network camera [s, tx, ty] (B, 3) to translation [tx, ty, 2f / (crop * s)] (B, 3).

    s is clamped below at min_scale (a person ~ 2f / (crop * min_scale) units away) so a zero or
    negative scale gives a far but finite depth instead of inf or a point behind the camera.
    """
    _check_last_dims("weak-perspective camera", cam, (3,))
    scale = cam[..., 0].clamp(min=min_scale)
    depth = 2.0 * focal_length / (crop_size * scale)
    return torch.stack((cam[..., 1], cam[..., 2], depth), dim=-1)


def camera_translation_from_keypoints(
    model_points: torch.Tensor,
    keypoints_2d: torch.Tensor,
    confidences: torch.Tensor,
    focal_length: float | torch.Tensor,
    crop_size: float,
    initial_depth: float | torch.Tensor,
    prior_weight: float = 1e-9,
    camera_center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Closed-form camera translation (B, 3) so model_points + t project onto keypoints_2d (pixels).

    Each keypoint gives two equations linear in t (from u (Z + tz) = f (X + tx) + c (Z + tz)):
    f tx - (u - cx) tz = (u - cx) Z - f X, and the same in y. Rows are divided by f so residuals are
    in scene units and weighted by the confidence; the weighted normal equations plus
    ``prior_weight * |t - (0, 0, initial_depth)|^2`` are solved for every sample at once. The prior
    is weak enough to be invisible when points are seen, and keeps samples with fewer than two
    confident points finite (they return the prior's translation).
    """
    _check_last_dims("model_points", model_points, (3,))
    _check_last_dims("keypoints_2d", keypoints_2d, (2,))
    batch, count = model_points.shape[:2]
    if keypoints_2d.shape[:2] != (batch, count) or confidences.shape != (batch, count):
        raise InputError(
            f"model_points {tuple(model_points.shape)}, keypoints_2d {tuple(keypoints_2d.shape)} and "
            f"confidences {tuple(confidences.shape)} must agree on (B, N)"
        )
    out_dtype = model_points.dtype
    # The 3x3 systems are tiny; float64 keeps the weakly-determined depth accurate in float32 callers.
    dt = torch.float64
    points = model_points.to(dt)
    center = _center(batch, dt, points.device, camera_center, crop_size)
    f = _focal(focal_length, batch, dt, points.device)[:, None, None]
    offset = (keypoints_2d.to(dt) - center[:, None, :]) / f  # (B, N, 2) normalised image coords
    weight = confidences.to(dt).clamp(min=0)[..., None].expand(batch, count, 2)

    # Design rows for x and y equations: [1, 0, -ox] and [0, 1, -oy]; rhs ox * Z - X, oy * Z - Y.
    ones = torch.ones_like(offset[..., 0])
    zeros = torch.zeros_like(ones)
    rows_x = torch.stack((ones, zeros, -offset[..., 0]), dim=-1)
    rows_y = torch.stack((zeros, ones, -offset[..., 1]), dim=-1)
    design = torch.stack((rows_x, rows_y), dim=2)  # (B, N, 2, 3)
    rhs = offset * points[..., 2:3] - points[..., :2]  # (B, N, 2)

    normal = torch.einsum("bnk,bnki,bnkj->bij", weight, design, design)
    target = torch.einsum("bnk,bnki,bnk->bi", weight, design, rhs)
    prior = torch.zeros(batch, 3, dtype=dt, device=points.device)
    prior[:, 2] = torch.as_tensor(initial_depth, dtype=dt, device=points.device).expand(batch)
    eye = torch.eye(3, dtype=dt, device=points.device)
    normal = normal + prior_weight * eye
    target = target + prior_weight * prior
    return torch.linalg.solve(normal, target[..., None])[..., 0].to(out_dtype)


def similarity_procrustes(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Align source (B, N, 3) to target by the best rotation, scale and translation; returns aligned source."""
    _check_last_dims("source", source, (3,))
    if source.shape != target.shape:
        raise InputError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must have the same shape")
    mu_s = source.mean(dim=1, keepdim=True)
    mu_t = target.mean(dim=1, keepdim=True)
    xs = source - mu_s
    xt = target - mu_t
    cross = xs.transpose(1, 2) @ xt  # (B, 3, 3) = sum_i x_i y_i^T
    u, sv, vh = torch.linalg.svd(cross)
    # Flip the weakest direction when the best orthogonal map is a reflection.
    det = torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2))
    d = torch.ones_like(sv)
    d[:, 2] = torch.where(det < 0, -1.0, 1.0).to(sv.dtype)
    rotation = vh.transpose(1, 2) @ torch.diag_embed(d) @ u.transpose(1, 2)
    variance = (xs * xs).sum(dim=(1, 2)).clamp(min=eps)
    scale = (sv * d).sum(-1) / variance
    return scale[:, None, None] * xs @ rotation.transpose(1, 2) + mu_t
