"""Evaluation helpers: image grids, conditional metrics."""
