"""Datasets in SPIN's format, crops and augmentation, and the synthetic benchmark."""
