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
gives EDM's deterministic Heun sampler (Alg. 1). The churn parameters may be traced scalars.
The Euler/Heun choice of the last step is a ``lax.cond`` on a per-step flag of the table.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deis_jax._checks import check_int, is_concrete
from deis_jax.solvers.base import Solver
from deis_jax.solvers.noise import check_scalar, per_sample_normal, require_key

__all__ = ["edm_sde", "EDMState", "EDMCoeffs"]


class EDMState(NamedTuple):
    x: Any


class EDMCoeffs(NamedTuple):
    alpha: Any  # (N,) alpha_i (x -> y)
    churn: Any  # (N,) S_noise sqrt(hat rho^2 - rho_i^2)
    t_hat: Any  # (N,) time of the churned noise level
    alpha_hat: Any  # (N,)
    h: Any  # (N,) rho_{i+1} - hat rho_i
    t_next: Any  # (N,)
    alpha_next: Any  # (N,)
    heun: Any  # (N,) bool: second-order correction (False on the last step)


def edm_sde(S_churn=40.0, S_min=0.0, S_max=math.inf, S_noise=1.0) -> Solver:
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2), NFE ``2N - 1``.

    Args:
      S_churn: total churn ``>= 0``; ``gamma_i = min(S_churn / N, sqrt(2) - 1)``.
      S_min, S_max: churn only while ``rho_i`` lies in ``[S_min, S_max]`` (``rho = sigma``
        for VE/EDM schedules).
      S_noise: scale ``> 0`` of the churn noise (1 is exact; EDM tuned 1.003--1.007).

    Example:
      >>> import jax
      >>> from deis_jax import sample, schedules, testing
      >>> from deis_jax.solvers.edm_sde import edm_sde
      >>> sched = schedules.ve()
      >>> gmm = testing.ring_mixture()
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> x0 = sample(gmm.eps_fn(sched), sched, x_T, solver=edm_sde(S_churn=10.0), nfe=19,
      ...             key=jax.random.key(1))
    """
    S_churn = check_scalar("S_churn", S_churn, lower=0.0)
    S_min = check_scalar("S_min", S_min, lower=0.0)
    S_max = check_scalar("S_max", S_max, lower=0.0, allow_inf=True)
    S_noise = check_scalar("S_noise", S_noise, lower=0.0, lower_open=True)
    if is_concrete((S_min, S_max)) and not float(S_min) <= float(S_max):
        raise ValueError(f"need S_min <= S_max, got S_min={float(S_min)!r}, "
                         f"S_max={float(S_max)!r}")

    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        rho = schedule.rho(ts)
        rho_i = rho[:-1]
        in_range = (rho_i >= S_min) & (rho_i <= S_max)
        gamma = jnp.where(in_range, jnp.minimum(S_churn / n, math.sqrt(2.0) - 1.0), 0.0)
        rho_hat = rho_i * (1.0 + gamma)
        churn = S_noise * rho_i * jnp.sqrt(gamma * (2.0 + gamma))
        t_hat = jnp.where(gamma > 0, schedule.t_from_rho(rho_hat), ts[:-1])
        alpha = schedule.alpha(ts)
        return EDMCoeffs(alpha[:-1], churn, t_hat, schedule.alpha(t_hat), rho[1:] - rho_hat,
                         ts[1:], alpha[1:], jnp.arange(n) < n - 1)

    def step(model_fn, state: EDMState, co: EDMCoeffs, key=None) -> EDMState:
        key = require_key("edm_sde", key)
        dtype = state.x.dtype
        z = per_sample_normal(key, state.x.shape, dtype)
        y_hat = state.x / co.alpha.astype(dtype) + co.churn.astype(dtype) * z
        h = co.h.astype(dtype)
        d = model_fn(co.alpha_hat.astype(dtype) * y_hat, co.t_hat)
        y_euler = y_hat + h * d

        def heun(y_euler):
            d2 = model_fn(co.alpha_next.astype(dtype) * y_euler, co.t_next)
            return y_hat + (0.5 * h) * (d + d2)

        y = jax.lax.cond(co.heun, heun, lambda y: y, y_euler)
        return EDMState(co.alpha_next.astype(dtype) * y)

    def nfe_for_steps(n_steps: int) -> int:
        return 2 * n_steps - 1

    def steps_for_nfe(nfe: int) -> int:
        nfe = check_int("nfe", nfe, minimum=1)
        if nfe % 2 == 0:
            raise ValueError(f"solver 'edm_sde' uses 2N - 1 model calls for N steps, so nfe "
                             f"must be odd; got nfe={nfe}")
        return (nfe + 1) // 2

    return Solver("edm_sde", 2, 2, coefficients, lambda x, coeffs: EDMState(x), step,
                  nfe_for_steps, steps_for_nfe, stochastic=True)
