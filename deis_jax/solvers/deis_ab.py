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

**log-rho DEIS: final steps and curvature** (measured, not derived; 1,000 samples of the
2-d ring of sharp modes and 500 of the 64-d mixture, VP and VE, float64,
``benchmarks/cliffs.py`` and ``benchmarks/peers.py``). Like DPM-Solver++ (its data-prediction
twin), ``final_steps="auto"`` lowers the last two steps by a
:class:`~deis_jax.solvers.ei.FinalRule` of the grid (:data:`LOGRHO_FINAL_RULES`). With the
narrow rule ``FinalRule(1.2, 0.1, -0.5)`` that degree 1 keeps, degrees 2 and 3 dropped their
lowering abruptly as the NFE grew on the VP quadratic grid, whose last steps grow 1.2-1.9x
step to step at NFE 10: the ring's RMSE rose 2.03x (degree 2, NFE 12 -> 14) and 3.80x (degree 3,
11 -> 13). 3M's wide ramp ``FinalRule(2.0, 1.0)`` removes the degree-2 cliff (worst
``RMSE(n+2)/RMSE(n)`` there 0.95, at most 1.00 over NFE 5-50 on every problem and grid of
the sweep; against diffusers' DEIS order 3 the
geometric mean of the ratios is 0.89, was 0.95, with 7 cells above 1.02x instead of 6).
Degree 3 still had an error hump there (RMSE 4.8e-2 at NFE 6 up to 1.0e-1 at NFE 11):
extrapolating a cubic over steps longer than the spacing of its nodes. With
``curvature="auto"`` its ``v^2`` and ``v^3`` terms are weighted by ``s(h)`` and ``s(h)^2``
(:func:`~deis_jax.solvers.ei.damp_curvature`, ``h_c = 1``; 1 at ``h -> 0``, so the order is
kept): worst ratio 1.04, no significant cliff, and over the 144 cells of the peer benchmark's
problems and grids the geometric mean of RMSE(new) / RMSE(old) is 0.89 (24 cells worse than
1.02x, worst 1.47; 43 better than 0.98x). The scale 0.5 of 3M is too strong for noise
prediction (up to 1.7x worse on the 64-d mixture); degree 2 keeps the exact polynomial, since
damping it (``h_c`` 0.5-1.5) put 9-55 cells above 1.02x diffusers' DEIS.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_member
from deis_jax.solvers.base import make_solver, option_suffix
from deis_jax.solvers.ei import (
    FinalRule,
    MultistepCoeffs,
    apply_final_rule,
    damp_curvature,
    ei_weights,
    exp_linear,
    exp_poly_weights,
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
            c = apply_final_rule(schedule, ts, c, lambda d: pad_columns(
                exp_poly_weights(schedule, ts, d, "eps", g_map)[1], degree + 1), deg, rule)
        return MultistepCoeffs(ts[:-1], a, c)

    suffix = option_suffix(final_steps=final_steps, curvature=curvature)
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
