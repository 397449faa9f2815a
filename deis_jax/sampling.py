"""The sampling driver: any solver, any schedule, one ``lax.scan``.

The per-step coefficients are built once, vectorised over steps, then fed to ``lax.scan`` as
``xs``; the scan body is the solver's step (one model call plus a few fused multiply-adds for
the multistep solvers). Everything is a pure function of its array inputs, so ``sample`` can
be ``jax.jit``-ed, ``jax.vmap``-ed (over seeds, grid parameters, schedule parameters,
solver hyper-parameters) and differentiated with respect to ``x_T`` and the grid.

What is compiled, and what is data: the model's parameters (``params=``, or the array
arguments of a ``functools.partial``), ``x_T``, the grid, the schedule's parameters and the
solver's ``hparams`` are traced arguments of one cached executable per (model function,
solver, grid length, shapes and dtypes); new values never recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import _callables
from deis_jax._checks import (
    check_all_finite, check_batch, check_callable, check_choice, check_key, is_concrete)
from deis_jax.grid_files import check_grid_for
from deis_jax.grids import GRID_KINDS, check_grid, timesteps
from deis_jax.parameterization import PREDICTIONS, as_eps_fn, as_velocity_fn, as_x0_fn
from deis_jax.precision import check_dtype, model_in_dtype, state_dtype
from deis_jax.schedules import Schedule, check_schedule
from deis_jax.solvers.base import Solver
from deis_jax.solvers.registry import get_solver

__all__ = ["SampleOutput", "sample", "run_table", "solver_model"]


class SampleOutput(NamedTuple):
    """Full result of :func:`sample` (``full_output=True``).

    Attributes:
      x: the final sample, same shape as ``x_T``.
      trajectory: ``(N+1, *x_T.shape)`` states at every grid time (``x_T`` first), or None.
      nfe: exact number of model evaluations (a Python int).
      nonfinite_step: first step whose output was non-finite (int32), ``-1`` if none.
    """

    x: Any
    trajectory: Any
    nfe: int
    nonfinite_step: Any


def solver_model(model_fn: Callable, schedule, prediction: str, solver: Solver):
    """The model as the solver's steps consume it: eps, x0 or velocity prediction, scalar
    ``t`` (``model_fn(x, t)`` with ``t`` of shape ``(batch,)``)."""
    convert = {"eps": as_eps_fn, "x0": as_x0_fn, "velocity": as_velocity_fn}[solver.model]
    fn = convert(model_fn, schedule, prediction)

    def call(x, t):
        out = fn(x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]))
        return out.astype(x.dtype)

    return call


def run_table(solver: Solver, fn: Callable, table, x_T, ts_next, keys=None, hook=None, *,
              return_trajectory: bool = False, check_finite: bool = False):
    """Run ``solver``'s steps over a coefficient ``table`` (one ``lax.scan``, then the
    solver's ``final_steps``): the body of :func:`sample`, for callers that build or stack
    tables themselves.

    Args:
      solver: the solver whose table this is.
      fn: the model as the steps consume it (:func:`solver_model`).
      table: ``solver.table(schedule, ts)``.
      x_T: start.
      ts_next: ``(N,)`` end time of each step (``ts[1:]``), passed to ``hook``.
      keys: ``(N,)`` step keys for stochastic solvers, else None.
      hook: ``hook(x, t) -> x`` after every step.

    Returns:
      ``(x, trajectory or None, first non-finite step or -1)``.
    """
    n = ts_next.shape[0]
    main = n - len(solver.final_steps)

    def body(kernel):
        def run(carry, xs):
            state, bad = carry
            row, key, i, t_next = xs
            state = kernel(fn, state, row, key)
            if hook is not None:
                state = state._replace(x=hook(state.x, t_next))
            if check_finite:
                bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(state.x)), i, bad)
            return (state, bad), (state.x if return_trajectory else None)

        return run

    xs = (table, keys, jnp.arange(n, dtype=jnp.int32), ts_next)
    carry = (solver.init(x_T, table), jnp.int32(-1))
    carry, traj = jax.lax.scan(body(solver.step), carry,
                               jax.tree_util.tree_map(lambda v: v[:main], xs))
    parts = [x_T[None], traj] if return_trajectory else []
    for j, (kernel, _) in enumerate(solver.final_steps):
        carry, x = body(kernel)(carry, jax.tree_util.tree_map(lambda v: v[main + j], xs))
        if return_trajectory:
            parts.append(x[None])
    (state, bad) = carry
    return state.x, (jnp.concatenate(parts, axis=0) if return_trajectory else None), bad


@functools.partial(
    jax.jit,
    static_argnames=("model", "hook", "prediction", "grid", "n_steps", "return_trajectory",
                     "check_finite", "model_dtype"),
)
def _run(model, hook, prediction, grid, n_steps, return_trajectory, check_finite, model_dtype,
         model_data, hook_data, params, solver, schedule, x_T, ts, key):
    model_fn = _callables.merge(model, model_data)
    hook_fn = _callables.merge(hook, hook_data)
    if ts is None:
        ts = timesteps(schedule, n_steps, grid)
    t_spec = jax.ShapeDtypeStruct(x_T.shape[:1], x_T.dtype)
    _callables.check_model(model_fn, params, jax.ShapeDtypeStruct(x_T.shape, model_dtype),
                           t_spec)
    if hook_fn is not None:
        _callables.check_hook(hook_fn, jax.ShapeDtypeStruct(x_T.shape, x_T.dtype), ts[1])

    def user_model(x, t):
        return _callables.call_model(model_fn, params, x, t)

    fn = solver_model(model_in_dtype(user_model, model_dtype), schedule, prediction, solver)
    n = ts.shape[0] - 1
    keys = None if key is None else jax.random.split(key, n)
    x, traj, bad = run_table(solver, fn, solver.table(schedule, ts), x_T, ts[1:], keys,
                             hook_fn, return_trajectory=return_trajectory,
                             check_finite=check_finite)
    return x, traj, bad, ts


def sample(
    model_fn: Callable,
    schedule: Schedule,
    x_T,
    *,
    params=None,
    solver="tab3",
    ts=None,
    nfe: int | None = None,
    grid: str = "quadratic",
    key=None,
    prediction: str = "eps",
    hook: Callable | None = None,
    return_trajectory: bool = False,
    full_output: bool = False,
    check_finite: bool = True,
    model_dtype=None,
):
    r"""Integrate from ``x_T`` at ``ts[0]`` to ``ts[-1]`` with the chosen solver.

    Every solver's step goes from ``ts[i]`` to ``ts[i+1]`` (its stages, if any, lie inside
    the step), so a grid of ``N + 1`` points is ``N`` steps and
    ``get_solver(solver).nfe_for_steps(N)`` model calls.

    Args:
      model_fn: the model. With ``params``, ``model_fn(params, x, t)`` -- a Flax Linen
        ``model.apply``, an NNX ``lambda state, x, t: nnx.merge(graphdef, state)(x, t)``
        defined once, or any pure function; without, ``model_fn(x, t)`` (analytic models).
        ``x: (batch, ...)``, ``t: (batch,)``; returns the prediction named by
        ``prediction`` with ``x``'s shape.
      schedule: the :class:`~deis_jax.schedules.Schedule` the model was trained with.
      x_T: starting point, shape ``(batch, ...)`` (e.g. ``schedule.prior_sample``). The
        solver state, the coefficients and the time are kept in float32 for a bfloat16 or
        float16 ``x_T`` (float64 for a float64 one): see :mod:`deis_jax.precision`.
      params: the model's parameters (any pytree of arrays), passed as data: new parameters
        reuse the compiled sampler. The array arguments of a ``functools.partial`` model are
        data too.
      solver: a registry name (see :func:`deis_jax.solver_names`) or a ``Solver``.
      ts: time grid of shape ``(N+1,)``: decreasing to sample, increasing to encode data
        into noise (deterministic solvers only: a stochastic solver refuses an increasing
        grid). May be traced (learned grids). A grid read by
        :func:`deis_jax.grid_files.load_grid` is checked against this call's schedule,
        solver and number of steps.
      nfe: alternatively, the number of model evaluations; the grid is then
        ``timesteps(schedule, solver.steps_for_nfe(nfe), grid)`` (and DPM-Solver-fast picks
        its order mix from ``nfe``).
      grid: grid kind used with ``nfe`` (see :data:`deis_jax.GRID_KINDS`).
      key: one PRNG key (``jax.random.key(seed)``), required by stochastic solvers.
      prediction: what ``model_fn`` predicts: ``"eps"``, ``"x0"``, ``"score"``, ``"v"``,
        ``"edm"`` (a denoiser ``D(x/alpha, rho)``) or ``"velocity"`` (``dx/dt``, a
        flow-matching network: see :func:`deis_jax.parameterization.flow_velocity_model`).
      hook: optional ``hook(x, t) -> x`` applied once after every step at the step's end
        time ``t`` (inpainting, projections); it must keep ``x``'s shape and dtype.
      return_trajectory: also return the state at every grid time (needs ``full_output``).
      full_output: return a :class:`SampleOutput` instead of the final sample.
      check_finite: record the first step with non-finite output; when called eagerly
        (not under ``jit``), raise ``FloatingPointError`` naming that step.
      model_dtype: the dtype the model receives ``x`` in (``"float32"``, ``"bfloat16"``,
        ``"float16"``, ``"float64"`` or a dtype; default: ``x_T``'s dtype). ``t`` always
        reaches the model in the state dtype (bit-identical to the float32 grid), and the
        model's output is cast back to the state dtype. A Flax model with ``dtype=bfloat16``
        casts its input itself, so the default suits it.

    Returns:
      The final sample (or a :class:`SampleOutput`), in the state dtype: float32 for a
      bfloat16/float16/float32 ``x_T``, float64 for a float64 one.

    Raises:
      ValueError, TypeError: a bad argument, named with its value, before anything is
        traced. A concrete ``x_T`` is checked for NaN/inf up front (one reduction); a model
        or hook of the wrong form, output shape or dtype is reported when tracing.
      FloatingPointError: called eagerly with ``check_finite``, when a step's output is
        non-finite (the model returned NaN/inf).

    Example:
      >>> import jax
      >>> from deis_jax import sample, schedules, testing
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.gaussian_mixture(dim=2, n_modes=4, seed=0)
      >>> x_T = sched.prior_sample(jax.random.key(0), (16, 2))
      >>> x0 = sample(gmm.eps_fn(sched), sched, x_T, solver="tab3", nfe=10)
      >>> x0.shape
      (16, 2)
    """
    solver = get_solver(solver)
    check_callable("model_fn", model_fn,
                   "model_fn(x, t)" if params is None else "model_fn(params, x, t)")
    check_schedule(schedule)
    x_T = check_batch("x_T", x_T)
    check_all_finite("x_T", x_T)
    model_dtype = x_T.dtype if model_dtype is None else check_dtype("model_dtype", model_dtype)
    x_T = x_T.astype(state_dtype(x_T.dtype))
    check_choice("prediction", prediction, PREDICTIONS)
    if hook is not None:
        check_callable("hook", hook, "hook(x, t) -> x")
    n_steps = None
    if ts is None:
        if nfe is None:
            raise ValueError("pass either ts= (a time grid) or nfe= (a number of model calls)")
        check_choice("grid", grid, GRID_KINDS)
        if solver.for_nfe is not None:
            solver = solver.for_nfe(solver, nfe)
        n_steps = solver.steps_for_nfe(nfe)
    elif nfe is not None:
        raise ValueError("pass only one of ts= and nfe=")
    else:
        check_grid_for(ts, schedule, solver)
        ts = check_grid(schedule, ts)
        ts = ts.astype(state_dtype(ts.dtype))
        n_steps = ts.shape[0] - 1
        if solver.stochastic and is_concrete(ts) and np.asarray(ts)[-1] > np.asarray(ts)[0]:
            raise ValueError(
                f"solver {solver.name!r} is stochastic: it samples from noise to data only, "
                f"so ts must be decreasing; got an increasing grid ts={ts} (to encode data "
                "into noise, use a deterministic solver such as 'ddim' or 'tab3')")
    if n_steps < solver.min_steps:
        raise ValueError(
            f"solver {solver.name!r} needs at least {solver.min_steps} steps, got a grid of "
            f"{n_steps} (ts has {n_steps + 1} points)"
        )
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key with key=")
    if key is not None:
        check_key("key", key)
    if return_trajectory and not full_output:
        raise ValueError("return_trajectory=True needs full_output=True")
    model_static, model_data = _callables.split(model_fn)
    hook_static, hook_data = _callables.split(hook)
    x, traj, bad, ts = _run(
        model_static, hook_static, prediction, grid if ts is None else None,
        n_steps if ts is None else None, return_trajectory, check_finite,
        jnp.dtype(model_dtype).name, model_data, hook_data, params, solver, schedule, x_T, ts,
        key if solver.stochastic else None)
    if check_finite and is_concrete(bad) and int(bad) >= 0:
        step = int(bad)
        start = (f"; x_T (finite) has entries up to |x_T| = {float(jnp.max(jnp.abs(x_T))):.3g} "
                 f"where the prior's std is {float(schedule.prior_std()):.3g}"
                 if step == 0 else "")
        raise FloatingPointError(
            f"sampling produced non-finite values (NaN/inf) at step {step} "
            f"(t={float(ts[step])} -> {float(ts[step + 1])}) with solver {solver.name!r}; "
            "the model returned NaN/inf or the grid reaches a time the model cannot handle"
            f"{start}"
        )
    if not full_output:
        return x
    return SampleOutput(x, traj, solver.nfe_for_steps(n_steps), bad)
