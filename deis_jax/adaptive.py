r"""Adaptive black-box ODE solves of the probability-flow ODE (diffrax), in either direction.

The probability-flow ODE ``dx/dt = f x - g^2/2 nabla log p_t`` (Song et al. 2021, eq. 13) is
integrated in the half log-SNR ``lambda = log(alpha/sigma)`` instead of ``t``:

.. math::
   \frac{dx}{d\lambda} = \frac{d\log\alpha}{d\lambda}\,x - \sigma\,\epsilon(x, t(\lambda)),
   \qquad \frac{d\log\alpha}{d\lambda} = \frac{f(t)}{\dot\lambda(t)},

(``= sigma^2`` for VP, 0 for VE). It is the same ODE, but its coefficients stay bounded as
``t -> t_min`` (in ``t`` the coefficient ``g^2/(2 sigma)`` blows up like ``t^{-1/2}`` for VP),
so an explicit adaptive Runge--Kutta method with a PID step-size controller (diffrax's
``Tsit5`` or ``Dopri5``) needs few steps. This replaces Score-SDE's ``scipy`` RK45 loop
(Song et al. 2021, Sec. 4.3 and App. D) with one jitted ``while_loop``: no host round-trips.

Two batching modes:

* ``per_sample=False`` (Score-SDE's choice): the batch is one ODE state; all samples share the
  step sizes (error norm: RMS over the whole batch) and one model call evaluates the batch.
* ``per_sample=True``: ``jax.vmap`` over samples, each with its own steps and error control.

Sampling runs ``t_max -> t_min``; encoding (data -> noise, for likelihoods and inversion)
runs ``t_min -> t_max``. ``rtol``/``atol`` are traced, so changing them does not recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from deis_jax import _callables
from deis_jax._checks import (
    check_all_finite, check_batch, check_callable, check_choice, check_int, check_scalar,
    check_tolerance, is_concrete)
from deis_jax.grids import check_time_in_range
from deis_jax.parameterization import PREDICTIONS, as_eps_fn
from deis_jax.precision import check_dtype, model_in_dtype, state_dtype
from deis_jax.schedules import Schedule, check_schedule

__all__ = ["ODESolution", "solve_ode", "ADAPTIVE_SOLVERS"]

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
ADAPTIVE_SOLVERS = tuple(_SOLVERS)
# Model calls made by diffrax for these 7-stage first-same-as-last tableaux: 6 per attempted
# (accepted or rejected) step plus 1 up front (checked against a call counter in the tests).
_EVALS_PER_STEP = 6
_EVALS_AT_START = 1


class ODESolution(NamedTuple):
    """Result of :func:`solve_ode`.

    Attributes:
      x: the solution at ``t_end``, shape of ``x_T``.
      nfe: model calls made (int32): a scalar for the shared-steps mode (one call evaluates
        the whole batch), shape ``(batch,)`` per sample with ``per_sample=True``.
      n_steps: attempted steps (accepted + rejected), same shape as ``nfe``.
      success: whether the solve finished within ``max_steps`` (bool array).
    """

    x: Any
    nfe: Any
    n_steps: Any
    success: Any


def _vector_field(eps_fn: Callable, schedule: Schedule):
    def field(lam, x, args):
        del args
        t = schedule.t_from_log_snr(lam)
        one = jnp.ones_like(t)
        _, dlog_alpha = jax.jvp(schedule.log_alpha, (t,), (one,))
        _, dlam = jax.jvp(schedule.log_snr, (t,), (one,))
        eps = eps_fn(x, jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype))
        return ((dlog_alpha / dlam) * x - schedule.sigma(t) * eps).astype(x.dtype)

    return field


@functools.partial(jax.jit, static_argnames=("model", "prediction", "solver", "per_sample",
                                               "max_steps", "model_dtype"))
def _solve(model, prediction, solver, per_sample, max_steps, model_dtype, model_data, params,
           schedule, x_T, t_start, t_end, rtol, atol):
    model_fn = _callables.merge(model, model_data)
    _callables.check_model(model_fn, params, jax.ShapeDtypeStruct(x_T.shape, model_dtype),
                           jax.ShapeDtypeStruct(x_T.shape[:1], x_T.dtype))
    eps_fn = as_eps_fn(
        model_in_dtype(lambda x, t: _callables.call_model(model_fn, params, x, t), model_dtype),
        schedule, prediction)
    lam0 = schedule.log_snr(t_start).astype(x_T.dtype)
    lam1 = schedule.log_snr(t_end).astype(x_T.dtype)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def solve(x0, field):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), _SOLVERS[solver](), lam0, lam1, None, x0,
            stepsize_controller=controller, max_steps=max_steps, throw=False,
        )
        n_steps = sol.stats["num_steps"].astype(jnp.int32)
        ok = sol.result == diffrax.RESULTS.successful
        return sol.ys[-1], n_steps, ok

    if per_sample:
        batched = _vector_field(eps_fn, schedule)

        def field(lam, x, args):  # each vmapped solve holds one sample: a batch of 1
            return batched(lam, x[None], args)[0]

        x, n_steps, ok = jax.vmap(lambda x0: solve(x0, field))(x_T)
    else:
        x, n_steps, ok = solve(x_T, _vector_field(eps_fn, schedule))
    return x, _EVALS_AT_START + _EVALS_PER_STEP * n_steps, n_steps, ok


def solve_ode(
    model_fn: Callable,
    schedule: Schedule,
    x_T,
    *,
    params=None,
    t_start=None,
    t_end=None,
    solver: str = "tsit5",
    rtol=1e-5,
    atol=1e-5,
    per_sample: bool = False,
    prediction: str = "eps",
    max_steps: int = 4096,
    model_dtype=None,
) -> ODESolution:
    r"""Solve the probability-flow ODE adaptively from ``t_start`` to ``t_end``.

    Args:
      model_fn: ``model_fn(params, x, t)`` with ``params``, else ``model_fn(x, t)``;
        ``x: (batch, ...)``, ``t: (batch,)``, returning the prediction named by
        ``prediction`` (as in :func:`deis_jax.sample`).
      schedule: the model's noise schedule.
      x_T: the state at ``t_start``, shape ``(batch, ...)``.
      params: the model's parameters, traced data (new parameters do not recompile).
      t_start, t_end: start and end times (default ``schedule.t_max -> schedule.t_min``,
        i.e. sampling; swap them to encode data into noise), inside the schedule's
        ``[t_min, t_max]``. May be traced (then unchecked).
      solver: ``"tsit5"`` or ``"dopri5"`` (5th-order explicit RK with an embedded 4th-order
        error estimate).
      rtol, atol: relative and absolute tolerances (> 0); traced, so new values do not
        recompile.
      per_sample: give every sample its own adaptive steps (``jax.vmap``) instead of
        sharing steps over the batch.
      prediction: what ``model_fn`` predicts (see :mod:`deis_jax.parameterization`).
      max_steps: cap on attempted steps (static). When reached the solve stops with
        ``success=False``; called eagerly, that raises ``RuntimeError``.
      model_dtype: the dtype the model receives ``x`` in (default ``x_T``'s); the ODE state
        and time stay in float32 (float64 for a float64 ``x_T``), as in
        :func:`deis_jax.sample` (see :mod:`deis_jax.precision`).

    Returns:
      :class:`ODESolution` ``(x, nfe, n_steps, success)``; ``nfe = 1 + 6 n_steps`` is the
      exact number of model calls (per sample with ``per_sample=True``; under ``vmap`` a
      batched call then runs ``max(nfe)`` times).

    Example:
      >>> import jax
      >>> from deis_jax import schedules, testing
      >>> from deis_jax.adaptive import solve_ode
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.ring_mixture()
      >>> x_T = sched.prior_sample(jax.random.key(0), (16, 2))
      >>> sol = solve_ode(gmm.eps_fn(sched), sched, x_T, rtol=1e-4, atol=1e-4)
      >>> sol.x.shape
      (16, 2)
    """
    check_choice("solver", solver, ADAPTIVE_SOLVERS)
    check_choice("per_sample", per_sample, (True, False))
    max_steps = check_int("max_steps", max_steps, minimum=1)
    check_choice("prediction", prediction, PREDICTIONS)
    check_callable("model_fn", model_fn,
                   "model_fn(x, t)" if params is None else "model_fn(params, x, t)")
    check_schedule(schedule)
    x_T = check_batch("x_T", x_T)
    check_all_finite("x_T", x_T)
    model_dtype = x_T.dtype if model_dtype is None else check_dtype("model_dtype", model_dtype)
    x_T = x_T.astype(state_dtype(x_T.dtype))
    check_tolerance("rtol", rtol, x_T.dtype)
    check_tolerance("atol", atol, x_T.dtype)
    t_start = schedule.t_max if t_start is None else check_scalar("t_start", t_start)
    t_end = schedule.t_min if t_end is None else check_scalar("t_end", t_end)
    tol = 8 * float(jnp.finfo(x_T.dtype).eps)
    check_time_in_range(schedule, "t_start", t_start, tol)
    check_time_in_range(schedule, "t_end", t_end, tol)
    if is_concrete((t_start, t_end)) and float(t_start) == float(t_end):
        raise ValueError(f"t_start and t_end must differ, got t_start={t_start!r}, "
                         f"t_end={t_end!r}")
    dtype = x_T.dtype
    model_static, model_data = _callables.split(model_fn)
    x, nfe, n_steps, ok = _solve(
        model_static, prediction, solver, bool(per_sample), max_steps,
        jnp.dtype(model_dtype).name, model_data, params, schedule, x_T,
        jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype), jnp.asarray(rtol, dtype),
        jnp.asarray(atol, dtype),
    )
    if is_concrete(ok) and not bool(jnp.all(ok)):
        raise RuntimeError(
            f"solve_ode did not reach t_end within max_steps={max_steps} steps; raise max_steps "
            "or loosen rtol/atol"
        )
    return ODESolution(x, nfe, n_steps, ok)
