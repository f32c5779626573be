"""`spin-ray demo`: one image and its OpenPose keypoints to a mesh overlay, a side view and an .obj."""
