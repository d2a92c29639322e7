"""Whole slides on dask: tile predictors, the worker side, the run and the output assembly."""
