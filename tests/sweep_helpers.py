"""Run one solver on many grids (of different lengths) in a single compiled call.

Each grid's coefficient table is padded to a common length with *identity rows* (the
sample is left unchanged; the model is still called, at the final time), the tables are
stacked and the scan is ``vmap``-ed over them. One compilation per solver instead of one per
NFE keeps the convergence-order and no-cliff sweeps cheap. The model wrapper and the scan
body are exactly those of :func:`deis_jax.sample` (checked in ``test_no_cliffs.py``).
Shared by the tests and ``benchmarks/cliffs.py`` (with :func:`ratio_bounds`, the bootstrap
interval of a no-cliff ratio).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from deis_jax import get_solver, timesteps
from deis_jax.sampling import _solver_model
from deis_jax.solvers.base import MultistepCoeffs
from deis_jax.solvers.stages import StageCoeffs
from deis_jax.solvers.unipc import UniPCCoeffs


def _identity_row(co):
    last = jax.tree_util.tree_map(lambda v: v[-1:], co)
    one, zero = jnp.ones_like(last.t), jnp.zeros_like(last.t)
    if isinstance(co, MultistepCoeffs):
        return last._replace(a=one, c=jnp.zeros_like(last.c))
    if isinstance(co, StageCoeffs):
        return last._replace(start=jnp.ones_like(last.start), use_x=jnp.ones_like(last.use_x),
                             slot=jnp.zeros_like(last.slot), a=one, c=jnp.zeros_like(last.c),
                             set_x=jnp.ones_like(last.set_x))
    if isinstance(co, UniPCCoeffs):
        return last._replace(keep=one, corr_x=zero, corr=jnp.zeros_like(last.corr),
                             pred_x=one, pred=jnp.zeros_like(last.pred))
    raise TypeError(f"no identity row for {type(co).__name__}")


def _pad(co, length):
    n = co.t.shape[0]
    if n == length:
        return co
    ident = _identity_row(co)
    rep = jax.tree_util.tree_map(lambda v: jnp.repeat(v, length - n, axis=0), ident)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), co, rep)


def sweep(solver, model_fn, schedule, x_T, grids, prediction="eps"):
    """Final samples of ``solver`` from ``x_T`` on each time grid of ``grids``.

    Returns an array ``(len(grids), *x_T.shape)``.
    """
    solver = get_solver(solver)
    fn = _solver_model(model_fn, schedule, prediction, solver)

    # One program: every table (one builder per grid length), the padding and the vmapped
    # scan compile together, far cheaper than one compilation per grid length.
    grids = [jnp.asarray(ts) for ts in grids]
    lengths = sorted({ts.shape[0] for ts in grids})
    groups = [[i for i, ts in enumerate(grids) if ts.shape[0] == n] for n in lengths]
    order = np.argsort(np.concatenate(groups))  # back to the caller's order

    @jax.jit
    def run(schedule, grouped, x_T):
        # One builder per grid length, vmapped over the grids of that length.
        tables = [jax.vmap(solver.coefficients, in_axes=(None, 0))(schedule, g)
                  for g in grouped]
        length = max(t.t.shape[1] for t in tables)
        padded = [jax.vmap(lambda co: _pad(co, length))(t) for t in tables]
        stacked = jax.tree_util.tree_map(lambda *v: jnp.concatenate(v)[order], *padded)

        def one(co):
            state = solver.init(x_T, co)

            def body(s, c):
                return solver.step(fn, s, c, None), None

            state, _ = jax.lax.scan(body, state, co)
            return state.x

        return jax.vmap(one)(stacked)

    return run(schedule, tuple(jnp.stack([grids[i] for i in g]) for g in groups), x_T)


def measured_order(solver, problem, nfes, grid="log_snr"):
    """Convergence order of ``solver`` on ``problem`` (``(schedule, gmm, x_T, ground truth)``):
    minus the slope of log RMSE against log NFE over ``nfes``, and the RMSEs."""
    sched, gmm, x_T, gt = problem
    grids = [timesteps(sched, get_solver(solver).steps_for_nfe(n), grid) for n in nfes]
    xs = sweep(solver, gmm.eps_fn(sched), sched, x_T, grids)
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
