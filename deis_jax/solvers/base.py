"""The solver contract shared by every sampler.

A :class:`Solver` is a bundle of pure functions (as optax's ``GradientTransformation``) plus
its numeric hyper-parameters as data:

* ``coefficients(schedule, ts, **hparams) -> table``: every per-step number the scan needs,
  as a pytree whose leaves have leading axis ``N = len(ts) - 1``; built once, vectorised,
  before the scan. Step ``i`` goes from ``ts[i]`` to ``ts[i+1]`` for every solver; stage
  times (DPM-Solver's lambda-fractions, Heun's second evaluation, EDM's churned level) are
  computed here.
* ``init(x_T, table) -> state``: the scan carry; ``state.x`` is the current sample.
* ``step(model_fn, state, row, key) -> state``: one step (``nfe_per_step`` model calls);
  ``model_fn(x, t)`` is the eps- or x0-prediction (``Solver.model``) with scalar ``t``.
  Deterministic solvers ignore ``key``.
* ``final_steps``: kernels ``(step, nfe)`` of the last steps when those make fewer model
  calls (EDM's final Euler step, DPM-Solver-fast's order-2/1 steps): the driver scans the
  first ``N - len(final_steps)`` rows with ``step`` and applies these to the last rows. They
  read the same table format, so no branch is traced.

A ``Solver`` is a pytree: ``hparams`` (``eta``, ``snr``, the churn, ``h_max``) are its leaves
and everything else is static and compares by value -- the named factories build their
functions once per static configuration -- so rebuilding a solver with equal settings reuses
the compiled sampler, new ``hparams`` values do not recompile, and ``jax.vmap`` over ``eta``
traces once. The driver :func:`deis_jax.sample` runs any solver as one ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from deis_jax._checks import check_int

__all__ = ["Solver", "make_solver", "option_suffix"]


@dataclasses.dataclass(frozen=True, eq=False)
class Solver:
    """A sampler: coefficient builder, carry initialiser, pure step(s) and hyper-parameters.

    Attributes:
      name: registry name, e.g. ``"tab3"``.
      order: global convergence order (on grids whose steps shrink uniformly).
      nfe_per_step: model evaluations of ``step``.
      coefficients: ``(schedule, ts, **hparams) -> table`` (pytree, leading axis ``N``).
      init: ``(x_T, table) -> state`` with ``state.x``.
      step: ``(model_fn, state, row, key) -> state``.
      final_steps: ``((step, nfe), ...)`` for the last steps (see the module docstring).
      model: ``"eps"``, ``"x0"`` or ``"velocity"`` (``dx/dt``): which prediction the steps
        consume.
      stochastic: whether the steps use their PRNG key.
      min_steps: fewest steps the method is defined for.
      for_nfe: ``(solver, nfe) -> Solver`` for methods whose step plan depends on the NFE
        (DPM-Solver-fast: its order mix); ``None`` otherwise. ``sample(..., nfe=n)`` runs
        ``for_nfe(solver, n)``.
      hparams: numeric hyper-parameters passed to ``coefficients`` (pytree leaves: traced).
    """

    name: str
    order: int
    nfe_per_step: int
    coefficients: Callable[..., Any]
    init: Callable[..., Any]
    step: Callable[..., Any]
    final_steps: tuple = ()
    model: str = "eps"
    stochastic: bool = False
    min_steps: int = 1
    for_nfe: Callable[["Solver", int], "Solver"] | None = None
    hparams: dict = dataclasses.field(default_factory=dict)

    def table(self, schedule, ts):
        """The coefficient table of this solver on the grid ``ts``."""
        return self.coefficients(schedule, ts, **self.hparams)

    def nfe_for_steps(self, n_steps: int) -> int:
        """Exact number of model calls of ``n_steps`` steps."""
        n_steps = check_int("n_steps", n_steps, minimum=self.min_steps)
        tail = len(self.final_steps)
        return self.nfe_per_step * (n_steps - tail) + sum(nfe for _, nfe in self.final_steps)

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps that make exactly ``nfe`` model calls; raises naming the reachable NFEs."""
        nfe = check_int("nfe", nfe, minimum=1)
        solver = self if self.for_nfe is None else self.for_nfe(self, nfe)
        first = solver.nfe_for_steps(solver.min_steps)
        n_steps, rest = divmod(nfe - first, solver.nfe_per_step)
        if n_steps < 0 or rest:
            tail = len(solver.final_steps)
            last = sum(n for _, n in solver.final_steps)
            plan = (f" ({last} on its last {tail} step{'s' if tail > 1 else ''})" if tail
                    else "")
            reachable = ", ".join(str(first + k * solver.nfe_per_step) for k in range(4))
            raise ValueError(
                f"solver {solver.name!r} makes {solver.nfe_per_step} model call(s) per step"
                f"{plan}, so nfe must be one of {reachable}, ... (every "
                f"{solver.nfe_per_step}); got nfe={nfe}"
            )
        return solver.min_steps + n_steps

    def replace(self, **changes) -> "Solver":
        """A copy with some attributes changed (e.g. ``hparams``)."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Solver,
    data_fields=["hparams"],
    meta_fields=["name", "order", "nfe_per_step", "coefficients", "init", "step",
                 "final_steps", "model", "stochastic", "min_steps", "for_nfe"],
)


def make_solver(name, order, nfe_per_step, coefficients, init, step, **kwargs) -> Solver:
    """Build a :class:`Solver`; ``kwargs`` are its optional attributes.

    For a solver that should reuse compiled samplers when rebuilt, define the functions once
    (at module level, or in a factory cached on its static arguments) and pass numeric
    settings as ``hparams``.
    """
    return Solver(name, order, nfe_per_step, coefficients, init, step, **kwargs)


def option_suffix(**options) -> str:
    """``_<option>_<value>`` for every option not at its default ``"auto"`` (a non-string
    value, e.g. a :class:`~deis_jax.solvers.ei.FinalRule`, is written ``rule``), so that
    solvers built with different settings get different names.

    >>> option_suffix(final_steps="reference", curvature="auto")
    '_final_steps_reference'
    """
    return "".join(f"_{key}_{value if isinstance(value, str) else 'rule'}"
                   for key, value in options.items() if value != "auto")
