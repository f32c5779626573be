"""Losses, the training step and the single-process trainer."""
