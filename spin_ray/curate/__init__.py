"""Curation of stored fits: the gallery of worst/best fits over their images, plots, sample ids and paths."""
