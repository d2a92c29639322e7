"""The per-pixel quadratic form of the pseudo labels' colour models against numpy."""

from __future__ import annotations

import numpy as np

from mcf_fast.ops.pseudo import _quadratic_form


def test_quadratic_form_equals_einsum():
    rng = np.random.default_rng(5)
    for n in (1, 7, 1000):
        x = rng.normal(size=(n, 3))
        mu = rng.normal(size=3)
        a = rng.normal(size=(3, 3))
        inv = a @ a.T + np.eye(3)
        d = x - mu
        ref = np.einsum("ij,jk,ik->i", d, inv, d)
        np.testing.assert_allclose(_quadratic_form(x, mu, inv), ref, rtol=1e-12, atol=1e-12)
    # float32 rows are widened, not summed in float32
    x32 = rng.normal(size=(50, 3)).astype(np.float32)
    d = x32.astype(np.float64) - mu
    np.testing.assert_allclose(
        _quadratic_form(x32, mu, inv), np.einsum("ij,jk,ik->i", d, inv, d), rtol=1e-12
    )
