r"""rhoRK-DEIS: explicit Runge--Kutta on the rescaled probability-flow ODE.

With ``y = x / alpha`` the probability-flow ODE becomes ``dy/drho = eps(alpha y, t(rho))``
(DDIM eq. 14, DEIS eq. 6), with no stiff linear part. A Butcher tableau ``(A, b, c)`` gives

.. math::
   k_s = \epsilon\big(\alpha(\rho_i + c_s h)\,(y_i + h\textstyle\sum_{l<s} A_{sl} k_l),\;
         t(\rho_i + c_s h)\big), \qquad y_{i+1} = y_i + h \sum_s b_s k_s,
   \quad h = \rho_{i+1} - \rho_i .

Zhang & Chen 2023 (DEIS), Sec. 4 "rhoRK". Tableaux: midpoint and Heun (order 2, 2 NFE/step),
Kutta's third-order method (3 NFE/step), classical RK4 (4 NFE/step). The step is the stage
kernel of :mod:`deis_jax.solvers.runge_kutta`, whose table (stage times, ``alpha`` ratios,
``h``) is built before the scan.
"""

from __future__ import annotations

import functools

from deis_jax._checks import check_choice
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.runge_kutta import TABLEAUX, rho_table, stage_init, stage_step

__all__ = ["RK_METHODS", "rho_rk"]

RK_METHODS = ("midpoint", "heun", "kutta3", "rk4")


@functools.lru_cache(maxsize=None)
def _rho_rk(method: str) -> Solver:
    tab = TABLEAUX[method]

    def coefficients(schedule, ts):
        return rho_table(schedule, ts, tab)

    n = tab.b.shape[0]
    return make_solver(f"rho_{method}", tab.order, n, coefficients, stage_init, stage_step(n))


def rho_rk(method: str = "rk4") -> Solver:
    """rhoRK-DEIS with the named tableau (one of :data:`RK_METHODS`)."""
    check_choice("method", method, RK_METHODS)
    return _rho_rk(method)
