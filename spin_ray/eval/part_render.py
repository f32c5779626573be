"""LSP segmentation of predicted meshes: their six-part labels drawn into the original image, scored against masks.

As in SPIN's eval.py, the mesh is drawn with the predicted camera of the crop, carried over to the
original image (focal length scaled by box / crop size, principal point at the box centre; the same
thing as SPIN's uncrop of the crop render, without resampling), and compared with the dataset's
masks over the whole image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spin_ray.config import CameraConfig
from spin_ray.data.augment import SCALE_UNIT_PX
from spin_ray.data.spin_format import SpinDataset
from spin_ray.data.synth_masks import read_label_png, vertex_part_labels
from spin_ray.errors import DataError
from spin_ray.eval.segmentation import FB_CLASSES, PART_CLASSES, confusion_matrix
from spin_ray.geometry import weak_perspective_to_translation
from spin_ray.render.renderer import MeshRenderer


def mask_files(spin: SpinDataset) -> dict[str, np.ndarray]:
    """The dataset's `maskname` and `partname` keys (paths relative to its image root) that its npz has."""
    if spin.source is None or not Path(spin.source).is_file():
        return {}
    with np.load(spin.source, allow_pickle=False) as npz:
        found = {key: npz[key] for key in ("maskname", "partname") if key in npz.files}
    for key, names in found.items():
        if names.dtype.kind not in "US" or len(names) != len(spin):
            raise DataError(f"{spin.source}, key '{key}': expected one path string per sample ({len(spin)}), "
                            f"got {names.dtype} {names.shape}")
    return {key: np.char.decode(v, "utf-8") if v.dtype.kind == "S" else v for key, v in found.items()}


class PartLabelRenderer:
    """Draws meshes' part labels (0 background, 1..6) at any image size; owns one GL context, grown as needed."""

    def __init__(self, faces: np.ndarray, skinning_weights: np.ndarray):
        self._faces = faces
        labels = vertex_part_labels(skinning_weights)
        self._colours = np.repeat(labels[:, None], 3, axis=1).astype(np.uint8)  # label k reads back as k
        self._renderer: MeshRenderer | None = None

    def draw(self, vertices: np.ndarray, translation: np.ndarray, focal: float, center: np.ndarray,
             shape: tuple[int, int]) -> np.ndarray:
        """Label map (H,W) uint8 of camera-frame vertices + translation seen with focal and principal point center."""
        height, width = shape
        current = self._renderer
        if current is None or current.width < width or current.height < height:
            # Pixels do not depend on the canvas size, so a bigger canvas cropped is the same picture.
            size = (max(width, current.width if current else 0), max(height, current.height if current else 0))
            self.close()
            self._renderer = MeshRenderer(size[0], size[1], self._faces)
        image = self._renderer.part_colors(vertices, translation, focal, center, vertex_colors=self._colours)
        return image[:height, :width, 0]

    def close(self) -> None:
        """Release the GL context."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def segment_batch(
    renderer: PartLabelRenderer, vertices: torch.Tensor, cam: torch.Tensor, center: torch.Tensor,
    scale: torch.Tensor, image_root: Path, masks: dict[str, np.ndarray], rows: np.ndarray, camera: CameraConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground (3,2) and part (8,7) confusion matrices of predicted meshes against the rows' masks."""
    translation = weak_perspective_to_translation(cam.double(), camera.focal_length, camera.crop_size).cpu().numpy()
    focal = (camera.focal_length * scale.double().cpu().numpy() * SCALE_UNIT_PX / camera.crop_size)
    fb = np.zeros((FB_CLASSES + 1, FB_CLASSES), np.int64)
    parts = np.zeros((PART_CLASSES + 1, PART_CLASSES), np.int64)
    vertices_np = vertices.detach().cpu().numpy()
    for i, row in enumerate(rows):
        gt_mask = read_label_png(image_root / masks["maskname"][row]) if "maskname" in masks else None
        gt_parts = read_label_png(image_root / masks["partname"][row]) if "partname" in masks else None
        shape = (gt_mask if gt_mask is not None else gt_parts).shape
        labels = renderer.draw(vertices_np[i], translation[i], float(focal[i]), center[i].cpu().numpy(), shape)
        if gt_mask is not None:
            fb += confusion_matrix((labels > 0).astype(np.uint8), (gt_mask > 0).astype(np.uint8), FB_CLASSES)
        if gt_parts is not None:
            parts += confusion_matrix(labels, gt_parts, PART_CLASSES)
    return fb, parts
