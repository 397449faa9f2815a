"""The sampling driver: any solver, any schedule, one ``lax.scan``.

The per-step coefficients are built once, vectorised over steps, then fed to ``lax.scan`` as
``xs``; the scan body is the solver's step (one model call plus a few fused multiply-adds for
the multistep solvers). Everything is a pure function of its array inputs, so ``sample`` can
be ``jax.jit``-ed, ``jax.vmap``-ed (over seeds, grid parameters, schedule parameters,
solver hyper-parameters, model parameters, conditions) and differentiated with respect to
``x_T`` and the grid.

What is compiled, and what is data: the :class:`~deis_jax.Model` (its parameters, schedule
and condition), the :class:`~deis_jax.Plan` (its grid and the solver's ``hparams``), ``x_T``
and the key are arguments of one cached executable per (network, solver, grid length, shapes
and dtypes); new values never recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from deis_jax import _callables
from deis_jax._checks import check_all_finite, check_batch, check_callable, check_key, is_concrete
from deis_jax.model import Model, check_model, takes_model
from deis_jax.plan import Plan, make_plan
from deis_jax.precision import state_dtype
from deis_jax.solvers.base import Solver

__all__ = ["SampleOutput", "sample", "run_table", "solver_model", "prepare"]


class SampleOutput(NamedTuple):
    """Full result of :func:`sample` (``full_output=True``).

    Attributes:
      x: the final sample, same shape as ``x_T``.
      trajectory: ``(N+1, *x_T.shape)`` states at every grid time (``x_T`` first), or None.
      nfe: exact number of model evaluations (a Python int).
      nonfinite_step: first step whose output was non-finite (int32), ``-1`` if none; None
        with ``check_finite=False`` (not checked, so it cannot say "none").
    """

    x: Any
    trajectory: Any
    nfe: int
    nonfinite_step: Any


def solver_model(model: Model, solver: Solver) -> Callable:
    """The model as ``solver``'s steps consume it: its eps-, x0- or velocity-prediction
    method (``fn(x, t)`` with a scalar or ``(batch,)`` ``t``)."""
    return getattr(model, solver.model)


def prepare(model: Model, x, *, name: str = "x_T"):
    """The door of every entry point: checks ``x`` (a floating ``(batch, ...)`` array, finite
    when concrete) and the model (called once abstractly on ``x``: one clear error before
    tracing if its network fails). Returns ``(model, x)`` with ``x`` in the state dtype and the
    model's compute dtype set to ``x``'s dtype when ``x`` is narrower than float32."""
    x = check_batch(name, x)
    check_all_finite(name, x)
    if model.dtype is None and x.dtype != state_dtype(x.dtype):
        model = model.replace(dtype=x.dtype.name)
    x = x.astype(state_dtype(x.dtype))
    check_model(model, x)
    _check_cond_batch(model, x.shape[0])
    return model, x


def _check_cond_batch(model: Model, batch: int) -> None:
    for leaf in jax.tree_util.tree_leaves(model.cond):
        shape = jnp.shape(leaf)
        if shape and shape[0] not in (1, batch):
            raise ValueError(f"cond has a leaf of shape {shape}: its leading axis must be 1 "
                             f"(shared) or the batch of x_T ({batch})")


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


@functools.partial(jax.jit, static_argnames=("hook", "return_trajectory", "check_finite"))
def _run(model, plan, x_T, key, hook, hook_data, return_trajectory, check_finite):
    hook_fn = _callables.merge(hook, hook_data)
    solver, ts = plan.solver, plan.ts
    keys = None if key is None else jax.random.split(key, ts.shape[0] - 1)
    return run_table(solver, solver_model(model, solver), solver.table(model.schedule, ts),
                     x_T, ts[1:], keys, hook_fn, return_trajectory=return_trajectory,
                     check_finite=check_finite)


@takes_model
def sample(
    model: Model,
    x_T,
    plan: Plan | None = None,
    *,
    solver=None,
    nfe: int | None = None,
    ts=None,
    grid: str = "quadratic",
    key=None,
    hook: Callable | None = None,
    return_trajectory: bool = False,
    full_output: bool = False,
    check_finite: bool = True,
):
    r"""Integrate from ``x_T`` at ``ts[0]`` to ``ts[-1]`` with the chosen solver.

    Every solver's step goes from ``ts[i]`` to ``ts[i+1]`` (its stages, if any, lie inside
    the step), so a grid of ``N + 1`` points is ``N`` steps and
    ``get_solver(solver).nfe_for_steps(N)`` model calls.

    Args:
      model: a :class:`~deis_jax.Model` (:func:`deis_jax.as_model`): the network, its
        parameters, schedule, prediction, time input, compute dtype and condition; all of it
        but the network is data of the compiled sampler.
      x_T: starting point, shape ``(batch, ...)`` (e.g. ``schedule.prior_sample``). The
        solver state, the coefficients and the time are kept in float32 for a bfloat16 or
        float16 ``x_T`` (float64 for a float64 one), and the network then computes in
        ``x_T``'s dtype unless the model sets one: see :mod:`deis_jax.precision`.
      plan: what runs (:func:`deis_jax.make_plan`); or give ``solver`` with ``nfe`` or
        ``ts`` (and ``grid``), which this call passes to ``make_plan``.
      solver: a registry name (see :func:`deis_jax.solver_names`) or a ``Solver``
        (default ``"tab3"``, or a grid file's solver).
      ts: time grid of shape ``(N+1,)``: decreasing to sample, increasing to encode data
        into noise (deterministic solvers only). May be traced (learned grids). A grid file
        (:func:`deis_jax.grid_files.load_grid`) is checked against the schedule, solver and
        number of steps and runs as it was tuned.
      nfe: alternatively, the number of model evaluations; the grid is then
        ``timesteps(schedule, solver.steps_for_nfe(nfe), grid)`` (and DPM-Solver-fast picks
        its order mix from ``nfe``).
      grid: grid kind used with ``nfe`` (see :data:`deis_jax.GRID_KINDS`).
      key: one PRNG key (``jax.random.key(seed)``), required by stochastic solvers.
      hook: optional ``hook(x, t) -> x`` applied once after every step at the step's end
        time ``t`` (inpainting, projections); it must keep ``x``'s shape and dtype.
      return_trajectory: also return the state at every grid time (needs ``full_output``).
      full_output: return a :class:`SampleOutput` instead of the final sample.
      check_finite: record the first step with non-finite output; when called eagerly
        (not under ``jit``), raise ``FloatingPointError`` naming that step.

    Returns:
      The final sample (or a :class:`SampleOutput`), in the state dtype: float32 for a
      bfloat16/float16/float32 ``x_T``, float64 for a float64 one.

    Raises:
      TypeError: ``model`` is not a ``Model`` (the old ``sample(model_fn, schedule, x_T,
        params=...)`` form included: build the model with :func:`deis_jax.as_model`).
      ValueError, TypeError: a bad argument, named with its value, before anything is
        traced. A concrete ``x_T`` is checked for NaN/inf up front (one reduction); the
        network is called once abstractly, so a network that fails, or returns another
        shape or dtype, is reported before tracing the sampler.
      FloatingPointError: called eagerly with ``check_finite``, when a step's output is
        non-finite (the model returned NaN/inf).

    Example:
      >>> import jax
      >>> from deis_jax import as_model, sample, schedules, testing
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.gaussian_mixture(dim=2, n_modes=4, seed=0)
      >>> model = as_model(gmm.eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (16, 2))
      >>> sample(model, x_T, solver="tab3", nfe=10).shape
      (16, 2)
    """
    model, x_T = prepare(model, x_T)
    if plan is None:
        plan = make_plan(model.schedule, solver, nfe=nfe, ts=ts, grid=grid)
    elif solver is not None or nfe is not None or ts is not None:
        raise ValueError("pass either plan= or solver=/nfe=/ts=, not both")
    elif not isinstance(plan, Plan):
        raise TypeError(f"plan must be a deis_jax.Plan (deis_jax.make_plan), got "
                        f"{type(plan).__name__}")
    solver = plan.solver
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key with key=")
    if key is not None:
        check_key("key", key)
    if return_trajectory and not full_output:
        raise ValueError("return_trajectory=True needs full_output=True")
    if hook is not None:
        check_callable("hook", hook, "hook(x, t) -> x")
        _callables.check_hook(hook, jax.ShapeDtypeStruct(x_T.shape, x_T.dtype),
                              jax.ShapeDtypeStruct((), plan.ts.dtype))
    hook_static, hook_data = _callables.split(hook)
    x, traj, bad = _run(model, plan, x_T, key if solver.stochastic else None, hook_static,
                        hook_data, return_trajectory, check_finite)
    if check_finite and is_concrete(bad) and int(bad) >= 0:
        step = int(bad)
        ts = plan.ts
        start = (f"; x_T (finite) has entries up to |x_T| = {float(jnp.max(jnp.abs(x_T))):.3g} "
                 f"where the prior's std is {float(model.schedule.prior_std()):.3g}"
                 if step == 0 else "")
        raise FloatingPointError(
            f"sampling produced non-finite values (NaN/inf) at step {step} "
            f"(t={float(ts[step])} -> {float(ts[step + 1])}) with solver {solver.name!r}; "
            "the model returned NaN/inf or the grid reaches a time the model cannot handle"
            f"{start}"
        )
    if not full_output:
        return x
    return SampleOutput(x, traj, plan.nfe, bad if check_finite else None)
