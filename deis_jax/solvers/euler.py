r"""Euler and Heun in ``t`` on the probability-flow ODE, written with the velocity
``u(x, t) = dx/dt``: the baselines DEIS improves on, and what flow-matching users run.

The probability-flow ODE is ``dx/dt = u(x, t) = f(t) x + g(t)^2/(2 sigma_t) eps(x, t)``
(Song et al. 2021, eq. 13), which is ``alpha' x0 + sigma' eps`` -- exactly what a
flow-matching network predicts (``eps - x0`` on :func:`deis_jax.schedules.flow`; see
:meth:`deis_jax.Model.velocity`). With ``h_i = t_{i+1} - t_i``:

* **Euler** (1 NFE per step, order 1): ``x_{i+1} = x_i + h_i u(x_i, t_i)`` (Score-SDE eq. 13;
  DEIS Sec. 3; the sampler of rectified flow, Liu et al. 2023, and of SD3's
  ``FlowMatchEulerDiscreteScheduler``).
* **Heun** (order 2): ``x' = x_i + h_i u_i``,
  ``x_{i+1} = x_i + (h_i/2)(u_i + u(x', t_{i+1}))``, the last step an Euler step as in EDM
  Alg. 1 (line 9), so ``N`` steps cost ``2N - 1`` NFE (Karras et al. 2022 in ``t`` instead of
  ``rho``; on EDM, where ``t = rho`` and ``alpha = 1``, it is ``edm_heun``).

Both consume the velocity (``Solver.model == "velocity"``): the model's
:meth:`~deis_jax.Model.velocity`, which calls a velocity network as is and converts any other
prediction (:func:`~deis_jax.parameterization.convert`).
Tables: :func:`~deis_jax.solvers.runge_kutta.t_table`.
"""

from __future__ import annotations

from deis_jax.solvers.base import make_solver
from deis_jax.solvers.runge_kutta import TABLEAUX, stage_init, stage_step, t_table

__all__ = ["euler", "heun"]


def _euler_coefficients(schedule, ts):
    del schedule
    return t_table(ts, TABLEAUX["euler"])


def _heun_coefficients(schedule, ts):
    del schedule
    return t_table(ts, TABLEAUX["heun"], final=TABLEAUX["euler"])


_EULER = make_solver("euler", 1, 1, _euler_coefficients, stage_init, stage_step(1),
                     model="velocity")
_HEUN = make_solver("heun", 2, 2, _heun_coefficients, stage_init, stage_step(2),
                    final_steps=((stage_step(1), 1),), model="velocity")


def euler():
    """Euler in ``t`` on the velocity ``dx/dt`` (1 NFE per step, order 1)."""
    return _EULER


def heun():
    """Heun in ``t`` with a final Euler step: ``N`` steps, ``2N - 1`` NFE, order 2."""
    return _HEUN
