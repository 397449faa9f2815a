"""Run one solver on many grids (of different lengths) in a single compiled call.

Each grid's coefficient table is padded at the front to a common length with *identity
rows* (the sample is left unchanged; the model is still called, at the first time: the
warm-up rows that follow give those extra history entries zero weight), the tables are
stacked and :func:`deis_jax.sampling.run_table` -- the body of :func:`deis_jax.sample` --
is ``vmap``-ed over them. One compilation per solver instead of one per NFE keeps the
convergence-order and no-cliff sweeps cheap. Shared by the tests and ``benchmarks/cliffs.py``
(with :func:`ratio_bounds`, the bootstrap interval of a no-cliff ratio, and
:func:`measured_order`, the one convergence-order helper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from deis_jax import as_model, get_solver, testing, timesteps
from deis_jax.sampling import run_table, solver_model
from deis_jax.solvers.ei import MultistepCoeffs
from deis_jax.solvers.runge_kutta import StageCoeffs
from deis_jax.solvers.unipc import UniPCCoeffs

# Named grids of the order tests: kind and options of deis_jax.timesteps. "uniform_rho"
# (equal steps in rho, where iPNDM's fixed Adams-Bashforth weights are exact) starts at
# t = 0.4 (rho = 2): over VP's whole range (rho up to 150) equal steps leave the data end,
# where eps changes on the scale of the data's std, unresolved below thousands of steps.
# "uniform_rho_flow" is the same start in rho (rho = t/(1-t) = 2 at t = 2/3) on schedules.flow().
GRIDS = {"log_snr": ("log_snr", {}), "quadratic": ("quadratic", {}), "edm": ("edm", {}),
         "uniform_rho": ("edm", {"rho": 1.0, "t_max": 0.4}), "uniform": ("uniform", {}),
         "uniform_rho_flow": ("edm", {"rho": 1.0, "t_max": 2.0 / 3.0})}


def _identity_row(co):
    first = jax.tree_util.tree_map(lambda v: v[:1], co)
    one, zero = jnp.ones_like(first.t), jnp.zeros_like(first.t)
    if isinstance(co, MultistepCoeffs):
        return first._replace(a=one, c=jnp.zeros_like(first.c))
    if isinstance(co, StageCoeffs):
        return first._replace(a=jnp.ones_like(first.a), c=jnp.zeros_like(first.c))
    if isinstance(co, UniPCCoeffs):
        return first._replace(keep=one, corr_x=zero, corr=jnp.zeros_like(first.corr),
                              pred_x=one, pred=jnp.zeros_like(first.pred))
    raise TypeError(f"no identity row for {type(co).__name__}")


def _pad(co, length):
    n = jax.tree_util.tree_leaves(co)[0].shape[0]
    if n == length:
        return co
    rep = jax.tree_util.tree_map(lambda v: jnp.repeat(v, length - n, axis=0), _identity_row(co))
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), rep, co)


def sweep(solver, model, x_T, grids):
    """Final samples of ``solver`` from ``x_T`` on each time grid of ``grids``, for a
    :class:`deis_jax.Model` ``model`` (:func:`deis_jax.as_model`).

    Returns an array ``(len(grids), *x_T.shape)``.
    """
    solver = get_solver(solver)
    grids = [jnp.asarray(ts) for ts in grids]
    lengths = sorted({ts.shape[0] for ts in grids})
    groups = [[i for i, ts in enumerate(grids) if ts.shape[0] == n] for n in lengths]
    order = np.argsort(np.concatenate(groups))  # back to the caller's order

    @jax.jit
    def run(model, grouped, x_T):
        fn = solver_model(model, solver)
        # One builder per grid length, vmapped over the grids of that length.
        tables = [jax.vmap(solver.table, in_axes=(None, 0))(model.schedule, g)
                  for g in grouped]
        length = max(ts.shape[1] for ts in grouped) - 1
        padded = [jax.vmap(lambda co: _pad(co, length))(t) for t in tables]
        stacked = jax.tree_util.tree_map(lambda *v: jnp.concatenate(v)[order], *padded)
        ts_next = jnp.zeros((length,), x_T.dtype)  # no hook: the end times are unused
        return jax.vmap(lambda co: run_table(solver, fn, co, x_T, ts_next)[0])(stacked)

    return run(model, tuple(jnp.stack([grids[i] for i in g]) for g in groups), x_T)


def measured_order(solver, problem, nfes, grid="log_snr"):
    """Convergence order of ``solver`` on ``problem`` (``(schedule, gmm, x_T, ground truth)``):
    minus the slope of log RMSE against log NFE over ``nfes`` on the named grid (:data:`GRIDS`),
    and the RMSEs. A solver whose plan depends on the NFE (DPM-Solver-fast) must get NFEs with
    the same plan (e.g. all multiples of 3)."""
    sched, gmm, x_T, gt = problem
    kind, options = GRIDS[grid]
    if "t_max" in options:  # the same starting points at a later time
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, options["t_max"], sched.t_min)
    solver = get_solver(solver)
    if solver.for_nfe is not None:
        plans = [solver.for_nfe(solver, n) for n in nfes]
        assert len({p.final_steps for p in plans}) == 1, f"{solver.name}: NFEs {nfes} need " \
            "different step plans"
        solver = plans[0]
    grids = [timesteps(sched, solver.steps_for_nfe(n), kind, **options) for n in nfes]
    xs = sweep(solver, as_model(gmm.eps_fn(sched), sched), x_T, grids)
    err = np.sqrt(np.mean((np.asarray(xs) - np.asarray(gt)[None]) ** 2, axis=(1, 2)))
    assert np.all(err >= 1e-9), err  # still above the ground truth's own error
    return -stats.linregress(np.log(nfes), np.log(err)).slope, err


def ratio_bounds(sq, resamples=2000, seed=0):
    """Paired-bootstrap 95% interval of ``RMSE(n+2)/RMSE(n)`` for every ``n``.

    ``sq``: per-run, per-sample squared errors ``(runs, batch)``, runs in NFE order. The same
    resampled starting points are used at ``n`` and ``n+2`` (the runs share ``x_T``), so the
    interval measures how much the ratio depends on *which* 1,000 points were drawn: a ratio
    carried by one sample that changes mode is wide, a grid-wide error increase is narrow.
    A run with any non-finite sample gets ``[inf, inf]`` as the ``n+2`` side: divergence is a
    failure whichever points were drawn.
    """
    rng = np.random.default_rng(seed)
    sq = np.asarray(sq, dtype=np.float64)
    batch = sq.shape[1]
    finite = np.isfinite(sq)
    weights = rng.multinomial(batch, np.full(batch, 1.0 / batch), size=resamples) / batch
    ms = weights @ np.where(finite, sq, 0.0).T  # (resamples, runs)
    ratios = np.sqrt(ms[:, 2:] / ms[:, :-2])
    lo, hi = np.quantile(ratios, [0.025, 0.975], axis=0)
    diverged = ~finite.all(axis=1)[2:]
    lo, hi = np.where(diverged, np.inf, lo), np.where(diverged, np.inf, hi)
    return {"ratio_lo": lo.tolist(), "ratio_hi": hi.tolist()}
