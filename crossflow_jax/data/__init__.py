"""Datasets: TFDS ArrayRecord sources (`sources`) and grain input pipelines (`pipeline`)."""
