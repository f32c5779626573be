"""`spin-ray demo`: an image and every person's keypoints (a file's, or the detector's) to one mesh overlay, and a
side view and an .obj per person."""
