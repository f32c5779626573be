"""The body model: full mesh forward through smplx, and a joints-only forward for the 49 SPIN keypoints."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import smplx
import torch

from spin_ray.body.joints import NUM_EXTRA_KEYPOINTS, NUM_SMPL_JOINTS, SPIN49_FROM_JOINTS_AND_EXTRAS
from spin_ray.body.kinematics import (
    coupled_pairs,
    forward_kinematics,
    joint_shape_basis,
    keypoint_joint_basis,
    pair_matrix,
    KinematicPlan,
    regressed_skinned_points,
    shaped_rest_joints,
    skin_vertices,
)
from spin_ray.body.model_file import BodyModelArrays, embedded_model_path, load_body_model_arrays
from spin_ray.config import BodyConfig
from spin_ray.errors import BodyModelError, InputError
from spin_ray.geometry import axis_angle_to_matrix

# smplx always appends 5 face keypoints from vertex ids; we compute our own extras and drop its
# extra joints, so point them at vertex 0, which exists on every mesh.
_UNUSED_SMPLX_VERTEX_IDS = {"nose": 0, "reye": 0, "leye": 0, "rear": 0, "lear": 0}
_PAIR_BUFFERS = ("pair_matrix", "pair_posedirs", "pair_keypoint", "pair_joint", "pair_points")
ExtrasMethod = Literal["auto", "vertices", "pairs"]


class BodyOutput(NamedTuple):
    """Result of the full forward: mesh vertices, 24 kinematic joints and the 49 SPIN keypoints."""

    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, 24, 3)
    keypoints: torch.Tensor  # (B, 49, 3)


def _buffer(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor copy of a (possibly read-only) numpy array."""
    return torch.tensor(np.array(array), dtype=dtype)


class BodyModel(torch.nn.Module):
    """An SMPL-layout body model: buffers only, no translation (the camera adds it)."""

    def __init__(
        self, arrays: BodyModelArrays, dtype: torch.dtype = torch.float32, extras_method: ExtrasMethod = "auto"
    ) -> None:
        """Buffers for both forwards; `extras_method` picks how the joints-only path gets the 20 extras."""
        super().__init__()
        self.identity: str = arrays.sha256
        self.source: str = arrays.source
        self._num_betas = arrays.num_betas
        self._faces = arrays.faces
        self._parents: list[int] = [int(p) for p in arrays.parents]
        self._levels = KinematicPlan(self._parents)

        kintree = np.stack([arrays.parents, np.arange(NUM_SMPL_JOINTS)]).astype(np.int64)
        struct = smplx.utils.Struct(
            v_template=arrays.v_template, f=arrays.faces, shapedirs=arrays.shapedirs,
            posedirs=arrays.posedirs, J_regressor=arrays.J_regressor, weights=arrays.weights,
            kintree_table=kintree,
        )
        # smplx prints a warning for models with fewer than 300 shape components; it is not news here.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPLLayer(
                model_path="", data_struct=struct, num_betas=arrays.num_betas, dtype=dtype,
                vertex_ids=_UNUSED_SMPLX_VERTEX_IDS, use_hands=False, use_feet_keypoints=False,
            )
        if self.smpl.num_betas != arrays.num_betas:
            # smplx caps models with < 300 components at 10 betas; keep all the ones we loaded.
            self.smpl.shapedirs = _buffer(arrays.shapedirs, dtype)
            self.smpl._num_betas = arrays.num_betas

        v_template = _buffer(arrays.v_template, torch.float64)
        shapedirs = _buffer(arrays.shapedirs, torch.float64)
        j_template, j_shapedirs = joint_shape_basis(_buffer(arrays.J_regressor, torch.float64), v_template, shapedirs)
        self.register_buffer("j_template", j_template.to(dtype))
        self.register_buffer("j_shapedirs", j_shapedirs.to(dtype))

        self.register_buffer("keypoint_regressor", _buffer(arrays.keypoint_regressor, dtype))
        self._extras_method = self._register_extras_path(arrays, dtype, extras_method)
        self.register_buffer("spin49_index", torch.tensor(SPIN49_FROM_JOINTS_AND_EXTRAS, dtype=torch.long))
        h36m = arrays.J_regressor_h36m
        self.register_buffer("j_regressor_h36m", None if h36m is None else _buffer(h36m, dtype))

    def _register_extras_path(self, arrays: BodyModelArrays, dtype: torch.dtype, method: ExtrasMethod) -> str:
        """Buffers of the joints-only extras: skin the support vertices, or sum per (keypoint, joint) pair.

        Both are exact LBS followed by the regressor; they differ in cost only. Skinning costs per
        support vertex (nonzero regressor column); the pair form costs per (keypoint, joint) pair,
        20 x 24 = 480 of them, which is less when the regressors spread over hundreds of vertices.
        """
        if method not in ("auto", "pairs", "vertices"):
            raise InputError(f"extras_method must be 'auto', 'pairs' or 'vertices', got {method!r}")
        support = np.flatnonzero(np.any(arrays.keypoint_regressor != 0, axis=0))
        posedirs = arrays.posedirs[support]
        # All-zero pose correctives (the open model) cost nothing if skipped.
        posedirs = posedirs if np.any(posedirs) else None
        if method == "auto":
            # A pair is ~3x cheaper than a vertex (one transform, no weight blend): measured crossover
            # near 160 support vertices at batch 64 on one thread (benchmarks/bench_body.py models).
            method = "pairs" if 3 * len(support) > NUM_EXTRA_KEYPOINTS * NUM_SMPL_JOINTS else "vertices"
        self.num_support_vertices = len(support)
        self.num_pairs = 0
        if method == "pairs":
            f64 = torch.float64
            basis = keypoint_joint_basis(
                _buffer(arrays.keypoint_regressor[:, support], f64), _buffer(arrays.weights[support], f64),
                _buffer(arrays.v_template[support], f64), _buffer(arrays.shapedirs[support], f64),
                None if posedirs is None else _buffer(posedirs, f64),
            )
            self.register_buffer("pair_matrix", pair_matrix(basis).to(dtype))
            # The same pairs listed sparsely, for compiled fitting (kinematics.coupled_pairs); derived, not saved.
            for name, tensor in coupled_pairs(self.pair_matrix, arrays.keypoint_regressor.shape[0]).items():
                self.register_buffer(name, tensor, persistent=False)
            pair_posedirs = basis.get("pair_posedirs")
            self.register_buffer("pair_posedirs", None if pair_posedirs is None else pair_posedirs.to(dtype))
            self.num_pairs = int(basis["coupled"].sum())
            return method
        self.register_buffer("support_regressor", _buffer(arrays.keypoint_regressor[:, support], dtype))
        self.register_buffer("support_template", _buffer(arrays.v_template[support], dtype))
        self.register_buffer("support_shapedirs", _buffer(arrays.shapedirs[support], dtype))
        support_posedirs = None if posedirs is None else _buffer(posedirs.reshape(len(support) * 3, -1).T, dtype)
        self.register_buffer("support_posedirs", support_posedirs)
        self.register_buffer("support_weights", _buffer(arrays.weights[support], dtype))
        return method

    @classmethod
    def from_file(
        cls, path: str | Path, num_betas: int = 10, dtype: torch.dtype = torch.float32,
        extras_method: ExtrasMethod = "auto",
    ) -> BodyModel:
        """A model file that carries its own keypoint regressor (.npz in our layout)."""
        return cls(load_body_model_arrays(path, num_betas=num_betas), dtype=dtype, extras_method=extras_method)

    @classmethod
    def from_config(cls, cfg: BodyConfig) -> BodyModel:
        """The model named by a body config section; the embedded open model if model_path is unset."""
        if cfg.model_path is None:
            return cls.embedded(num_betas=cfg.num_betas)
        return cls(load_body_model_arrays(
            cfg.model_path, cfg.joint_regressor_extra, cfg.joint_regressor_h36m, cfg.num_betas))

    @classmethod
    def embedded(cls, num_betas: int = 10) -> BodyModel:
        """The embedded open body model shipped with the package."""
        path = embedded_model_path()
        if not path.is_file():
            raise BodyModelError(
                f"{path}: the embedded open body model is missing (package built without its assets?); "
                "reinstall spin-ray or set body.model_path to an SMPL model file"
            )
        return cls(load_body_model_arrays(path, num_betas=num_betas))

    @property
    def faces(self) -> np.ndarray:
        """Triangles (F, 3) as int64 vertex indices."""
        return self._faces

    @property
    def num_betas(self) -> int:
        """Number of shape coefficients the model takes."""
        return self._num_betas

    @property
    def num_vertices(self) -> int:
        """Number of mesh vertices."""
        return int(self.smpl.v_template.shape[0])

    @property
    def extras_method(self) -> str:
        """How the joints-only path computes the 20 extra keypoints: 'vertices' or 'pairs'."""
        return self._extras_method

    @property
    def has_h36m_regressor(self) -> bool:
        """Whether h36m_joints is available."""
        return self.j_regressor_h36m is not None

    def _check_params(self, rotmats: torch.Tensor, betas: torch.Tensor) -> None:
        """Raise InputError unless rotmats is (B,24,3,3), betas (B,num_betas), finite, of the model's dtype."""
        expected = f"rotmats (B, {NUM_SMPL_JOINTS}, 3, 3) and betas (B, {self.num_betas})"
        if not isinstance(rotmats, torch.Tensor) or not isinstance(betas, torch.Tensor):
            raise InputError(f"body model expects tensors {expected}, got {type(rotmats).__name__} "
                             f"and {type(betas).__name__}")
        if rotmats.ndim != 4 or tuple(rotmats.shape[1:]) != (NUM_SMPL_JOINTS, 3, 3):
            raise InputError(f"body model: rotmats has shape {tuple(rotmats.shape)}, expected {expected}"
                             " (axis-angle (B, 72)? convert with axis_angle_pose_to_rotmats)")
        if betas.ndim != 2 or betas.shape[1] != self.num_betas or betas.shape[0] != rotmats.shape[0]:
            raise InputError(f"body model: betas has shape {tuple(betas.shape)} with rotmats "
                             f"{tuple(rotmats.shape)}, expected {expected}")
        dtype = self.j_template.dtype
        if rotmats.dtype != dtype or betas.dtype != dtype:
            raise InputError(f"body model is {dtype} but got rotmats {rotmats.dtype} and betas {betas.dtype}; "
                             "convert the inputs or the model (.to(dtype))")
        if rotmats.device != self.j_template.device or betas.device != self.j_template.device:
            raise InputError(f"body model is on {self.j_template.device} but got rotmats on {rotmats.device} "
                             f"and betas on {betas.device}; move one of them")
        if torch.compiler.is_compiling():
            # A compiled fitting step cannot branch on data; it masks non-finite samples itself.
            return
        if not bool(torch.isfinite(rotmats).all()) or not bool(torch.isfinite(betas).all()):
            bad = (~torch.isfinite(rotmats).flatten(1).all(1)) | (~torch.isfinite(betas).all(1))
            raise InputError(f"body model: NaN or infinite parameters in batch rows "
                             f"{bad.nonzero().flatten().tolist()[:10]}; check the optimiser or network output")

    def _gather_keypoints(self, joints: torch.Tensor, extras: torch.Tensor) -> torch.Tensor:
        """The 49 SPIN keypoints from the 24 joints and the 20 extra keypoints."""
        return torch.cat([joints, extras], dim=1).index_select(1, self.spin49_index)

    def forward(self, rotmats: torch.Tensor, betas: torch.Tensor) -> BodyOutput:
        """Full mesh forward through smplx: vertices (B,V,3), joints (B,24,3), keypoints (B,49,3)."""
        self._check_params(rotmats, betas)
        out = self.smpl(betas=betas, global_orient=rotmats[:, :1], body_pose=rotmats[:, 1:], pose2rot=False)
        vertices = out.vertices
        joints = out.joints[:, :NUM_SMPL_JOINTS]
        extras = torch.einsum("kv,bvc->bkc", self.keypoint_regressor, vertices)
        return BodyOutput(vertices=vertices, joints=joints, keypoints=self._gather_keypoints(joints, extras))

    def joints(self, rotmats: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """The 24 posed joints (B,24,3) by forward kinematics of the shaped rest joints, without the mesh."""
        self._check_params(rotmats, betas)
        rest = shaped_rest_joints(betas, self.j_template, self.j_shapedirs)
        return forward_kinematics(rotmats, rest, self._parents, self._levels)[0]

    def keypoints(self, rotmats: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """Joints-only forward: the 49 SPIN keypoints (B,49,3) without posing the whole mesh."""
        self._check_params(rotmats, betas)
        rest = shaped_rest_joints(betas, self.j_template, self.j_shapedirs)
        joints, skinning = forward_kinematics(rotmats, rest, self._parents, self._levels)
        if self._extras_method == "pairs":
            basis = {name: getattr(self, name) for name in _PAIR_BUFFERS}
            extras = regressed_skinned_points(rotmats, skinning, betas, basis)
        else:
            support = skin_vertices(rotmats, skinning, betas, self.support_template, self.support_shapedirs,
                                    self.support_posedirs, self.support_weights)
            extras = torch.einsum("ks,bsc->bkc", self.support_regressor, support)
        return self._gather_keypoints(joints, extras)

    def h36m_joints(self, vertices: torch.Tensor) -> torch.Tensor:
        """H36M-17 joints (B,17,3) regressed from mesh vertices (B,V,3), for evaluation."""
        if self.j_regressor_h36m is None:
            raise BodyModelError(
                f"{self.source}: this body model has no J_regressor_h36m; set body.joint_regressor_h36m "
                "to SPIN's J_regressor_h36m.npy"
            )
        if not isinstance(vertices, torch.Tensor) or vertices.ndim != 3 or tuple(vertices.shape[1:]) != (
                self.num_vertices, 3):
            shape = tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__
            raise InputError(f"h36m_joints: vertices has shape {shape}, expected (B, {self.num_vertices}, 3)")
        return torch.einsum("kv,bvc->bkc", self.j_regressor_h36m, vertices)


def axis_angle_pose_to_rotmats(pose: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B,24,3,3) from an SMPL axis-angle pose (B,72)."""
    if not isinstance(pose, torch.Tensor) or pose.ndim != 2 or pose.shape[1] != 3 * NUM_SMPL_JOINTS:
        shape = tuple(pose.shape) if isinstance(pose, torch.Tensor) else type(pose).__name__
        raise InputError(f"axis-angle pose has shape {shape}, expected (B, {3 * NUM_SMPL_JOINTS})")
    return axis_angle_to_matrix(pose.reshape(pose.shape[0], NUM_SMPL_JOINTS, 3))
