"""Numba kernels: numpy, numba and math only; callers validate and allocate."""
