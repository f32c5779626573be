"""Plausible random SMPL poses for the open model: the data behind the open GMM pose prior and the
synthetic dataset.

SMPL's local joint frames equal the world frame in the T-pose: x is the person's left, y is up,
z is forward (the body faces +z). Worked out from that (and checked by forward kinematics in the
tests), for the LEFT side:
- hip flexion (thigh forward) is a negative rotation about x; abduction (leg out, +x) is +z;
- knee flexion (ankle backwards, -z) is a positive rotation about x;
- ankle plantar flexion (toes down) is +x;
- spine/neck/head forward bending is +x, twist is y, side bending is z;
- shoulder: the arm points along +x; lowering it is a negative rotation about z, swinging a hanging
  arm forward is a negative rotation about x;
- elbow flexion (forearm forward) is a negative rotation about y.
The right side is the mirror image: the same rotation with its y and z components negated (the
same rule as `spin_ray.body.joints.flip_pose`).

Poses are drawn from a few activity families (a shared latent per sample) so that joints move
together the way people do: standing, walking (left/right hips anti-phased, arms swinging against
the legs), sitting, crouching and reaching. Every anatomical angle is then clamped to the ranges
in `LIMITS`, so nothing bends backwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from spin_ray.body.joints import NUM_SMPL_JOINTS, SMPL_JOINT_NAMES
from spin_ray.errors import InputError
from spin_ray.geometry import axis_angle_to_matrix, matrix_to_axis_angle

FAMILIES: tuple[str, ...] = ("standing", "walking", "sitting", "crouching", "reaching")
FAMILY_PROBABILITIES: tuple[float, ...] = (0.3, 0.25, 0.2, 0.1, 0.15)

# (low, high) per family, in the order of FAMILIES; angles in radians, anatomical signs (positive =
# flexion / forward / raised). Walking's hips, knees and shoulder swing come from its gait phase.
_FAMILY_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "hip_flexion": ((-0.15, 0.25), (0.0, 0.0), (1.2, 1.8), (1.6, 2.1), (-0.1, 0.7)),
    "knee_flexion": ((0.0, 0.3), (0.0, 0.0), (1.2, 1.9), (1.8, 2.3), (0.0, 0.7)),
    # 0 = arm horizontal to the side (T-pose), -pi/2 = hanging down, positive = raised sideways.
    "shoulder_elevation": ((-1.45, -0.9), (-1.45, -1.1), (-1.45, -0.8), (-1.45, -0.5), (-1.5, 1.3)),
    "shoulder_flexion": ((-0.3, 0.4), (0.0, 0.0), (0.1, 1.0), (0.2, 1.3), (-0.3, 2.4)),
    "elbow_flexion": ((0.05, 0.8), (0.2, 0.9), (0.4, 1.7), (0.2, 1.8), (0.0, 2.4)),
    "spine_bend": ((-0.15, 0.2), (-0.05, 0.2), (-0.1, 0.4), (0.1, 0.7), (-0.3, 0.6)),
}

# Anatomical limits (radians) every sample is clamped to:
LIMITS: dict[str, tuple[float, float]] = {
    "hip_flexion": (-0.5, 2.2),  # extension ~30 deg behind, flexion to a deep squat
    "hip_abduction": (-0.3, 0.8),  # crossing the midline a little, leg out ~45 deg
    "hip_twist": (-0.5, 0.5),
    "knee_flexion": (0.0, 2.3),  # never hyper-extended; ~130 deg
    "knee_side": (-0.05, 0.05),  # knees are hinges: almost nothing off-axis
    "ankle_flexion": (-0.4, 0.7),  # dorsi- to plantar flexion
    "ankle_side": (-0.25, 0.25),
    "toe_flexion": (-0.3, 0.3),
    "spine_bend": (-0.45, 0.9),  # whole-back extension to flexion, spread over 3 joints
    "spine_twist": (-0.25, 0.25),  # per spine joint
    "spine_side": (-0.2, 0.2),
    "neck_bend": (-0.5, 0.6),
    "neck_twist": (-0.6, 0.6),
    "neck_side": (-0.4, 0.4),
    "head_bend": (-0.4, 0.4),
    "head_twist": (-0.5, 0.5),
    "head_side": (-0.3, 0.3),
    "collar": (-0.2, 0.2),  # shrug and protraction are small
    "shoulder_elevation": (-1.55, 1.4),  # hanging to raised above the head
    "shoulder_flexion": (-0.6, 2.8),  # behind the back to overhead forward
    "shoulder_twist": (-0.8, 0.8),
    "elbow_flexion": (0.0, 2.5),  # never bent backwards; ~145 deg
    "elbow_twist": (-0.5, 0.5),  # forearm pronation/supination carried by the elbow's x
    "elbow_side": (-0.1, 0.1),  # the elbow is a hinge too
    "wrist": (-0.6, 0.6),
    "hand": (-0.25, 0.25),
}
# Normal noise standard deviations (radians) of the angles no family sets.
_NOISE_STD: dict[str, float] = {
    "hip_abduction": 0.12, "hip_twist": 0.15, "knee_side": 0.02, "ankle_flexion": 0.15,
    "ankle_side": 0.08, "toe_flexion": 0.1, "spine_twist": 0.08, "spine_side": 0.06,
    "neck_bend": 0.15, "neck_twist": 0.2, "neck_side": 0.1, "head_bend": 0.12, "head_twist": 0.15,
    "head_side": 0.08, "collar": 0.06, "shoulder_twist": 0.3, "elbow_twist": 0.2, "elbow_side": 0.03, "wrist": 0.2,
    "hand": 0.08,
}
_SPINE_SHARE = (0.4, 0.3, 0.3)  # share of the whole-back bend taken by spine1, spine2, spine3
_WALK_AMPLITUDE = (0.15, 0.55)  # hip swing amplitude (radians) of a walking stride
_WALK_KNEE_GAIN = 1.6  # knee flexion per radian of stride amplitude in the swing phase
_WALK_ARM_GAIN = 0.8  # arm swing per radian of hip swing, opposite side
_FULL_SWING_ELEVATION = 1.2  # arms at least this far below horizontal take their full forward swing

_J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) float64 samples."""
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _noise(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Zero-mean normal noise of the named angle, clamped to its limits."""
    low, high = LIMITS[name]
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * _NOISE_STD[name]).clamp(low, high)


def _family_uniform(name: str, family: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-side (n, 2) uniform samples from the named angle's range for each sample's family."""
    ranges = torch.tensor(_FAMILY_RANGES[name], dtype=torch.float64)[family]  # (n, 2)
    u = _rand((family.shape[0], 2), generator)
    return ranges[:, None, 0] + u * (ranges[:, None, 1] - ranges[:, None, 0])


def _clamp(name: str, value: torch.Tensor) -> torch.Tensor:
    """Clamp an angle to its anatomical limits."""
    return value.clamp(*LIMITS[name])


def _rot(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (...) about a coordinate axis."""
    aa = torch.zeros(*angle.shape, 3, dtype=angle.dtype)
    aa[..., axis] = angle
    return axis_angle_to_matrix(aa)


def _mirror_right(side_pose: torch.Tensor) -> torch.Tensor:
    """Turn left-side rotations (n, 2, 3) into (left, right) by mirroring the second side."""
    sign = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0]], dtype=side_pose.dtype)
    return side_pose * sign


def sample_body_poses(
    n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
    families: Sequence[str] | None = None,
) -> torch.Tensor:
    """Draw n axis-angle SMPL poses (n, 72) with zero global orient, deterministic given generator.

    families restricts the activity mix to the named FAMILIES (kept in their usual proportions).
    """
    chosen = FAMILIES if families is None else tuple(families)
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown or not chosen:
        raise InputError(f"unknown pose families {unknown or list(chosen)}; choose from {list(FAMILIES)}")
    probabilities = torch.tensor(
        [p if name in chosen else 0.0 for name, p in zip(FAMILIES, FAMILY_PROBABILITIES)], dtype=torch.float64
    )
    family = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    walking = (family == FAMILIES.index("walking"))[:, None]
    sides = (n, 2)

    hip_flex = _family_uniform("hip_flexion", family, generator)
    knee_flex = _family_uniform("knee_flexion", family, generator)
    elevation = _family_uniform("shoulder_elevation", family, generator)
    arm_flex = _family_uniform("shoulder_flexion", family, generator)
    elbow_flex = _family_uniform("elbow_flexion", family, generator)
    spine_bend = _family_uniform("spine_bend", family, generator)[:, 0]

    # Gait: left and right hips in anti-phase, the knee bends while its hip swings forward, and each
    # arm swings with the opposite leg.
    phase = _rand((n,), generator) * 2 * math.pi
    amplitude = _WALK_AMPLITUDE[0] + _rand((n,), generator) * (_WALK_AMPLITUDE[1] - _WALK_AMPLITUDE[0])
    swing = amplitude * torch.sin(phase)
    gait_hip = torch.stack((swing, -swing), dim=-1)
    gait_knee = 0.05 + _WALK_KNEE_GAIN * amplitude[:, None] * torch.stack(
        (torch.cos(phase).clamp(min=0), (-torch.cos(phase)).clamp(min=0)), dim=-1
    )
    gait_arm = _WALK_ARM_GAIN * gait_hip.flip(-1)
    hip_flex = torch.where(walking, gait_hip, hip_flex)
    knee_flex = torch.where(walking, gait_knee, knee_flex)
    arm_flex = torch.where(walking, gait_arm, arm_flex)
    # Forward swing is about x, which only swings an arm that hangs: fade it out as the arm rises to
    # the side, so a raised arm is not thrown backwards over the shoulder.
    arm_flex = arm_flex * (-elevation / _FULL_SWING_ELEVATION).clamp(0.0, 1.0)

    hip_flex = _clamp("hip_flexion", hip_flex)
    knee_flex = _clamp("knee_flexion", knee_flex)
    elevation = _clamp("shoulder_elevation", elevation)
    arm_flex = _clamp("shoulder_flexion", arm_flex)
    elbow_flex = _clamp("elbow_flexion", elbow_flex)
    spine_bend = _clamp("spine_bend", spine_bend)

    pose = torch.zeros(n, NUM_SMPL_JOINTS, 3, dtype=torch.float64)

    def set_sides(left: str, right: str, left_side_aa: torch.Tensor) -> None:
        both = _mirror_right(left_side_aa)
        pose[:, _J[left]] = both[:, 0]
        pose[:, _J[right]] = both[:, 1]

    set_sides("left_hip", "right_hip", torch.stack(
        (-hip_flex, _noise("hip_twist", sides, generator), _noise("hip_abduction", sides, generator)), dim=-1))
    set_sides("left_knee", "right_knee", torch.stack(
        (knee_flex, _noise("knee_side", sides, generator), _noise("knee_side", sides, generator)), dim=-1))
    set_sides("left_ankle", "right_ankle", torch.stack(
        (_noise("ankle_flexion", sides, generator), _noise("ankle_side", sides, generator),
         _noise("ankle_side", sides, generator)), dim=-1))
    toes = torch.zeros(n, 2, 3, dtype=torch.float64)
    toes[..., 0] = _noise("toe_flexion", sides, generator)
    set_sides("left_foot", "right_foot", toes)

    set_sides("left_collar", "right_collar", torch.stack(
        [_noise("collar", sides, generator) for _ in range(3)], dim=-1))
    # Shoulder: twist about the arm's own axis, then raise/lower in the frontal plane, then swing
    # forward; composed as matrices because these large rotations do not add as vectors.
    shoulder = _rot(0, -arm_flex) @ _rot(2, elevation) @ _rot(0, _noise("shoulder_twist", sides, generator))
    set_sides("left_shoulder", "right_shoulder", matrix_to_axis_angle(shoulder))
    set_sides("left_elbow", "right_elbow", torch.stack(
        (_noise("elbow_twist", sides, generator), -elbow_flex, _noise("elbow_side", sides, generator)), dim=-1))
    set_sides("left_wrist", "right_wrist", torch.stack(
        [_noise("wrist", sides, generator) for _ in range(3)], dim=-1))
    set_sides("left_hand", "right_hand", torch.stack(
        [_noise("hand", sides, generator) for _ in range(3)], dim=-1))

    for joint, share in zip(("spine1", "spine2", "spine3"), _SPINE_SHARE):
        pose[:, _J[joint], 0] = share * spine_bend
        pose[:, _J[joint], 1] = _noise("spine_twist", (n,), generator)
        pose[:, _J[joint], 2] = _noise("spine_side", (n,), generator)
    for joint in ("neck", "head"):
        for axis, kind in enumerate(("bend", "twist", "side")):
            pose[:, _J[joint], axis] = _noise(f"{joint}_{kind}", (n,), generator)
    return pose.reshape(n, 3 * NUM_SMPL_JOINTS).to(dtype)


def sample_global_orient(n: int, max_yaw: float, generator: torch.Generator,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Global orientations (n, 3) of upright people facing the camera, turned by a yaw in +-max_yaw.

    The camera looks down +z with image y pointing down; SMPL stands along +y facing +z. A rotation
    of pi about x maps the body's up (+y) to camera -y (up in the image) and its front (+z) to
    camera -z (towards the camera); the yaw then turns the person about the camera's vertical axis.
    """
    yaw = (2 * _rand((n,), generator) - 1) * max_yaw
    flip = _rot(0, torch.full((n,), math.pi, dtype=torch.float64))
    return matrix_to_axis_angle(_rot(1, yaw) @ flip).to(dtype)
