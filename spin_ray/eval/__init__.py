"""Evaluation: MPJPE, PA-MPJPE and PVE."""
