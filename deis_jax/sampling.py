"""The sampling driver: any solver, any schedule, one ``lax.scan``.

The per-step coefficients are built once, vectorised over steps, then fed to ``lax.scan`` as
``xs``; the scan body is the solver's step (one model call plus a few fused multiply-adds for
the multistep solvers). Everything is a pure function of its array inputs, so ``sample`` can
be ``jax.jit``-ed, ``jax.vmap``-ed (over seeds, grid parameters, schedule parameters) and
differentiated with respect to ``x_T`` and the grid.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from deis_jax._checks import is_concrete
from deis_jax.grids import check_grid, timesteps
from deis_jax.parameterization import as_eps_fn, as_x0_fn
from deis_jax.schedules import Schedule
from deis_jax.solvers.base import Solver
from deis_jax.solvers.registry import get_solver

__all__ = ["SampleOutput", "sample"]


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


def _check_model_output(model_fn, x_T):
    batch = x_T.shape[0]
    t_spec = jax.ShapeDtypeStruct((batch,), x_T.dtype)
    try:
        out = jax.eval_shape(model_fn, jax.ShapeDtypeStruct(x_T.shape, x_T.dtype), t_spec)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model_fn failed on x of shape {x_T.shape} and t of shape {(batch,)} "
            f"(does x_T have the shape the model expects?): {err}"
        ) from err
    out_shape = getattr(out, "shape", None)
    if out_shape != x_T.shape:
        raise ValueError(
            f"model_fn must return an array of the input's shape {x_T.shape}; it returned "
            f"{out_shape if out_shape is not None else type(out).__name__} for x of shape "
            f"{x_T.shape} and t of shape {(batch,)}"
        )


def _solver_model(model_fn, schedule, prediction, solver: Solver):
    """The model as the solver consumes it: eps or x0 prediction, scalar ``t``."""
    fn = (as_eps_fn if solver.model == "eps" else as_x0_fn)(model_fn, schedule, prediction)

    def call(x, t):
        out = fn(x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]))
        return out.astype(x.dtype)

    return call


@functools.partial(
    jax.jit,
    static_argnames=("model_fn", "prediction", "solver", "hook", "return_trajectory",
                     "check_finite"),
)
def _run(model_fn, prediction, solver, hook, return_trajectory, check_finite, schedule, x_T,
         ts, key):
    fn = _solver_model(model_fn, schedule, prediction, solver)
    coeffs = solver.coefficients(schedule, ts)
    n_steps = ts.shape[0] - 1
    keys = None if key is None else jax.random.split(key, n_steps)
    state = solver.init(x_T, coeffs)

    def body(carry, xs):
        state, bad = carry
        co, k, i, t_next = xs
        state = solver.step(fn, state, co, k)
        if hook is not None:
            state = state._replace(x=hook(state.x, t_next))
        if check_finite:
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(state.x)), i, bad)
        return (state, bad), (state.x if return_trajectory else None)

    xs = (coeffs, keys, jnp.arange(n_steps, dtype=jnp.int32), ts[1:])
    (state, bad), traj = jax.lax.scan(body, (state, jnp.int32(-1)), xs)
    if return_trajectory:
        traj = jnp.concatenate([x_T[None], traj], axis=0)
    return state.x, traj, bad


def sample(
    model_fn: Callable,
    schedule: Schedule,
    x_T,
    *,
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
):
    r"""Integrate from ``x_T`` at ``ts[0]`` to ``ts[-1]`` with the chosen solver.

    Args:
      model_fn: ``model_fn(x, t)`` with ``x: (batch, ...)``, ``t: (batch,)``, returning the
        prediction named by ``prediction`` with ``x``'s shape. A Flax model enters as
        ``functools.partial(model.apply, params)``.
      schedule: the :class:`~deis_jax.schedules.Schedule` the model was trained with.
      x_T: starting point, shape ``(batch, ...)`` (e.g. ``schedule.prior_sample``).
      solver: a registry name (see :func:`deis_jax.solver_names`) or a ``Solver``.
      ts: time grid of shape ``(N+1,)``: decreasing to sample, increasing to encode data
        into noise (deterministic solvers). May be traced (learned grids).
      nfe: alternatively, the number of model evaluations; the grid is then
        ``timesteps(schedule, solver.steps_for_nfe(nfe), grid)``.
      grid: grid kind used with ``nfe`` (see :data:`deis_jax.GRID_KINDS`).
      key: PRNG key, required by stochastic solvers.
      prediction: what ``model_fn`` predicts: ``"eps"``, ``"x0"``, ``"score"``, ``"v"`` or
        ``"edm"`` (a denoiser ``D(x/alpha, rho)``).
      hook: optional ``hook(x, t) -> x`` applied after every step at the step's end time
        ``t`` (inpainting, projections).
      return_trajectory: also return every intermediate state (needs ``full_output``).
      full_output: return a :class:`SampleOutput` instead of the final sample.
      check_finite: record the first step with non-finite output; when called eagerly
        (not under ``jit``), raise ``FloatingPointError`` naming that step.

    Returns:
      The final sample (or a :class:`SampleOutput`).

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
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must have a leading batch axis, got shape {x_T.shape}")
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be floating point, got dtype {x_T.dtype}")
    if ts is None:
        if nfe is None:
            raise ValueError("pass either ts= (a time grid) or nfe= (a number of model calls)")
        ts = timesteps(schedule, solver.steps_for_nfe(nfe), grid)
    elif nfe is not None:
        raise ValueError("pass only one of ts= and nfe=")
    ts = check_grid(schedule, ts)
    n_steps = ts.shape[0] - 1
    if n_steps < solver.min_steps:
        raise ValueError(
            f"solver {solver.name!r} needs at least {solver.min_steps} steps, got a grid of "
            f"{n_steps} (ts has {ts.shape[0]} points)"
        )
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key with key=")
    if return_trajectory and not full_output:
        raise ValueError("return_trajectory=True needs full_output=True")
    _check_model_output(model_fn, x_T)
    x, traj, bad = _run(model_fn, prediction, solver, hook, return_trajectory, check_finite,
                        schedule, x_T, ts, key if solver.stochastic else None)
    if check_finite and is_concrete(bad) and int(jnp.max(bad)) >= 0:
        step = int(jnp.max(bad))
        raise FloatingPointError(
            f"sampling produced non-finite values (NaN/inf) at step {step} "
            f"(t={float(ts[step])} -> {float(ts[step + 1])}) with solver {solver.name!r}; "
            "the model returned NaN/inf or the grid reaches a time the model cannot handle"
        )
    if not full_output:
        return x
    return SampleOutput(x, traj, solver.nfe_for_steps(n_steps), bad)
