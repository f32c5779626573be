"""Readers of keypoints people bring (COCO, OpenPose, Halpe, COCO-WholeBody) and their import as a SPIN dataset."""
