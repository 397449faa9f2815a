r"""Multistep DEIS: tAB-DEIS (polynomial in ``t``), rhoAB-DEIS (in ``rho``) and
log-rho-AB DEIS (in ``log rho``).

Over step ``i`` the noise prediction is replaced by the Lagrange polynomial ``P_i`` through
the last ``r + 1`` evaluations ``(u_{i-j}, eps_{i-j})``, ``u`` the basis variable:

.. math::
   x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \sum_{j=0}^{r} C_{ij}\,\epsilon_{i-j},\qquad
   C_{ij} = \alpha_{i+1}\int_{t_i}^{t_{i+1}} \frac{d\rho}{d\tau}\,\ell_{ij}(u(\tau))\,d\tau .

Zhang & Chen 2023 (DEIS), eq. 14 (tAB) and Sec. 4 (rhoAB). Weights: Gauss--Legendre
quadrature in ``lambda`` (tAB), exact Gauss--Legendre in ``rho`` (rhoAB: the integrand is a
polynomial). The first ``r`` steps run at order ``0, 1, ..., r-1`` (rows of the table).
Order ``r + 1``, 1 NFE/step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from deis_jax.quadrature import ei_weights
from deis_jax.solvers.base import (
    MultistepCoeffs,
    check_order,
    exp_step_factors,
    make_solver,
    multistep_init,
    multistep_step,
)
from deis_jax.solvers.dpm_solver import exp_poly_weights

__all__ = ["tab_deis", "rhoab_deis", "logrho_deis"]


def _builder(order: int, basis: str):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        a, _ = exp_step_factors(schedule, ts)
        return MultistepCoeffs(ts[:-1], a, ei_weights(schedule, ts, order, basis))

    return coefficients


def tab_deis(order: int = 3):
    """tAB-DEIS of polynomial degree ``order`` in ``t`` (0..3); ``order = 0`` is DDIM."""
    order = check_order("order", order, (0, 1, 2, 3))
    return make_solver(f"tab{order}", order + 1, 1, _builder(order, "t"), multistep_init,
                       multistep_step)


def rhoab_deis(order: int = 3):
    """rhoAB-DEIS of polynomial degree ``order`` in ``rho`` (0..3); ``order = 0`` is DDIM."""
    order = check_order("order", order, (0, 1, 2, 3))
    return make_solver(f"rhoab{order}", order + 1, 1, _builder(order, "rho"), multistep_init,
                       multistep_step)


def _logrho_coefficients(order: int):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        a, c = exp_poly_weights(schedule, ts, np.minimum(np.arange(n), order), "eps")
        if c.shape[-1] < order + 1:
            c = jnp.pad(c, ((0, 0), (0, order + 1 - c.shape[-1])))
        return MultistepCoeffs(ts[:-1], a, c)

    return coefficients


def logrho_deis(order: int = 3):
    r"""log-rho AB-DEIS: Lagrange polynomial of degree ``order`` (0..3) in ``log rho = -lambda``,
    closed-form weights.

    The step integral ``-alpha_{i+1} int e^{-lambda} P_i(lambda) d lambda`` of the polynomial
    is exact in phi-functions (:func:`~deis_jax.solvers.dpm_solver.exp_poly_weights`):
    ``C_ij = sum_k p_jk (-sigma_{i+1} h_i k! phi_{k+1}(h_i))`` with ``p_jk`` the monomial
    coefficients of the Lagrange basis in ``(lambda - lambda_i)/h_i``. It is the
    noise-prediction twin of DPM-Solver++(3M) (Zhang & Chen 2023, Sec. 4; Lu et al. 2022b).
    Order ``order + 1``, 1 NFE/step; ``order = 0`` is DDIM.
    """
    order = check_order("order", order, (0, 1, 2, 3))
    return make_solver(f"logrho{order}", order + 1, 1, _logrho_coefficients(order),
                       multistep_init, multistep_step)
