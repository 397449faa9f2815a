r"""Learned time grids: the sampling steps optimised by differentiating through the sampler.

The whole sampler -- coefficient tables built from the grid at trace time, then one
``lax.scan`` -- is a differentiable function of the grid, so for a given model, solver and NFE
the grid can be fitted by gradient descent to reproduce a high-accuracy *teacher* solve of the
probability-flow ODE from the same noise (the idea of Watson et al. 2022 and LD3, Tong et al.
2025; DEIS, Zhang & Chen 2023, Sec. 5 shows how much the time discretisation matters).

**Parameterisation.** With :math:`\lambda = \log(\alpha_t/\sigma_t)` (log-SNR) and logits
:math:`z \in \mathbb{R}^N`,

.. math::
   \lambda_i = \lambda(t_{\max}) + \bigl(\lambda(t_{\min}) - \lambda(t_{\max})\bigr)
   \sum_{j < i} \operatorname{softmax}(z)_j, \qquad t_i = t(\lambda_i),

so every grid the optimiser can reach starts at ``t_max``, ends at ``t_min`` and is strictly
decreasing: the increments in ``lambda`` are positive and sum to the whole interval
(:func:`grid_from_logits`; :func:`logits_from_grid` is its inverse, up to the softmax's
shift).

**Objective.** :math:`L(z) = \operatorname{mean}\bigl(\Phi_z(x_T) - x_0^{\rm teacher}
(x_T)\bigr)^2` over a calibration batch of noises, where :math:`\Phi_z` is the jitted solver
on the grid of ``z`` and the teacher is an adaptive solve at tight tolerance (or a high-NFE
solve of ours) from the same noise; or (``loss="mean_error"``) the mean over samples of
each sample's RMS error, which weighs the few samples near a boundary between modes less.
Minimised with optax (Adam by default), with early
stopping on a separate validation batch: the returned grid is the one with the lowest
validation error seen, never worse than the initial grid on that batch; with several initial
grids, one optimisation runs from each and the best on validation wins. Measure it on a third,
held-out batch: a small calibration set overfits (the validation set stops that, not cures
it).

:func:`sweep_grid_family` is the cheap baseline and initialiser: the error of a one-parameter
family of grids (EDM exponents, powers of ``t``, SD3 shifts) over many values in one compiled
``jax.vmap`` call.

References: D. Watson et al., *Learning Fast Samplers for Diffusion Models by Differentiating
Through Sample Quality*, ICLR 2022; V. Tong et al., *Learning to Discretize Denoising Diffusion
ODEs*, ICLR 2025; Q. Zhang, Y. Chen, *Fast Sampling of Diffusion Models with Exponential
Integrator*, ICLR 2023; A. Sabour et al., *Align Your Steps*, ICML 2024.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deis_jax._checks import (
    check_all_finite, check_batch, check_choice, check_int, check_key, check_scalar)
from deis_jax._progress import PROGRESS, Progress
from deis_jax.adaptive import solve_ode
from deis_jax.grid_files import TimeGrid, schedule_record
from deis_jax.grids import GRID_KINDS, check_grid, timesteps
from deis_jax.model import Model, takes_model
from deis_jax.plan import make_plan
from deis_jax.sampling import sample
from deis_jax.schedules import Schedule
from deis_jax.solvers.base import Solver
from deis_jax.solvers.registry import get_solver
from deis_jax.testing import rmse

__all__ = ["FAMILY_DEFAULTS", "LOSSES", "GridSweep", "LearnedGrid", "grid_from_logits",
           "logits_from_grid", "optimize_timesteps", "sweep_grid_family", "teacher_samples"]

FAMILY_DEFAULTS = {
    "edm": np.geomspace(1.0, 32.0, 32),
    "power": np.geomspace(1.0, 8.0, 32),
    "shifted": np.geomspace(0.25, 8.0, 32),
}
"""Grid families :func:`sweep_grid_family` sweeps (the keyword of :func:`deis_jax.timesteps`
they set: ``rho``, ``power``, ``shift``) and the 32 values it tries by default."""
_FAMILY_ARG = {"edm": "rho", "power": "power", "shifted": "shift"}


# --------------------------------------------------------------------------- parameterisation


def _range(schedule: Schedule, t_min, t_max) -> tuple[float, float]:
    t_min = schedule.t_min if t_min is None else t_min
    t_max = schedule.t_max if t_max is None else t_max
    with jax.ensure_compile_time_eval():  # eager checks, even inside a jitted caller
        timesteps(schedule, 1, "uniform", t_min=t_min, t_max=t_max)  # checks the range
        lam = np.asarray(schedule.log_snr(jnp.asarray([t_max, t_min])), np.float64)
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"a learned grid lives in log-SNR, which must be finite at both ends: "
                         f"log_snr(t_max={t_max!r}) = {lam[0]!r}, log_snr(t_min={t_min!r}) = "
                         f"{lam[1]!r} on the {schedule.name} schedule (use t_min > 0)")
    return float(t_min), float(t_max)


def grid_from_logits(schedule: Schedule, logits, *, t_min=None, t_max=None):
    """The grid of ``N = len(logits)`` steps from ``t_max`` to ``t_min`` whose log-SNR
    increments are ``softmax(logits)`` of the whole interval (module docstring).
    Differentiable in ``logits`` and in the schedule's parameters; pinned end points."""
    t_min, t_max = _range(schedule, t_min, t_max)
    logits = jnp.asarray(logits)
    lam0, lam1 = schedule.log_snr(t_max), schedule.log_snr(t_min)
    frac = jnp.concatenate([jnp.zeros(1, logits.dtype), jnp.cumsum(jax.nn.softmax(logits))])
    ts = schedule.t_from_log_snr(lam0 + (lam1 - lam0) * frac)
    return ts.at[0].set(t_max).at[-1].set(t_min)


def logits_from_grid(schedule: Schedule, ts):
    """Logits whose :func:`grid_from_logits` is ``ts`` (a decreasing grid): the log of its
    log-SNR increments."""
    ts = check_grid(schedule, ts)
    return jnp.log(jnp.diff(schedule.log_snr(ts)))


# --------------------------------------------------------------------------- teacher


@takes_model
def teacher_samples(model: Model, x_T, *, teacher="adaptive", tol: float = 1e-5, t_min=None,
                    t_max=None, batch_size: int = 1024):
    """High-accuracy solutions from ``x_T`` at ``t_max`` to ``t_min``, in batches.

    Args:
      model: a :class:`~deis_jax.Model`.
      teacher: ``"adaptive"`` (:func:`deis_jax.adaptive.solve_ode`, Tsit5 at
        ``rtol = atol = tol``) or ``(solver, nfe)``: one of our solvers on a log-SNR grid.
      batch_size: solved this many at a time (memory).

    Returns:
      ``(x_0, description)``: an array like ``x_T`` and a string naming the teacher (and the
      model calls the adaptive solve took).
    """
    schedule = model.schedule
    t_min, t_max = _range(schedule, t_min, t_max)
    x_T = check_batch("x_T", x_T)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if teacher == "adaptive":
        check_scalar("tol", tol, lower=0.0, lower_open=True)
        run = lambda x: solve_ode(model, x, rtol=tol, atol=tol, t_start=t_max, t_end=t_min)
        parts = [run(x_T[i:i + batch_size]) for i in range(0, x_T.shape[0], batch_size)]
        nfe = max(int(p.nfe) for p in parts)
        return (jnp.concatenate([p.x for p in parts]),
                f"adaptive Tsit5 rtol=atol={tol:g} (NFE up to {nfe})")
    if not (isinstance(teacher, tuple) and len(teacher) == 2):
        raise ValueError(f"teacher must be 'adaptive', a (solver, nfe) pair or a pair of "
                         f"arrays, got teacher={teacher!r}")
    name, nfe = teacher
    plan = make_plan(schedule, name, nfe=nfe, grid="log_snr", t_min=t_min, t_max=t_max)
    if plan.solver.stochastic:
        raise ValueError(f"teacher={teacher!r}: a teacher is a deterministic solve of the same "
                         f"ODE from the same noise, and {plan.solver.name!r} is stochastic; "
                         "use 'adaptive' or a deterministic solver such as ('tab3', 200)")
    parts = [sample(model, x_T[i:i + batch_size], plan)
             for i in range(0, x_T.shape[0], batch_size)]
    return jnp.concatenate(parts), f"{plan.solver.name} at NFE {nfe} on the log-SNR grid"


# --------------------------------------------------------------------------- sweep


class GridSweep(NamedTuple):
    """Output of :func:`sweep_grid_family`.

    Attributes:
      family: the grid kind swept.
      values: the parameter values tried, ``(K,)``.
      rmse: the RMSE against the teacher at each value, ``(K,)`` (inf where the grid was not
        usable, e.g. not strictly decreasing in float32).
      best_value: the value with the lowest RMSE.
      ts: the grid of ``best_value``.
    """

    family: str
    values: np.ndarray
    rmse: np.ndarray
    best_value: float
    ts: jnp.ndarray


LOSSES = ("mse", "mean_error")
"""What :func:`optimize_timesteps` minimises (its ``loss=``): ``"mse"``, the mean squared
error over every coordinate of every sample; ``"mean_error"``, the mean over samples of each
sample's RMS error (an L1 over samples: the few samples near a boundary between modes weigh
less)."""


def _grid_error(loss, model, solver, ts, x, y):
    """The error of ``solver`` on the grid ``ts`` from ``x`` against the teacher's ``y``: the
    RMSE (``loss="mse"``) or the mean per-sample RMS error (``"mean_error"``). The one
    objective of the sweep and the optimiser (traced in ``ts``; no eager finiteness check)."""
    out = sample(model, x, solver=solver, ts=ts, check_finite=False)
    if loss == "mse":
        return rmse(out, y)
    per_sample = jnp.mean(jnp.square(out - y), axis=tuple(range(1, y.ndim)))
    # + tiny: a finite gradient where a sample's error is exactly 0
    return jnp.mean(jnp.sqrt(per_sample + jnp.finfo(per_sample.dtype).tiny))


def _resolve(schedule, solver, nfe: int) -> tuple[Solver, int]:
    if get_solver(solver).stochastic:
        raise ValueError(f"solver {get_solver(solver).name!r} is stochastic: grids are learned "
                         "for the deterministic solvers (its samples do not follow a "
                         "teacher's trajectory)")
    plan = make_plan(schedule, solver, nfe=nfe)
    return plan.solver, plan.n_steps


@takes_model
def sweep_grid_family(model: Model, x_T, x_0, *, solver, nfe: int, family: str = "edm",
                      values=None, t_min=None, t_max=None) -> GridSweep:
    """The error of every grid of a one-parameter family, in one compiled ``jax.vmap`` call.

    Args:
      model: a :class:`~deis_jax.Model`.
      x_T, x_0: noises and their teacher solutions (:func:`teacher_samples`).
      solver, nfe: the solver and its number of model calls.
      family: ``"edm"`` (the exponent ``rho``), ``"power"`` (``t^(1/power)`` uniform) or
        ``"shifted"`` (SD3 shift); see :data:`FAMILY_DEFAULTS`.
      values: the parameter values (default :data:`FAMILY_DEFAULTS` ``[family]``).

    Returns:
      A :class:`GridSweep`.
    """
    schedule = model.schedule
    check_choice("family", family, tuple(FAMILY_DEFAULTS))
    solver, n_steps = _resolve(schedule, solver, nfe)
    t_min, t_max = _range(schedule, t_min, t_max)
    x_T, x_0 = _check_pair("x_T", x_T, "x_0", x_0)
    values = FAMILY_DEFAULTS[family] if values is None else np.asarray(values, np.float64)
    if values.ndim != 1 or values.size < 1 or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"values must be a non-empty 1-d array of finite numbers > 0, got "
                         f"values={values}")

    def grid(v):
        return timesteps(schedule, n_steps, family, t_min=t_min, t_max=t_max,
                         **{_FAMILY_ARG[family]: v})

    def err(v, x, y, m):
        ts = grid(v)
        ok = jnp.all(jnp.diff(ts) < 0)
        e = _grid_error("mse", m, solver, ts, x, y)
        return jnp.where(ok, e, jnp.inf)

    rmse = np.asarray(jax.jit(jax.vmap(err, in_axes=(0, None, None, None)))(
        jnp.asarray(values, x_T.dtype), x_T, x_0, model), np.float64)
    rmse = np.where(np.isfinite(rmse), rmse, np.inf)
    if not np.any(np.isfinite(rmse)):
        raise FloatingPointError(f"every grid of the {family!r} family gave a non-finite "
                                 f"error with solver {solver.name!r} at NFE {nfe}")
    best = float(values[int(np.argmin(rmse))])
    return GridSweep(family, values, rmse, best, grid(best))


# --------------------------------------------------------------------------- optimisation


class LearnedGrid(NamedTuple):
    """Output of :func:`optimize_timesteps`.

    Attributes:
      ts: the learned grid, a :class:`~deis_jax.grid_files.TimeGrid` whose ``metadata`` says
        what it was made for (save it with :func:`deis_jax.grid_files.save_grid`).
      validation_error: its error against the teacher on the validation noise: the RMSE
        (``loss="mse"``) or the mean per-sample RMS error (``loss="mean_error"``).
      init_validation_error: the initial grid's (the lowest of them, with several starts).
      best_step: the optimisation step that gave ``ts`` (0: its initial grid).
      steps_run: steps the run that gave ``ts`` took before early stopping (or ``steps``).
      history: ``[{"step", "calibration_error", "validation_error"}, ...]`` at every
        evaluation of that run (every start's outcome: ``ts.metadata["starts"]``).
      seconds: optimisation wall time (compilation included).
      teacher_seconds: wall time of the teacher solves.
    """

    ts: TimeGrid
    validation_error: float
    init_validation_error: float
    best_step: int
    steps_run: int
    history: list
    seconds: float
    teacher_seconds: float


def _check_pair(name_a, a, name_b, b):
    a, b = check_batch(name_a, a), check_batch(name_b, b)
    check_all_finite(name_a, a)
    check_all_finite(name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")
    return a, b


def _teachers(teacher, model, x_cal, x_val, kwargs):
    if (isinstance(teacher, tuple) and len(teacher) == 2
            and all(hasattr(v, "shape") for v in teacher)):
        y_cal, y_val = teacher
        return (_check_pair("x_T_calibration", x_cal, "teacher[0]", y_cal)[1],
                _check_pair("x_T_validation", x_val, "teacher[1]", y_val)[1],
                "given arrays")
    y_cal, text = teacher_samples(model, x_cal, teacher=teacher, **kwargs)
    y_val, _ = teacher_samples(model, x_val, teacher=teacher, **kwargs)
    return y_cal, y_val, text


def _starts(init_grid) -> list:
    """The initial grids ``init_grid`` names: one, or each of a list of kinds and arrays (one
    optimisation from each); kinds are checked here, before any work."""
    many = (isinstance(init_grid, (list, tuple)) and len(init_grid) > 0
            and all(isinstance(g, str) or np.ndim(g) == 1 for g in init_grid))
    inits = list(init_grid) if many else [init_grid]
    for g in inits:
        if isinstance(g, str):
            check_choice("init_grid", g, GRID_KINDS + ("sweep",))
    return inits


def _initial_grid(init_grid, model, solver, nfe, n_steps, x, y, kwargs):
    t_min, t_max = kwargs["t_min"], kwargs["t_max"]
    schedule = model.schedule
    if isinstance(init_grid, str):
        if init_grid == "sweep":
            sweep = sweep_grid_family(model, x, y, solver=solver, nfe=nfe, **kwargs)
            return sweep.ts, f"edm grid, rho={sweep.best_value:.3g} (best of a sweep)"
        check_choice("init_grid", init_grid, GRID_KINDS + ("sweep",))
        return timesteps(schedule, n_steps, init_grid, t_min=t_min, t_max=t_max), init_grid
    ts = check_grid(schedule, init_grid, name="init_grid")
    v = np.asarray(ts, np.float64)
    if v.shape[0] != n_steps + 1 or not np.isclose(v[0], t_max, rtol=1e-6) or not np.isclose(
            v[-1], t_min, rtol=1e-6) or not np.all(np.diff(v) < 0):
        raise ValueError(f"init_grid must be {n_steps + 1} decreasing times from t_max={t_max} "
                         f"to t_min={t_min} ({solver.name} at NFE {nfe} takes {n_steps} "
                         f"steps), got init_grid={v}")
    return ts, "given array"


@takes_model
def optimize_timesteps(
    model: Model,
    *,
    solver,
    nfe: int,
    x_T_calibration,
    x_T_validation,
    loss: str = "mse",
    teacher="adaptive",
    teacher_tol: float = 1e-5,
    init_grid="log_snr",
    steps: int = 300,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 3e-2,
    batch_size: int | None = None,
    eval_every: int = 10,
    patience: int = 10,
    key=None,
    t_min=None,
    t_max=None,
    model_info: dict | None = None,
    progress: str = "auto",
    stream=None,
) -> LearnedGrid:
    """Fit the time grid of ``solver`` at ``nfe`` model calls to a teacher (module docstring).

    Args:
      model: a :class:`~deis_jax.Model` (:func:`deis_jax.as_model`).
      solver: a deterministic solver (name or :class:`~deis_jax.solvers.Solver`).
      nfe: number of model calls of the learned grid.
      x_T_calibration: noises the grid is fitted on, ``(B, ...)`` (thousands: a few hundred
        overfit).
      x_T_validation: other noises, for early stopping.
      loss: ``"mse"`` or ``"mean_error"`` (:data:`LOSSES`): minimised on the calibration
        noise and, as an error, the early-stopping criterion on the validation noise. With
        sharp modes the RMSE is carried by a few samples near a boundary between modes, and
        ``"mse"`` spends the grid on them; ``"mean_error"`` favours the typical sample.
      teacher: ``"adaptive"`` (Tsit5 at ``rtol = atol = teacher_tol``), ``(solver, nfe)``
        (ours, log-SNR grid) or ``(x_0_calibration, x_0_validation)`` computed beforehand.
      init_grid: a grid kind of :data:`deis_jax.GRID_KINDS`, ``"sweep"`` (the best EDM
        exponent of :func:`sweep_grid_family` on the calibration noise), an array, or a list
        of these: one optimisation from each (same teacher, same mini-batches), the grid
        with the lowest validation error returned. The landscape has local minima: on the
        2-d ring DPM-Solver++(3M) at NFE 6 ends 1.0x the best fixed grid from the best
        swept EDM grid and 8.7x better from the log-SNR grid.
      steps: at most this many optimiser steps.
      optimizer: an optax transformation of the logits (default Adam at ``learning_rate``).
      batch_size: calibration noises per step (default: all of them, full-batch).
      eval_every, patience: validation error every ``eval_every`` steps; stop after
        ``patience`` evaluations without improvement.
      key: PRNG key for the mini-batches (needed with ``batch_size``).
      t_min, t_max: the grid's end times (default: the schedule's).
      model_info: JSON-serialisable identity of the model (checkpoint, step), kept in the
        metadata (as ``"model"``).
      progress: ``"auto"``, ``"bar"``, ``"log"`` or ``"none"``; ``stream`` (default stdout).

    Returns:
      A :class:`LearnedGrid`.

    Raises:
      ValueError, TypeError: a bad argument (a stochastic solver, noises of different shapes,
        an unreachable NFE, a log-SNR that is infinite at an end of the grid), before any
        work; a model that does not accept the noise's shape fails when traced.
      FloatingPointError: the gradient became non-finite; names the step.

    Example:
      >>> import jax
      >>> from deis_jax import as_model, schedules, testing
      >>> from deis_jax.learned_grids import optimize_timesteps
      >>> sched = schedules.vp_linear()
      >>> model = as_model(testing.ring_mixture(4, std=0.1).eps_fn(sched), sched)
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> res = optimize_timesteps(model, solver="tab3", nfe=5, steps=20,
      ...     x_T_calibration=sched.prior_sample(k1, (256, 2)),
      ...     x_T_validation=sched.prior_sample(k2, (256, 2)), progress="none")
      >>> res.validation_error <= res.init_validation_error
      True
    """
    schedule = model.schedule
    solver, n_steps = _resolve(schedule, solver, nfe)
    if n_steps < max(solver.min_steps, 2):
        raise ValueError(f"a grid of {n_steps} step(s) has nothing to learn: {solver.name} at "
                         f"NFE {nfe} takes {n_steps}")
    t_min, t_max = _range(schedule, t_min, t_max)
    x_cal, x_val = check_batch("x_T_calibration", x_T_calibration), check_batch(
        "x_T_validation", x_T_validation)
    check_all_finite("x_T_calibration", x_cal)
    check_all_finite("x_T_validation", x_val)
    if x_cal.shape[1:] != x_val.shape[1:] or x_cal.dtype != x_val.dtype:
        raise ValueError(f"x_T_validation {x_val.shape} {x_val.dtype} must match "
                         f"x_T_calibration {x_cal.shape} {x_cal.dtype} after the batch axis")
    steps = check_int("steps", steps, minimum=1)
    check_choice("loss", loss, LOSSES)
    inits = _starts(init_grid)
    eval_every = check_int("eval_every", eval_every, minimum=1)
    patience = check_int("patience", patience, minimum=1)
    check_choice("progress", progress, PROGRESS)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if batch_size > x_cal.shape[0]:
            raise ValueError(f"batch_size={batch_size} exceeds the {x_cal.shape[0]} "
                             "calibration noises")
        if key is None:
            raise ValueError("batch_size needs a PRNG key= to draw the mini-batches")
    if key is not None:
        check_key("key", key)
    if optimizer is None:
        optimizer = optax.adam(check_scalar("learning_rate", learning_rate, lower=0.0,
                                            lower_open=True))
    kwargs = dict(t_min=t_min, t_max=t_max)

    t0 = time.perf_counter()
    y_cal, y_val, teacher_text = _teachers(teacher, model, x_cal, x_val,
                                           dict(kwargs, tol=teacher_tol))
    teacher_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()

    def to_grid(z):
        return grid_from_logits(schedule, z, t_min=t_min, t_max=t_max)

    def objective(z, x, y, m):
        return _grid_error(loss, m, solver, to_grid(z), x, y)

    # "mse" descends the mean squared error (the square of the RMSE), "mean_error" the error
    to_loss, to_error = ((jnp.square, jnp.sqrt) if loss == "mse"
                         else (jnp.asarray, jnp.asarray))

    @jax.jit
    def update(z, opt_state, p, x, y, k):
        if batch_size is not None:
            idx = jax.random.choice(k, x.shape[0], (batch_size,), replace=False)
            x, y = x[idx], y[idx]
        loss, grad = jax.value_and_grad(lambda z: to_loss(objective(z, x, y, p)))(z)
        ok = jnp.all(jnp.isfinite(grad)) & jnp.isfinite(loss)
        upd, new_state = optimizer.update(grad, opt_state, z)
        new_z = optax.apply_updates(z, upd)
        keep = lambda new, old: jnp.where(ok, new, old)
        return (keep(new_z, z), jax.tree_util.tree_map(keep, new_state, opt_state),
                to_error(loss), ok)

    validate = jax.jit(objective)
    keys = jax.random.split(key if key is not None else jax.random.key(0), steps)
    out = sys.stdout if stream is None else stream

    def descend(ts0, init_text):
        """One optimisation from ``ts0``: its best logits ``z`` and a record of the run."""
        z = logits_from_grid(schedule, ts0).astype(x_cal.dtype)
        opt_state = optimizer.init(z)
        best_z, best = z, float(validate(z, x_val, y_val, model))
        if not np.isfinite(best):
            raise FloatingPointError(f"the initial grid ({init_text}) gives a non-finite "
                                     f"validation error with solver {solver.name!r}: {ts0}")
        init_val, best_step, stale = best, 0, 0
        history = [{"step": 0, "calibration_error": float(validate(z, x_cal, y_cal, model)),
                    "validation_error": best}]
        bar = Progress(progress, steps, 0, out)
        step = 0
        try:
            for step in range(1, steps + 1):
                z, opt_state, loss, ok = update(z, opt_state, model, x_cal, y_cal,
                                                keys[step - 1])
                if not bool(ok):
                    raise FloatingPointError(
                        f"the gradient of the grid's calibration loss is non-finite at "
                        f"optimisation step {step} (solver {solver.name!r}, NFE {nfe}, start "
                        f"{init_text}; grid before the step: {np.asarray(to_grid(z))}); the "
                        "last finite grid is not returned: lower the learning rate or start "
                        "from another init_grid")
                if step % eval_every == 0 or step == steps:
                    val = float(validate(z, x_val, y_val, model))
                    history.append({"step": step, "calibration_error": float(loss),
                                    "validation_error": val})
                    bar.update(step, steps, {"cal": float(loss), "val": val}, eval_every)
                    if val < best:
                        best_z, best, best_step, stale = z, val, step, 0
                    else:
                        stale += 1
                        if stale >= patience:
                            break
        finally:
            bar.close()
        return best_z, {"init_grid": init_text, "init_validation_error": init_val,
                        "validation_error": best, "best_step": best_step, "steps_run": step,
                        "history": history}

    runs = [descend(*_initial_grid(init, model, solver, nfe, n_steps, x_cal, y_cal, kwargs))
            for init in inits]
    best_z, run = min(runs, key=lambda r: r[1]["validation_error"])
    init_text, best, best_step, step, history = (run[k] for k in (
        "init_grid", "validation_error", "best_step", "steps_run", "history"))
    init_val = min(r["init_validation_error"] for _, r in runs)
    starts = [{k: v for k, v in r.items() if k != "history"} for _, r in runs]
    seconds = time.perf_counter() - t0
    ts = np.asarray(to_grid(best_z), np.float64)
    meta = {"solver": solver.name, "nfe": int(nfe), "n_steps": n_steps,
            "schedule": schedule_record(schedule), "loss": loss, "validation_error": best,
            "init_validation_error": init_val, "init_grid": init_text, "teacher": teacher_text,
            "calibration_size": int(x_cal.shape[0]),
            "validation_size": int(x_val.shape[0]), "best_step": best_step,
            "steps_run": step, "starts": starts, "model": model_info,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    return LearnedGrid(TimeGrid(ts, meta), best, init_val, best_step, step, history, seconds,
                       teacher_seconds)
