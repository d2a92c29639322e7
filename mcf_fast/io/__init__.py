"""Readers, writers, datasets, template sets and tiling."""
