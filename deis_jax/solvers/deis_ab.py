r"""Multistep DEIS: tAB-DEIS (polynomial in ``t``), rhoAB-DEIS (in ``rho``) and
log-rho-AB DEIS (in ``log rho``).

Over step ``i`` the noise prediction is replaced by the Lagrange polynomial ``P_i`` of degree
``r`` through the last ``r + 1`` evaluations ``(u_{i-j}, eps_{i-j})``, ``u`` the basis
variable:

.. math::
   x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \sum_{j=0}^{r} C_{ij}\,\epsilon_{i-j},\qquad
   C_{ij} = \alpha_{i+1}\int_{t_i}^{t_{i+1}} \frac{d\rho}{d\tau}\,\ell_{ij}(u(\tau))\,d\tau .

Zhang & Chen 2023 (DEIS), eq. 14 (tAB) and Sec. 4 (rhoAB). Weights: Gauss--Legendre
quadrature in ``lambda`` (tAB), exact Gauss--Legendre in ``rho`` (rhoAB: the integrand is a
polynomial), closed form in phi-functions (log-rho); all from
:mod:`deis_jax.solvers.ei`. The first ``r`` steps run at degree ``0, 1, ..., r-1`` (rows of
the table). Order ``r + 1``, 1 NFE/step; degree 0 is DDIM.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_member
from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ei import (
    FinalRule,
    MultistepCoeffs,
    blend_final,
    damp_curvature,
    ei_weights,
    exp_linear,
    exp_poly_weights,
    final_weight,
    lowered_degrees,
    multistep_init,
    multistep_step,
    pad_columns,
)

__all__ = ["tab_deis", "rhoab_deis", "logrho_deis", "LOGRHO_FINAL_RULES",
           "LOGRHO_CURVATURE_SCALES"]

DEGREES = (0, 1, 2, 3)


@functools.lru_cache(maxsize=None)
def _quadrature_solver(prefix: str, basis: str, degree: int):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        a = exp_linear(schedule, ts[:-1], ts[1:], "eps").a
        return MultistepCoeffs(ts[:-1], a, ei_weights(schedule, ts, degree, basis))

    return make_solver(f"{prefix}{degree}", degree + 1, 1, coefficients, multistep_init,
                       multistep_step)


def tab_deis(degree: int = 3):
    """tAB-DEIS with a polynomial of degree ``degree`` (0..3) in ``t``: order ``degree + 1``."""
    degree = check_member("degree", degree, DEGREES)
    return _quadrature_solver("tab", "t", degree)


def rhoab_deis(degree: int = 3):
    """rhoAB-DEIS with a polynomial of degree ``degree`` (0..3) in ``rho``: order
    ``degree + 1``."""
    degree = check_member("degree", degree, DEGREES)
    return _quadrature_solver("rhoab", "rho", degree)


FINAL_STEPS = ("auto", "reference", "none")
CURVATURES = ("auto", "exact")
REFERENCE_STEPS = 15  # diffusers' DEIS lowers the last orders below this many steps
# Measured, not derived (module docstring): degree 1 lowers once its last step exceeds ~1.2
# in lambda (relative to the one before); degrees 2, 3 use DPM-Solver++(3M)'s wide ramp.
LOGRHO_FINAL_RULES = {1: FinalRule(1.2, 0.1, -0.5), 2: FinalRule(2.0, 1.0, 0.0),
                      3: FinalRule(2.0, 1.0, 0.0)}
LOGRHO_CURVATURE_SCALES = {3: 1.0}  # degrees not listed keep the exact polynomial


@functools.lru_cache(maxsize=None)
def _logrho_solver(degree: int, final_steps, curvature: str):
    scale = LOGRHO_CURVATURE_SCALES.get(degree) if curvature == "auto" else None

    def g_map(g, h, degrees):
        return g if scale is None else damp_curvature(g, h, scale)

    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        deg = np.minimum(np.arange(n), degree)
        if final_steps == "reference" and n < REFERENCE_STEPS:
            deg = lowered_degrees(deg)
        a, c = exp_poly_weights(schedule, ts, deg, "eps", g_map)
        c = pad_columns(c, degree + 1)
        if final_steps not in ("reference", "none") and n >= 2 and degree > 0:
            rule = LOGRHO_FINAL_RULES[degree] if final_steps == "auto" else final_steps
            low = pad_columns(exp_poly_weights(schedule, ts, lowered_degrees(deg), "eps",
                                               g_map)[1], degree + 1)
            c = blend_final(c, low, final_weight(schedule, ts, rule))
        return MultistepCoeffs(ts[:-1], a, c)

    parts = [v for v in (final_steps, curvature) if isinstance(v, str) and v != "auto"]
    suffix = "".join(f"_{v}" for v in parts) + ("_rule" if isinstance(final_steps, FinalRule)
                                                 else "")
    return make_solver(f"logrho{degree}{suffix}", degree + 1, 1, coefficients, multistep_init,
                       multistep_step)


def logrho_deis(degree: int = 3, *, final_steps="auto", curvature: str = "auto"):
    r"""log-rho AB-DEIS: Lagrange polynomial of degree ``degree`` (0..3) in
    ``log rho = -lambda``, closed-form weights; order ``degree + 1``.

    The step integral ``-alpha_{i+1} int e^{-lambda} P_i(lambda) d lambda`` of the polynomial
    is exact in phi-functions (:func:`~deis_jax.solvers.ei.exp_poly_weights`). It is the
    noise-prediction twin of DPM-Solver++(3M) (Zhang & Chen 2023, Sec. 4; Lu et al. 2022b),
    and diffusers' ``DEISMultistepScheduler`` (``solver_order = degree + 1``).

    Args:
      degree: polynomial degree.
      final_steps: ``"auto"`` (default: the last two steps lowered to degrees 0 and <= 1 by
        :data:`LOGRHO_FINAL_RULES`, a smooth function of the last steps' lengths in
        ``lambda``; see :class:`~deis_jax.solvers.ei.FinalRule`), ``"reference"`` (lowered
        below 15 steps, as diffusers), ``"none"``, or a ``FinalRule``.
      curvature: ``"auto"`` (default: for degree 3 the polynomial's ``v^k`` terms, ``k >=
        2``, weighted by ``s(h)^(k-1)``, :func:`~deis_jax.solvers.ei.damp_curvature` with
        the scale of :data:`LOGRHO_CURVATURE_SCALES`; other degrees exact) or ``"exact"``
        (the Lagrange polynomial's exact integral, as diffusers).
    """
    degree = check_member("degree", degree, DEGREES)
    if not isinstance(final_steps, FinalRule):
        check_choice("final_steps", final_steps, FINAL_STEPS)
    check_choice("curvature", curvature, CURVATURES)
    return _logrho_solver(degree, final_steps, curvature)
