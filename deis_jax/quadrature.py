"""Gauss--Legendre quadrature rules (static NumPy data), used to integrate the
exponential-integrator weights of the DEIS families (:func:`deis_jax.solvers.ei.ei_weights`).

An ``n``-point rule integrates polynomials of degree ``2n - 1`` exactly; the weights of
tAB-DEIS are integrals of smooth (analytic) functions of ``lambda``, for which the
default ``DEFAULT_NODES = 48`` points agree with closed forms and ``scipy.integrate.quad`` to
~1e-14 (``tests/test_quadrature.py``).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["DEFAULT_NODES", "gauss_legendre"]

DEFAULT_NODES = 48


@functools.lru_cache(maxsize=None)
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss--Legendre nodes and weights on ``[-1, 1]`` (float64 NumPy, static)."""
    return np.polynomial.legendre.leggauss(n)
