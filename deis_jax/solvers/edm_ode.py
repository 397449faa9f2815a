r"""EDM's deterministic samplers (Karras et al. 2022, Alg. 1 without churn) for any schedule.

In ``y = x / alpha`` the probability-flow ODE is ``dy/drho = eps(alpha y, t(rho))`` (DDIM
eq. 14, DEIS eq. 6; EDM eq. 4 with ``s = alpha``, ``sigma_EDM = rho``). With
``Delta rho = rho_{i+1} - rho_i``:

* **Euler** (1 NFE per step, order 1): ``y_{i+1} = y_i + Delta rho\, eps_i``. In ``x`` this is
  ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} Delta rho\, eps_i``, i.e. DDIM.
* **Heun** (order 2): ``y' = y_i + Delta rho\, eps_i``,
  ``y_{i+1} = y_i + (Delta rho / 2)(eps_i + eps(alpha_{i+1} y', t_{i+1}))``; the last step is
  an Euler step (EDM Alg. 1, line 9), so ``K`` steps cost ``2K - 1`` NFE.

``alpha_{i+1} Delta rho`` is computed as ``-sigma_{i+1} expm1(lambda_{i+1} - lambda_i)``
(no cancellation for small steps).

Heun runs on the row grid of :mod:`deis_jax.solvers.stages` (one interval per model call):
``nfe = 2K - 1`` gives a grid of ``2K`` intervals; Heun step ``k`` goes from ``ts[2k]`` to
``ts[2k+2]`` (its second call is at ``ts[2k+2]``; the interior point ``ts[2k+1]`` is not used,
and there the driver's trajectory repeats the step-start sample and a hook's edit is
discarded), and the final Euler step covers the last interval.
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax.solvers.base import MultistepCoeffs, make_solver, multistep_init, multistep_step
from deis_jax.solvers.stages import StageCoeffs, make_stage_solver

__all__ = ["edm_euler", "edm_heun"]


def _rho_weight(schedule, t_from, t_to):
    """``alpha_to (rho_to - rho_from)`` without cancellation."""
    h = schedule.log_snr(t_to) - schedule.log_snr(t_from)
    return -schedule.sigma(t_to) * jnp.expm1(h)


def _euler_coefficients(schedule, ts):
    ts = jnp.asarray(ts)
    a = jnp.exp(schedule.log_alpha(ts[1:]) - schedule.log_alpha(ts[:-1]))
    return MultistepCoeffs(ts[:-1], a, _rho_weight(schedule, ts[:-1], ts[1:])[:, None])


def edm_euler():
    """EDM Euler in ``rho`` (1 NFE per step, order 1); numerically DDIM."""
    return make_solver("edm_euler", 1, 1, _euler_coefficients, multistep_init, multistep_step)


def _heun_pattern(nfe: int):
    if nfe < 1 or nfe % 2 == 0:
        raise ValueError("bad nfe")
    return [2] * (nfe // 2) + [1]


def _heun_rows(schedule, ts, plan) -> StageCoeffs:
    ts = jnp.asarray(ts)
    b, e, j = plan.begin, plan.end, plan.stage
    a = jnp.exp(schedule.log_alpha(ts[e]) - schedule.log_alpha(ts[b]))
    w = _rho_weight(schedule, ts[b], ts[e])
    second = j == 1
    euler = plan.order == 1
    zero = jnp.zeros_like(w)
    c0 = jnp.where(second, 0.5 * w, w)
    c1 = jnp.where(second, 0.5 * w, zero)
    return StageCoeffs(
        t=jnp.where(second, ts[e], ts[b]),
        start=jnp.asarray(j == 0),
        use_x=jnp.asarray(~second),
        slot=jnp.asarray(j, jnp.int32),
        a=a,
        c=jnp.stack([c0, c1, zero], axis=-1),
        set_x=jnp.asarray(second | euler),
    )


def edm_heun():
    """EDM Heun in ``rho`` with a final Euler step: ``nfe = 2K - 1`` (odd), order 2."""
    return make_stage_solver(
        "edm_heun", 2, _heun_pattern, _heun_rows, model="eps",
        nfe_rule="EDM Heun uses 2 model calls per step and 1 on the last, so nfe must be odd "
        "(nfe = 2K - 1)",
    )
