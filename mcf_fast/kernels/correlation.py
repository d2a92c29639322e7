"""Numba kernel of the Fourier-domain channel sum of the filter-bank correlation.

For every block ``b``, filter ``f`` and frequency ``k``::

    out[b, f, k] = sum_c  W[f, c, k] * Z[b, c, k]

with ``W`` (the conjugated filter spectra) and ``Z`` (the block spectra) stored as separate
real and imaginary float32 planes, so the inner loop is plain vectorisable multiply-adds.
Frequencies are processed in chunks (the parallel loop) small enough that the chunk of
every filter and every block stays in cache while all (f, b) pairs are formed.
"""

from __future__ import annotations

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT_PARALLEL

__all__ = ["spectral_mac_kernel"]


@jit(**{**JIT_PARALLEL, "fastmath": True})
def spectral_mac_kernel(w_re, w_im, z_re, z_im, out, chunk):  # pragma: no cover - compiled
    """out (B, F, K) complex64 = sum over C of W (F, C, K) * Z (B, C, K), per frequency.

    Two blocks share each load of ``W`` (register blocking); ``fastmath`` lets LLVM fuse
    the multiply-adds (the summation order over channels is fixed either way).
    """
    n_f, n_c, n_k = w_re.shape
    n_b = z_re.shape[0]
    n_chunks = (n_k + chunk - 1) // chunk
    for ch in prange(n_chunks):
        a = ch * chunk
        n = min(n_k, a + chunk) - a
        acc = np.empty((4, n), dtype=np.float32)
        for f in range(n_f):
            for b0 in range(0, n_b, 2):
                b1 = min(b0 + 1, n_b - 1)  # odd count: the last block is computed twice
                acc[:, :] = 0.0
                a0r = acc[0]
                a0i = acc[1]
                a1r = acc[2]
                a1i = acc[3]
                for c in range(n_c):
                    wr = w_re[f, c, a : a + n]
                    wi = w_im[f, c, a : a + n]
                    zr0 = z_re[b0, c, a : a + n]
                    zi0 = z_im[b0, c, a : a + n]
                    zr1 = z_re[b1, c, a : a + n]
                    zi1 = z_im[b1, c, a : a + n]
                    for k in range(n):
                        x = wr[k]
                        y = wi[k]
                        a0r[k] += x * zr0[k] - y * zi0[k]
                        a0i[k] += x * zi0[k] + y * zr0[k]
                        a1r[k] += x * zr1[k] - y * zi1[k]
                        a1i[k] += x * zi1[k] + y * zr1[k]
                o0 = out[b0, f]
                o1 = out[b1, f]
                for k in range(n):
                    o0[a + k] = complex(a0r[k], a0i[k])
                    o1[a + k] = complex(a1r[k], a1i[k])
