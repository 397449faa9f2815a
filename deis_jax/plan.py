"""What runs: the solver, the time grid and the exact NFE, resolved once into one :class:`Plan`.

:func:`make_plan` is the one function that turns a solver name, an NFE or a grid (an array, a
grid kind, or a grid file from :func:`deis_jax.grid_files.load_grid`) into a ``Plan``: the
solver specialised for the NFE (DPM-Solver-fast picks its order mix from it), the grid, and
the number of model calls. :func:`deis_jax.sample` and every other fixed-grid entry point
call it with their ``solver=``, ``nfe=``, ``ts=`` and ``grid=`` arguments, or take a ``Plan``
directly. A ``Plan`` is a pytree: the grid and the solver's numeric settings are data (a new
learned grid never recompiles), the NFE static.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from deis_jax._checks import check_choice, check_int, is_concrete
from deis_jax.grid_files import TimeGrid, check_grid_for
from deis_jax.grids import GRID_KINDS, check_grid, timesteps
from deis_jax.precision import state_dtype
from deis_jax.schedules import Schedule
from deis_jax.solvers.base import Solver
from deis_jax.solvers.registry import get_solver

__all__ = ["Plan", "make_plan", "DEFAULT_SOLVER"]

DEFAULT_SOLVER = "tab3"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A solver, the grid it runs on and its exact number of model calls.

    Attributes:
      solver: the :class:`~deis_jax.solvers.Solver` (specialised for ``nfe`` where its step
        plan depends on it).
      ts: the grid ``(N + 1,)``: decreasing to sample, increasing to encode (data).
      nfe: the exact number of model calls of ``N`` steps (static).
    """

    solver: Solver
    ts: Any
    nfe: int

    @property
    def n_steps(self) -> int:
        return self.ts.shape[0] - 1


jax.tree_util.register_dataclass(Plan, data_fields=["solver", "ts"], meta_fields=["nfe"])


def _solver_for(solver, nfe):
    solver = get_solver(solver)
    if nfe is not None and solver.for_nfe is not None:
        solver = solver.for_nfe(solver, nfe)
    return solver


def make_plan(schedule: Schedule, solver: str | Solver | None = None, *, nfe: int | None = None,
              ts=None, grid: str = "quadratic", **grid_options) -> Plan:
    """Resolve what runs into one :class:`Plan`.

    Args:
      schedule: the model's schedule (for the grid and the grid file check).
      solver: a registry name or a ``Solver`` (default ``"tab3"``, or the grid file's).
      nfe: the number of model calls; the grid is then ``timesteps(schedule,
        solver.steps_for_nfe(nfe), grid, **grid_options)``.
      ts: alternatively the grid: an array ``(N + 1,)`` (may be traced), or a
        :class:`~deis_jax.grid_files.TimeGrid` from :func:`~deis_jax.grid_files.load_grid`,
        refused for another schedule, solver or step count, and run with the solver as it
        was tuned (DPM-Solver-fast with the file's NFE).
      grid: the grid kind used with ``nfe`` (:data:`deis_jax.GRID_KINDS`).
      **grid_options: options of :func:`deis_jax.timesteps` (``rho``, ``power``, ``shift``,
        ``t_min``, ``t_max``).

    Raises:
      ValueError, TypeError: neither or both of ``nfe`` and ``ts``; an NFE the solver cannot
        make; a grid too short for the solver; a grid file made for something else.

    Example:
      >>> from deis_jax import make_plan, schedules
      >>> plan = make_plan(schedules.vp_linear(), "dpm_fast", nfe=12)
      >>> plan.nfe, plan.n_steps
      (12, 5)
    """
    if isinstance(ts, TimeGrid):
        if nfe is not None:
            raise ValueError("pass only one of ts= and nfe= (the grid file fixes the NFE)")
        name = ts.metadata.get("solver") if solver is None else solver
        solver = _solver_for(name, ts.metadata.get("nfe"))
        check_grid_for(ts, schedule, solver)
        ts = np.asarray(ts)
    else:
        solver = get_solver(DEFAULT_SOLVER if solver is None else solver)
    if ts is None:
        if nfe is None:
            raise ValueError("pass either ts= (a time grid) or nfe= (a number of model calls)")
        check_choice("grid", grid, GRID_KINDS)
        nfe = check_int("nfe", nfe, minimum=1)
        solver = _solver_for(solver, nfe)
        ts = timesteps(schedule, solver.steps_for_nfe(nfe), grid, **grid_options)
    elif nfe is not None:
        raise ValueError("pass only one of ts= and nfe=")
    elif grid_options:
        raise ValueError(f"grid options {sorted(grid_options)} apply to nfe= (a grid kind), "
                         "not to an explicit ts=")
    else:
        ts = check_grid(schedule, ts)
        ts = ts.astype(state_dtype(ts.dtype))
    n_steps = ts.shape[0] - 1
    if n_steps < solver.min_steps:
        raise ValueError(
            f"solver {solver.name!r} needs at least {solver.min_steps} steps, got a grid of "
            f"{n_steps} (ts has {n_steps + 1} points)")
    if solver.stochastic and is_concrete(ts) and np.asarray(ts)[-1] > np.asarray(ts)[0]:
        raise ValueError(
            f"solver {solver.name!r} is stochastic: it samples from noise to data only, "
            f"so ts must be decreasing; got an increasing grid ts={ts} (to encode data "
            "into noise, use a deterministic solver such as 'ddim' or 'tab3')")
    return Plan(solver, ts, solver.nfe_for_steps(n_steps))
