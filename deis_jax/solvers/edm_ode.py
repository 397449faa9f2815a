r"""EDM's deterministic samplers (Karras et al. 2022, Alg. 1 without churn) for any schedule.

In ``y = x / alpha`` the probability-flow ODE is ``dy/drho = eps(alpha y, t(rho))`` (DDIM
eq. 14, DEIS eq. 6; EDM eq. 4 with ``s = alpha``, ``sigma_EDM = rho``). With
``Delta rho = rho_{i+1} - rho_i``:

* **Euler** (1 NFE per step, order 1): ``y_{i+1} = y_i + Delta rho\, eps_i``. In ``x`` this is
  ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} Delta rho\, eps_i``, i.e. DDIM.
* **Heun** (order 2): ``y' = y_i + Delta rho\, eps_i``,
  ``y_{i+1} = y_i + (Delta rho / 2)(eps_i + eps(alpha_{i+1} y', t_{i+1}))`` -- the Heun
  tableau of rhoRK-DEIS (:mod:`deis_jax.solvers.runge_kutta`; ``rho_heun`` is the same method
  on every step). As in EDM Alg. 1 (line 9), the last step is an Euler step, so ``N`` steps
  cost ``2N - 1`` NFE; step ``i`` goes from ``ts[i]`` to ``ts[i+1]``. On ``timesteps(schedule,
  N, "edm")`` this is Karras's sampler on his ``N``-step grid with its last point at
  ``t_min`` instead of 0 (where the final Euler step would return the denoiser's output).
"""

from __future__ import annotations

from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ddim import ddim_coefficients
from deis_jax.solvers.ei import multistep_init, multistep_step
from deis_jax.solvers.runge_kutta import TABLEAUX, rho_table, stage_init, stage_step

__all__ = ["edm_euler", "edm_heun"]

_EDM_EULER = make_solver("edm_euler", 1, 1, ddim_coefficients, multistep_init, multistep_step)


def _heun_coefficients(schedule, ts):
    return rho_table(schedule, ts, TABLEAUX["heun"], final=TABLEAUX["euler"])


_EDM_HEUN = make_solver("edm_heun", 2, 2, _heun_coefficients, stage_init, stage_step(2),
                        final_steps=((stage_step(1), 1),))


def edm_euler():
    """EDM Euler in ``rho`` (1 NFE per step, order 1); numerically DDIM."""
    return _EDM_EULER


def edm_heun():
    """EDM Heun in ``rho`` with a final Euler step: ``N`` steps, ``2N - 1`` NFE, order 2."""
    return _EDM_HEUN
