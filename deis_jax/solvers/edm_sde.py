r"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2) for any schedule, in ``rho``-space.

With ``y = x / alpha`` and ``rho = sigma / alpha`` the probability-flow ODE is
``dy/drho = eps(alpha y, t(rho))`` (DEIS eq. 6; EDM eq. 4 with ``s = 1``). Step ``i`` first
*churns*: it raises the noise level from ``rho_i`` to ``hat rho_i = (1 + gamma_i) rho_i`` by
adding fresh noise, then takes a Heun step of the ODE back down to ``rho_{i+1}``:

.. math::
   \gamma_i = \begin{cases}\min(S_\mathrm{churn}/N,\ \sqrt2 - 1) & \rho_i\in[S_\min, S_\max]\\
              0 & \text{otherwise}\end{cases},\qquad
   \hat y = y_i + S_\mathrm{noise}\sqrt{\hat\rho_i^2 - \rho_i^2}\; z,

.. math::
   d = \epsilon(\alpha(\hat t)\hat y, \hat t),\quad \tilde y = \hat y + (\rho_{i+1}-\hat\rho_i) d,
   \quad y_{i+1} = \hat y + \tfrac12(\rho_{i+1}-\hat\rho_i)\big(d +
   \epsilon(\alpha_{i+1}\tilde y, t_{i+1})\big),

with ``hat t = t(hat rho_i)``. As in Alg. 2 the last step is a plain Euler step (EDM's last
step goes to ``sigma = 0``; here it ends at ``t_min``), so NFE = ``2N - 1``. ``S_churn = 0``
gives EDM's deterministic Heun sampler (Alg. 1, ``edm_heun``). The step is the Heun row of
:mod:`deis_jax.solvers.runge_kutta` started from the churned point (the noise enters its
table linearly); the final Euler step runs the same table with one stage. The churn
parameters are the solver's ``hparams``: traced, so new values do not recompile.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from deis_jax._checks import check_scalar, is_concrete
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.runge_kutta import TABLEAUX, rho_table, stage_init, stage_step

__all__ = ["edm_sde"]


def _coefficients(schedule, ts, *, S_churn, S_min, S_max, S_noise):
    ts = jnp.asarray(ts)
    n = ts.shape[0] - 1
    rho_i = schedule.rho(ts[:-1])
    in_range = (rho_i >= S_min) & (rho_i <= S_max)
    gamma = jnp.where(in_range, jnp.minimum(S_churn / n, math.sqrt(2.0) - 1.0), 0.0)
    churn = S_noise * rho_i * jnp.sqrt(gamma * (2.0 + gamma))  # sqrt(hat rho^2 - rho^2)
    t_hat = jnp.where(gamma > 0, schedule.t_from_rho(rho_i * (1.0 + gamma)), ts[:-1])
    return rho_table(schedule, ts, TABLEAUX["heun"], final=TABLEAUX["euler"], t_start=t_hat,
                     churn=churn)


_EDM_SDE = make_solver("edm_sde", 2, 2, _coefficients, stage_init, stage_step(2, "edm_sde"),
                       final_steps=((stage_step(1, "edm_sde"), 1),), stochastic=True)


def edm_sde(S_churn=40.0, S_min=0.0, S_max=math.inf, S_noise=1.0) -> Solver:
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2), NFE ``2N - 1``.

    Args:
      S_churn: total churn ``>= 0``; ``gamma_i = min(S_churn / N, sqrt(2) - 1)``.
      S_min, S_max: churn only while ``rho_i`` lies in ``[S_min, S_max]`` (``rho = sigma``
        for VE/EDM schedules).
      S_noise: scale ``> 0`` of the churn noise (1 is exact; EDM tuned 1.003--1.007).

    All four may be traced scalars (``jax.vmap`` over ``S_churn`` compiles once).

    Example:
      >>> import jax
      >>> from deis_jax import as_model, sample, schedules, testing
      >>> from deis_jax.solvers.edm_sde import edm_sde
      >>> sched = schedules.ve()
      >>> model = as_model(testing.ring_mixture().eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> x0 = sample(model, x_T, solver=edm_sde(S_churn=10.0), nfe=19,
      ...             key=jax.random.key(1))
    """
    S_churn = check_scalar("S_churn", S_churn, lower=0.0)
    S_min = check_scalar("S_min", S_min, lower=0.0)
    S_max = check_scalar("S_max", S_max, lower=0.0, allow_inf=True)
    S_noise = check_scalar("S_noise", S_noise, lower=0.0, lower_open=True)
    if is_concrete((S_min, S_max)) and not float(S_min) <= float(S_max):
        raise ValueError(f"need S_min <= S_max, got S_min={float(S_min)!r}, "
                         f"S_max={float(S_max)!r}")
    return _EDM_SDE.replace(hparams={"S_churn": S_churn, "S_min": S_min, "S_max": S_max,
                                     "S_noise": S_noise})
