"""Evaluation as in SPIN: MPJPE, PA-MPJPE, PVE, 3DHP PCK/AUC and LSP segmentation, and the paper-layout table."""
