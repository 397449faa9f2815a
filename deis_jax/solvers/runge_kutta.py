r"""Explicit multi-stage steps: one kernel for every solver whose step makes several model
calls (rhoRK-DEIS, EDM Heun and its stochastic sampler, singlestep DPM-Solver(++)).

**Table.** A step ``t_i -> t_{i+1}`` with ``S`` stages is, in ``x`` and for any of these
methods, a lower-triangular linear map (the coefficients depend only on the grid, so they are
built before the scan; Hochbruck & Ostermann 2010 for exponential Runge--Kutta methods):

.. math::
   z_s = a_s\,x_i + \sum_{l<s} c_{sl}\, m(z_l, \tau_l) + n_s\,\xi,\quad s = 0..S-1,
   \qquad x_{i+1} = a_S\,x_i + \sum_{l<S} c_{Sl}\, m(z_l, \tau_l) + n_S\,\xi,

with stage times ``tau_s``, the model output ``m`` (eps or x0) and, for EDM's churn, one
Gaussian draw ``xi`` per step. :class:`StageCoeffs` stores ``tau (N, S)``, ``a (N, S+1)``,
``c (N, S+1, S)`` (the last row is the result) and ``n (N, S+1)``.

**Kernel.** :func:`stage_step` ``(n_stages)`` makes ``n_stages`` model calls and reads the
first ``n_stages`` stage rows and the result row, so a step of fewer stages (EDM's final
Euler step, DPM-Solver-fast's order-2/1 steps) runs on the same table format.

**Runge--Kutta in rho** (:func:`rho_table`). With ``y = x/alpha`` the probability-flow ODE
is ``dy/drho = eps(alpha y, t(rho))`` (DDIM eq. 14, DEIS eq. 6; EDM eq. 4), so a Butcher
tableau ``(A, b, c)`` over ``h = rho_{i+1} - rho_i`` gives

.. math::
   a_s = \frac{\alpha(\tau_s)}{\alpha_i},\quad c_{sl} = \alpha(\tau_s)\,h\,A_{sl},\quad
   a_S = \frac{\alpha_{i+1}}{\alpha_i},\quad c_{Sl} = \alpha_{i+1}\,h\,b_l,\quad
   \rho(\tau_s) = \rho_i + c_s h

(Zhang & Chen 2023, Sec. 4 "rhoRK"; Karras et al. 2022, Alg. 1--2 with ``s = alpha``).
``h`` is computed as ``rho_i expm1(lambda_i - lambda_{i+1})``, free of cancellation.

**Runge--Kutta in t** (:func:`t_table`) on ``dx/dt = u(x, t)`` with the velocity model ``u``
(:meth:`deis_jax.Model.velocity`) and ``h = t_{i+1} - t_i``: ``a = 1``,
``c_{sl} = h A_{sl}``, ``c_{Sl} = h b_l``, ``tau_s = t_i + c_s h`` (Euler and Heun in ``t``,
the flow-matching baselines).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import require_key
from deis_jax.solvers.noise import per_sample_normal

__all__ = ["TABLEAUX", "Tableau", "StageCoeffs", "StageState", "stage_init", "stage_step",
           "rho_table", "t_table"]


class Tableau(NamedTuple):
    """A Butcher tableau (static NumPy data)."""

    a: np.ndarray  # (S, S), strictly lower
    b: np.ndarray  # (S,)
    c: np.ndarray  # (S,)
    order: int


TABLEAUX = {
    "euler": Tableau(np.zeros((1, 1)), np.array([1.0]), np.array([0.0]), 1),
    "midpoint": Tableau(np.array([[0, 0], [0.5, 0]]), np.array([0, 1.0]), np.array([0, 0.5]), 2),
    "heun": Tableau(np.array([[0, 0], [1.0, 0]]), np.array([0.5, 0.5]), np.array([0, 1.0]), 2),
    "kutta3": Tableau(
        np.array([[0, 0, 0], [0.5, 0, 0], [-1.0, 2.0, 0]]),
        np.array([1 / 6, 2 / 3, 1 / 6]),
        np.array([0, 0.5, 1.0]),
        3,
    ),
    "rk4": Tableau(
        np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]]),
        np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        np.array([0, 0.5, 0.5, 1.0]),
        4,
    ),
}


class StageCoeffs(NamedTuple):
    """Per-step table of an explicit multi-stage step (module docstring)."""

    t: Any  # (N, S) stage times
    a: Any  # (N, S+1) weight of x_i in each stage input; last: in the result
    c: Any  # (N, S+1, S) weights of the stage outputs (row s uses columns < s)
    noise: Any  # (N, S+1) weight of the step's Gaussian draw, or None (deterministic)


class StageState(NamedTuple):
    x: Any


def stage_init(x, coeffs: StageCoeffs) -> StageState:
    del coeffs
    return StageState(x)


@functools.lru_cache(maxsize=None)
def stage_step(n_stages: int, name: str | None = None):
    """The step kernel with ``n_stages`` model calls; ``name`` (a stochastic solver's name)
    makes it draw the table's noise with the step key."""

    def step(model_fn, state: StageState, co: StageCoeffs, key=None) -> StageState:
        x = state.x
        dtype = x.dtype
        xi = None
        if name is not None:
            xi = per_sample_normal(require_key(name, key), x.shape, dtype)
        outs = []
        for s in list(range(n_stages)) + [-1]:
            y = co.a[s].astype(dtype) * x
            if xi is not None:
                y = y + co.noise[s].astype(dtype) * xi
            for l_, out in enumerate(outs):
                y = y + co.c[s, l_].astype(dtype) * out
            if s >= 0:
                outs.append(model_fn(y, co.t[s]))
        return StageState(y)

    return step


def _final_b(tableau: Tableau, final: Tableau | None, n_steps_shape, dtype):
    """Result weights ``(N, S)``: the tableau's ``b``, the last row ``final``'s (padded)."""
    b = jnp.broadcast_to(jnp.asarray(tableau.b, dtype), n_steps_shape)
    if final is not None:
        b = b.at[-1].set(jnp.pad(jnp.asarray(final.b, dtype), (0, b.shape[1] - final.b.size)))
    return b


def t_table(ts, tableau: Tableau, *, final: Tableau | None = None) -> StageCoeffs:
    """Table of a Runge--Kutta method in ``t`` on ``dx/dt = u(x, t)`` (module docstring) for
    every step of ``ts`` (either direction; may be traced); ``final``: a tableau with no more
    stages for the last step (EDM's final Euler step)."""
    ts = jnp.asarray(ts)
    t_from, t_to = ts[:-1], ts[1:]
    h = t_to - t_from
    c = tableau.c[None, :]
    t_stage = jnp.where(c == 1, t_to[:, None], t_from[:, None] + h[:, None] * c)
    b = _final_b(tableau, final, t_stage.shape, h.dtype)
    a = jnp.ones((t_stage.shape[0], t_stage.shape[1] + 1), h.dtype)
    coef = jnp.concatenate([h[:, None, None] * tableau.a[None],
                            h[:, None, None] * b[:, None, :]], axis=1)
    return StageCoeffs(t_stage, a, coef, None)


def rho_table(schedule, ts, tableau: Tableau, *, final: Tableau | None = None,
              t_start=None, churn=None) -> StageCoeffs:
    """Table of a Runge--Kutta method in ``rho`` (module docstring) for every step of ``ts``.

    Args:
      schedule: noise schedule.
      ts: grid ``(N+1,)``, either direction; may be traced.
      tableau: the method.
      final: a tableau with no more stages for the last step (EDM's Euler step).
      t_start: ``(N,)`` times the steps start from instead of ``ts[:-1]`` (EDM's churned
        level ``hat t``; the step still maps ``x_i`` at ``ts[i]`` to ``ts[i+1]``).
      churn: ``(N,)`` standard deviation, in ``y = x/alpha``, of the noise added at the step
        start (``y_hat = y_i + churn xi``).
    """
    ts = jnp.asarray(ts)
    t_from = ts[:-1] if t_start is None else t_start
    t_to = ts[1:]
    lam_from = schedule.log_snr(t_from)
    h = jnp.exp(-lam_from) * jnp.expm1(lam_from - schedule.log_snr(t_to))
    c = tableau.c[None, :]
    t_stage = schedule.t_from_rho(jnp.exp(-lam_from)[:, None] + h[:, None] * c)
    # Stages at the step ends use the grid times exactly (no inverse round-off).
    t_stage = jnp.where(c == 0, t_from[:, None], jnp.where(c == 1, t_to[:, None], t_stage))
    log_alpha_i = schedule.log_alpha(ts[:-1])
    alpha_stage = schedule.alpha(t_stage)
    alpha_next = schedule.alpha(t_to)
    b = _final_b(tableau, final, t_stage.shape, h.dtype)
    a = jnp.concatenate([jnp.exp(schedule.log_alpha(t_stage) - log_alpha_i[:, None]),
                         jnp.exp(schedule.log_alpha(t_to) - log_alpha_i)[:, None]], axis=-1)
    coef = jnp.concatenate([(alpha_stage * h[:, None])[:, :, None] * tableau.a[None],
                            (alpha_next * h)[:, None, None] * b[:, None, :]], axis=1)
    noise = None
    if churn is not None:
        noise = churn[:, None] * jnp.concatenate([alpha_stage, alpha_next[:, None]], axis=-1)
    return StageCoeffs(t_stage, a, coef, noise)
