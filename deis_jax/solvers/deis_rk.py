r"""rhoRK-DEIS: explicit Runge--Kutta on the rescaled probability-flow ODE.

With ``y = x / alpha`` the probability-flow ODE becomes ``dy/drho = eps(alpha y, t(rho))``
(DDIM eq. 14, DEIS eq. 6), with no stiff linear part. A Butcher tableau ``(A, b, c)`` gives

.. math::
   k_s = \epsilon\big(\alpha(\rho_i + c_s h)\,(y_i + h\textstyle\sum_{l<s} A_{sl} k_l),\;
         t(\rho_i + c_s h)\big), \qquad y_{i+1} = y_i + h \sum_s b_s k_s,
   \quad h = \rho_{i+1} - \rho_i .

Zhang & Chen 2023 (DEIS), Sec. 4 "rhoRK". Tableaux: midpoint and Heun (order 2, 2 NFE/step),
Kutta's third-order method (3 NFE/step), classical RK4 (4 NFE/step). Stage times, ``alpha``
and ``h`` are precomputed per step; the tableau is static NumPy data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice
from deis_jax.solvers.base import make_solver

__all__ = ["TABLEAUX", "rho_rk", "RKState", "RKCoeffs"]


class _Tableau(NamedTuple):
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int


TABLEAUX = {
    "midpoint": _Tableau(np.array([[0, 0], [0.5, 0]]), np.array([0, 1.0]), np.array([0, 0.5]), 2),
    "heun": _Tableau(np.array([[0, 0], [1.0, 0]]), np.array([0.5, 0.5]), np.array([0, 1.0]), 2),
    "kutta3": _Tableau(
        np.array([[0, 0, 0], [0.5, 0, 0], [-1.0, 2.0, 0]]),
        np.array([1 / 6, 2 / 3, 1 / 6]),
        np.array([0, 0.5, 1.0]),
        3,
    ),
    "rk4": _Tableau(
        np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]]),
        np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        np.array([0, 0.5, 0.5, 1.0]),
        4,
    ),
}


class RKState(NamedTuple):
    x: Any


class RKCoeffs(NamedTuple):
    t_stage: Any  # (N, S) model time of each stage
    alpha_stage: Any  # (N, S)
    alpha: Any  # (N,) alpha at t_i
    alpha_next: Any  # (N,)
    h: Any  # (N,) rho_{i+1} - rho_i


def _coefficients(tab: _Tableau):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        rho = schedule.rho(ts)
        h = rho[1:] - rho[:-1]
        rho_stage = rho[:-1, None] + h[:, None] * tab.c[None, :]
        t_stage = schedule.t_from_rho(rho_stage)
        # Stages at the step ends use the grid times exactly (no inverse round-off).
        t_stage = jnp.where(tab.c == 0, ts[:-1, None], t_stage)
        t_stage = jnp.where(tab.c == 1, ts[1:, None], t_stage)
        return RKCoeffs(t_stage, schedule.alpha(t_stage), schedule.alpha(ts[:-1]),
                        schedule.alpha(ts[1:]), h)

    return coefficients


def _step(tab: _Tableau):
    n_stages = tab.b.shape[0]

    def step(model_fn, state: RKState, co: RKCoeffs, key=None):
        del key
        dtype = state.x.dtype
        h = co.h.astype(dtype)
        y = state.x / co.alpha.astype(dtype)
        ks = []
        for s in range(n_stages):
            y_s = y
            for l_, a_sl in enumerate(tab.a[s, :s]):
                if a_sl != 0:
                    y_s = y_s + (h * float(a_sl)) * ks[l_]
            ks.append(model_fn(co.alpha_stage[s].astype(dtype) * y_s, co.t_stage[s]))
        y_next = y + h * sum(float(b) * k for b, k in zip(tab.b, ks) if b != 0)
        return RKState(co.alpha_next.astype(dtype) * y_next)

    return step


def rho_rk(method: str = "rk4"):
    """rhoRK-DEIS with the named tableau (one of :data:`TABLEAUX`)."""
    check_choice("method", method, TABLEAUX)
    tab = TABLEAUX[method]
    n = tab.b.shape[0]
    return make_solver(f"rho_{method}", tab.order, n, _coefficients(tab),
                       lambda x, coeffs: RKState(x), _step(tab))
