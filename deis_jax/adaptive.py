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

from deis_jax._checks import (
    check_choice, check_int, check_scalar, check_tolerance, is_concrete)
from deis_jax.grids import check_time_in_range
from deis_jax.model import Model, batched_cond, takes_model
from deis_jax.sampling import prepare
from deis_jax.schedules import Schedule

__all__ = ["ODESolution", "solve_ode", "ADAPTIVE_SOLVERS", "per_sample_map"]

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


def pf_ode_field(eps_fn: Callable, schedule: Schedule) -> Callable:
    r"""The probability-flow ODE in half log-SNR, ``field(lam, x) = dx/dlambda``:
    ``(d log alpha/d lambda) x - sigma eps(x, t(lambda))`` (module docstring).

    The one place this vector field is written: :func:`solve_ode` integrates it, and
    :func:`deis_jax.likelihood.log_likelihood` differentiates it for the divergence.
    ``eps_fn(x, t)`` takes ``x: (batch, ...)`` and ``t: (batch,)``.
    """

    def field(lam, x):
        t = schedule.t_from_log_snr(lam)
        one = jnp.ones_like(t)
        _, dlog_alpha = jax.jvp(schedule.log_alpha, (t,), (one,))
        _, dlam = jax.jvp(schedule.log_snr, (t,), (one,))
        eps = eps_fn(x, jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype))
        return ((dlog_alpha / dlam) * x - schedule.sigma(t) * eps).astype(x.dtype)

    return field


def per_sample_map(fn: Callable, model: Model, x):
    """``fn(model_i, x_i)`` for every sample ``i`` under ``jax.vmap``, each ``x_i`` a batch of
    one and ``model_i`` holding that sample's condition (shared condition leaves are
    broadcast to the batch first)."""
    if model.cond is None:
        return jax.vmap(lambda x_i: fn(model, x_i[None]))(x)
    cond = batched_cond(model.cond, x.shape[0])
    return jax.vmap(lambda x_i, c_i: fn(model.replace(cond=jax.tree_util.tree_map(
        lambda v: v[None], c_i)), x_i[None]))(x, cond)


def integrate(field: Callable, y0, lam0, lam1, solver: str, rtol, atol, max_steps: int):
    """Integrate ``dy/dlambda = field(lam, y)`` (``y`` any pytree of arrays) from ``lam0`` to
    ``lam1`` with diffrax's adaptive ``solver`` and a PID controller (RMS error norm over all
    leaves). Returns ``(y(lam1), attempted steps (int32), success (bool))``."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda lam, y, args: field(lam, y)), _SOLVERS[solver](), lam0, lam1,
        None, y0, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    return (jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys),
            sol.stats["num_steps"].astype(jnp.int32), ok)


def nfe_for_steps(n_steps):
    """Model calls of a diffrax Tsit5/Dopri5 solve with ``n_steps`` attempted steps."""
    return _EVALS_AT_START + _EVALS_PER_STEP * n_steps


@functools.partial(jax.jit, static_argnames=("solver", "per_sample", "max_steps"))
def _solve(model, solver, per_sample, max_steps, x_T, t_start, t_end, rtol, atol):
    schedule = model.schedule
    lam0 = schedule.log_snr(t_start).astype(x_T.dtype)
    lam1 = schedule.log_snr(t_end).astype(x_T.dtype)

    def solve(m, x0):
        return integrate(pf_ode_field(m.eps, schedule), x0, lam0, lam1, solver, rtol, atol,
                         max_steps)

    if per_sample:  # each vmapped solve holds one sample: a batch of 1
        x, n_steps, ok = per_sample_map(solve, model, x_T)
        x = x[:, 0]
    else:
        x, n_steps, ok = solve(model, x_T)
    return x, nfe_for_steps(n_steps), n_steps, ok


def check_solve_args(name: str, model, x, start, end, *, solver, per_sample, max_steps, rtol,
                     atol):
    """The eager checks of an adaptive solve (:func:`solve_ode`, the likelihood): returns
    ``(model, x in the state dtype, (start time, end time), max_steps)``.

    ``start`` and ``end`` are ``(argument name, value or None, default)`` with the default
    ``"t_min"`` or ``"t_max"`` (the schedule's); the times must lie in the schedule's range and
    differ.
    """
    check_choice("solver", solver, ADAPTIVE_SOLVERS)
    check_choice("per_sample", per_sample, (True, False))
    max_steps = check_int("max_steps", max_steps, minimum=1)
    model, x = prepare(model, x, name=name)
    check_tolerance("rtol", rtol, x.dtype)
    check_tolerance("atol", atol, x.dtype)
    tol = 8 * float(jnp.finfo(x.dtype).eps)
    times = []
    schedule = model.schedule
    for arg, value, default in (start, end):
        value = getattr(schedule, default) if value is None else check_scalar(arg, value)
        check_time_in_range(schedule, arg, value, tol)
        times.append(value)
    if is_concrete(times) and float(times[0]) == float(times[1]):
        raise ValueError(f"{start[0]} and {end[0]} must differ, got {start[0]}={times[0]!r}, "
                         f"{end[0]}={times[1]!r}")
    return model, x, tuple(times), max_steps


@takes_model
def solve_ode(
    model: Model,
    x_T,
    *,
    t_start=None,
    t_end=None,
    solver: str = "tsit5",
    rtol=1e-5,
    atol=1e-5,
    per_sample: bool = False,
    max_steps: int = 4096,
) -> ODESolution:
    r"""Solve the probability-flow ODE adaptively from ``t_start`` to ``t_end``.

    Args:
      model: a :class:`~deis_jax.Model` (:func:`deis_jax.as_model`); its parameters and
        condition are traced data (new values do not recompile).
      x_T: the state at ``t_start``, shape ``(batch, ...)``; its dtype sets the state dtype
        as in :func:`deis_jax.sample` (see :mod:`deis_jax.precision`).
      t_start, t_end: start and end times (default ``schedule.t_max -> schedule.t_min``,
        i.e. sampling; swap them to encode data into noise), inside the schedule's
        ``[t_min, t_max]``. May be traced (then unchecked).
      solver: ``"tsit5"`` or ``"dopri5"`` (5th-order explicit RK with an embedded 4th-order
        error estimate).
      rtol, atol: relative and absolute tolerances (> 0); traced, so new values do not
        recompile.
      per_sample: give every sample its own adaptive steps (``jax.vmap``; a per-sample
        condition is mapped with its sample) instead of sharing steps over the batch.
      max_steps: cap on attempted steps (static). When reached the solve stops with
        ``success=False``; called eagerly, that raises ``RuntimeError``.

    Returns:
      :class:`ODESolution` ``(x, nfe, n_steps, success)``; ``nfe = 1 + 6 n_steps`` is the
      exact number of model calls (per sample with ``per_sample=True``; under ``vmap`` a
      batched call then runs ``max(nfe)`` times).

    Example:
      >>> import jax
      >>> from deis_jax import as_model, schedules, testing
      >>> from deis_jax.adaptive import solve_ode
      >>> sched = schedules.vp_linear()
      >>> model = as_model(testing.ring_mixture().eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (16, 2))
      >>> sol = solve_ode(model, x_T, rtol=1e-4, atol=1e-4)
      >>> sol.x.shape
      (16, 2)
    """
    model, x_T, (t_start, t_end), max_steps = check_solve_args(
        "x_T", model, x_T, ("t_start", t_start, "t_max"), ("t_end", t_end, "t_min"),
        solver=solver, per_sample=per_sample, max_steps=max_steps, rtol=rtol, atol=atol)
    dtype = x_T.dtype
    x, nfe, n_steps, ok = _solve(
        model, solver, bool(per_sample), max_steps, x_T, jnp.asarray(t_start, dtype),
        jnp.asarray(t_end, dtype), jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype))
    if is_concrete(ok) and not bool(jnp.all(ok)):
        raise RuntimeError(
            f"solve_ode did not reach t_end within max_steps={max_steps} steps; raise max_steps "
            "or loosen rtol/atol"
        )
    return ODESolution(x, nfe, n_steps, ok)
