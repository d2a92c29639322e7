"""One place for the numba flags every kernel uses.

``MCF_NUMBA_PARALLEL=0`` turns off ``prange`` threading (useful inside dask workers that
already run one process per core).  ``NUMBA_DISABLE_JIT=1`` (numba's own switch) runs the
kernels as plain Python, so coverage tools see their bodies.
"""

from __future__ import annotations

import os

PARALLEL: bool = os.environ.get("MCF_NUMBA_PARALLEL", "1") != "0"

#: flags of serial kernels (``numba.jit`` compiles in nopython mode by default; the dict
#: carries no ``nopython`` key so it also suits ``numba.njit``)
JIT = {"cache": True, "fastmath": False, "nogil": True}
#: flags of kernels whose outer loop is a ``prange``
JIT_PARALLEL = {**JIT, "parallel": PARALLEL}
