r"""Stage-level kernel: one scan row per model call, for solvers whose steps cost different
numbers of model evaluations (singlestep DPM-Solver, DPM-Solver-fast, EDM Heun).

**Row grid.** For these solvers every interval of the time grid ``ts`` is one model call
(one scan row), so ``NFE = len(ts) - 1`` exactly and the driver :func:`deis_jax.sample` runs
them unchanged. A static *order pattern* ``(k_1, ..., k_K)`` with ``sum k = NFE`` groups the
rows into solver steps: a step of order ``k`` starts at grid point ``b``, ends at ``b + k``
and evaluates the model at ``ts[b], ts[b+1], ..., ts[b+k-1]`` (its intermediate stages sit on
the grid's interior points). On a ``"log_snr"`` grid of ``3K`` intervals the stages of an
order-3 step are at ``r_1 = 1/3, r_2 = 2/3`` of the step in ``lambda``, exactly DPM-Solver's
choice (Lu et al. 2022, Sec. 3.3); on any other smooth grid ``r_j`` tends to the same values
at rate ``O(h)``, which keeps the order. EDM Heun evaluates its second stage at the step end
(its interior grid point is unused; see :mod:`deis_jax.solvers.edm_ode`).

**Row update.** Row ``r`` holds the step-start sample ``x_s`` (``start``: taken from
``state.x`` on a step's first row), the model input (``state.x`` when ``use_x``, else
``state.z``), and writes the model output into buffer slot ``slot``; then

.. math::
   y_r = a_r\, x_s + \sum_{m} c_{rm}\, \mathrm{buf}_m ,

and ``y_r`` becomes the next model input ``z`` and, when ``set_x``, the new ``state.x``
(a stage value at ``ts[r+1]`` or the step output). No branches: flags are ``jnp.where``
selects on per-row table entries, built vectorised before the scan.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_int
from deis_jax.solvers.base import Solver

__all__ = [
    "StageCoeffs",
    "StageState",
    "StagePlan",
    "stage_plan",
    "stage_init",
    "stage_step",
    "make_stage_solver",
]

N_SLOTS = 3


class StageCoeffs(NamedTuple):
    """Per-row table of the stage kernel (leading axis ``R = NFE``)."""

    t: Any  # (R,) model time of the row
    start: Any  # (R,) bool: first row of a step (x_s <- state.x)
    use_x: Any  # (R,) bool: model input is state.x (else state.z)
    slot: Any  # (R,) int32: buffer slot receiving the model output
    a: Any  # (R,) weight of the step-start sample x_s
    c: Any  # (R, N_SLOTS) weights of the buffered model outputs
    set_x: Any  # (R,) bool: the row's result becomes state.x


class StageState(NamedTuple):
    """Carry: current sample ``x``, step start ``x_start``, next input ``z``, output buffer."""

    x: Any
    x_start: Any
    z: Any
    buf: Any  # (N_SLOTS, *x.shape)


class StagePlan(NamedTuple):
    """Static (NumPy) description of the rows for a given order pattern.

    Attributes:
      orders: order of each step, shape ``(K,)``.
      begin: grid index where each row's step begins, shape ``(R,)``.
      end: grid index where each row's step ends, shape ``(R,)``.
      stage: index of the row within its step (0-based), shape ``(R,)``.
      order: order of each row's step, shape ``(R,)``.
    """

    orders: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    stage: np.ndarray
    order: np.ndarray


def stage_plan(orders: Sequence[int]) -> StagePlan:
    """Rows of the order pattern ``orders`` on a row grid (step of order ``k`` = ``k`` rows)."""
    orders = np.asarray(orders, dtype=np.int64)
    begin, end, stage, order = [], [], [], []
    b = 0
    for k in orders:
        for j in range(k):
            begin.append(b)
            end.append(b + k)
            stage.append(j)
            order.append(k)
        b += k
    return StagePlan(orders, *(np.asarray(v, dtype=np.int64) for v in (begin, end, stage, order)))


def stage_init(x, coeffs: StageCoeffs) -> StageState:
    del coeffs
    return StageState(x, x, x, jnp.zeros((N_SLOTS,) + x.shape, x.dtype))


def stage_step(model_fn, state: StageState, co: StageCoeffs, key=None) -> StageState:
    r"""One row: a single model call and a fused multiply-add (see module docstring)."""
    del key
    dtype = state.x.dtype
    x_start = jnp.where(co.start, state.x, state.x_start)
    inp = jnp.where(co.use_x, state.x, state.z)
    out = model_fn(inp, co.t)
    buf = jax.lax.dynamic_update_index_in_dim(state.buf, out, co.slot, axis=0)
    y = co.a.astype(dtype) * x_start + jnp.tensordot(co.c.astype(dtype), buf, axes=1)
    return StageState(jnp.where(co.set_x, y, state.x), x_start, y, buf)


def make_stage_solver(
    name: str,
    order: int,
    pattern: Callable[[int], Sequence[int]],
    rows: Callable[[Any, Any, StagePlan], StageCoeffs],
    *,
    model: str = "eps",
    nfe_rule: str,
) -> Solver:
    """Build a stage-level :class:`~deis_jax.solvers.base.Solver` on the row grid.

    Args:
      name: registry name.
      order: theoretical convergence order.
      pattern: ``nfe -> orders`` (static; raises ``ValueError`` naming ``nfe`` when the NFE is
        not reachable).
      rows: ``(schedule, ts, plan) -> StageCoeffs`` (vectorised ``jnp``).
      model: ``"eps"`` or ``"x0"``.
      nfe_rule: human-readable rule for valid NFEs, used in error messages.
    """
    # The smallest valid NFE is the first one the pattern accepts.
    min_nfe = next(n for n in range(1, 64) if _accepts(pattern, n))

    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        if not _accepts(pattern, n):
            raise ValueError(
                f"solver {name!r}: {nfe_rule}; on its row grid every interval is one model "
                f"call, so ts must have nfe + 1 points, got {n + 1} points (nfe={n})"
            )
        return rows(schedule, ts, stage_plan(pattern(n)))

    def steps_for_nfe(nfe: int) -> int:
        nfe = check_int("nfe", nfe, minimum=1)
        if not _accepts(pattern, nfe):
            raise ValueError(f"solver {name!r}: {nfe_rule}; got nfe={nfe}")
        return nfe

    return Solver(name, order, 1, coefficients, stage_init, stage_step, lambda n: n,
                  steps_for_nfe, model=model, min_steps=min_nfe)


def _accepts(pattern, nfe: int) -> bool:
    try:
        pattern(nfe)
    except ValueError:
        return False
    return True
