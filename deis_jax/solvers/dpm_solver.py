r"""DPM-Solver (noise prediction): singlestep orders 1-3 and DPM-Solver-fast, and the
singlestep table shared with DPM-Solver++(2S).

In the notation of :mod:`deis_jax.solvers.ei` (``a``, ``s_t``, ``hh`` the linear part from
``s`` to ``t``, ``G_0 = -s_t (e^{hh} - 1)``, ``G_1 = -s_t hh phi_2(hh)``), a singlestep step
``s -> t`` of order ``k`` evaluates the model at ``s`` and at the stage times ``s_j`` with
``lambda_{s_j} = lambda_s + r_j h`` (``r_1 = 1/2`` for ``k = 2``; ``r_1 = 1/3, r_2 = 2/3`` for
``k = 3``: Lu et al. 2022, Sec. 3.3), ``D_j = m(u_j, s_j) - m_s``:

.. math::
   \text{k=1:}\quad x_t &= a\,x_s + G_0\, m_s \quad(\text{= DDIM})\\
   \text{k=2:}\quad u_1 &= a_{s\to s_1} x_s + G_{0, s\to s_1} m_s,\quad
   x_t = a\,x_s + G_0\, m_s + \tfrac{G_0}{2 r_1} D_1\\
   \text{k=3:}\quad u_2 &= a_{s\to s_2} x_s + G_{0, s\to s_2} m_s
   + \tfrac{r_2}{r_1} G_{1, s\to s_2} D_1,\quad
   x_t = a\,x_s + G_0\, m_s + \tfrac{1}{r_2} G_1 D_2

(Lu et al. 2022, Alg. 1 and 2 for ``m = eps``; DPM-Solver++(2S), Lu et al. 2022b, Alg. 1,
for ``m = x0``). Each step is one row of the stage table of
:mod:`deis_jax.solvers.runge_kutta`: a step goes from ``ts[i]`` to ``ts[i+1]`` and makes ``k``
model calls, so ``NFE = k N``.

**DPM-Solver-fast** (Lu et al. 2022, Sec. 3.4) chooses its orders from the NFE:
``K = nfe // 3 + 1`` steps, all of order 3 except the last: orders 2, 1 when ``nfe = 3m``;
1 when ``nfe = 3m + 1``; 2 when ``nfe = 3m + 2``. The order-3 steps are one ``lax.scan``;
the lower-order last steps run after it on the same table (fewer stages, no branch), so the
NFE is exact. With ``sample(..., nfe=...)`` the mix follows the NFE; on a grid passed as
``ts`` the solver ``dpm_fast(nfe=...)`` fixes it (``dpm_fast()`` alone: all order 3 and an
order-2 last step, ``NFE = 3K - 1``). The order-1 last step of the ``nfe % 3 = 0, 1`` plans
has local error ``O(h^2)``, so their global order is 2 (``Solver.order`` of the plan says
so; measured in ``tests/test_dpm_solver.py``); the method is meant for NFE below ~20.

**Long steps.** A step of order 2 or 3 whose length in ``lambda`` exceeds ``h_max`` (default
:data:`H_MAX` = 2.5) is unstable on non-Gaussian data: without a limit, DPM-Solver-fast at NFE
5-8 reached RMSE 46 (220 times DDIM's) on the benchmark mixtures, and on a smooth mixture an
order-3 step of ``h = 3.2`` was no better than DDIM while ``h = 2.4`` was 2.5 times better.
Such a step is taken as a chain of DDIM steps through its stage times instead (same model
calls; a traced ``jnp.where`` on the table, so it follows the actual grid and schedule, not a
fixed NFE threshold). ``h_max=None`` disables it.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_int, check_member, check_positive_or_none
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.ei import exp_linear, phi_weights
from deis_jax.solvers.runge_kutta import StageCoeffs, stage_init, stage_step

__all__ = ["H_MAX", "dpm_solver", "dpm_fast", "singlestep_table", "fast_orders"]

H_MAX = 2.5
# Stage fractions r_j of a step of order k (in lambda), padded with 1 (unused stages).
_FRACTIONS = {1: (0.0, 1.0, 1.0), 2: (0.0, 0.5, 1.0), 3: (0.0, 1 / 3, 2 / 3)}


def singlestep_table(schedule, ts, orders, model: str, h_max=None) -> StageCoeffs:
    r"""Stage table of singlestep DPM-Solver-k (``model="eps"``) or DPM-Solver++(2S)
    (``model="x0"``) for steps of the static orders ``orders (N,)`` (module docstring).

    The table has ``S = max(orders)`` stages; a step of lower order leaves its extra stage
    rows unused (their times are the step end). With ``h_max``, a step longer than ``h_max``
    in ``lambda`` becomes a chain of DDIM steps through its stage times (selected with
    ``jnp.where`` on the traced steps).
    """
    orders = np.asarray(orders, dtype=np.int64)
    if model == "x0" and np.any(orders > 2):
        raise ValueError("DPM-Solver++ singlestep steps exist for orders 1 and 2 only")
    n_stages = int(orders.max())
    ts = jnp.asarray(ts)
    lam = schedule.log_snr(ts)
    h = lam[1:] - lam[:-1]
    frac = np.array([_FRACTIONS[k][:n_stages] for k in orders])  # (N, S)
    t_stage = schedule.t_from_log_snr(lam[:-1, None] + frac * h[:, None])
    t_stage = jnp.where(frac == 0, ts[:-1, None], jnp.where(frac == 1, ts[1:, None], t_stage))
    # The points each row maps to: the stage times, then the step end (the result row).
    points = jnp.concatenate([t_stage, ts[1:, None]], axis=-1)  # (N, S+1)
    lin = exp_linear(schedule, ts[:-1, None], points, model)
    g = phi_weights(lin, 2)  # (N, S+1, 2): G_0 and G_1 from the step start to each point
    c = jnp.zeros(points.shape + (n_stages,), g.dtype).at[..., 0].set(g[..., 0])
    if n_stages >= 2:  # order 2: result + G_0 / (2 r_1) D_1
        d1 = jnp.where(orders == 2, g[:, -1, 0] / (2.0 * frac[:, 1]), 0.0)
        c = c.at[:, -1, 0].add(-d1).at[:, -1, 1].add(d1)
    if n_stages >= 3:  # order 3: stage 2 + (r_2/r_1) G_1 D_1; result + G_1 / r_2 D_2
        is3 = orders == 3
        r1, r2 = np.where(is3, frac[:, 1], 1.0), np.where(is3, frac[:, 2], 1.0)
        e1 = jnp.where(is3, (r2 / r1) * g[:, 2, 1], 0.0)
        e2 = jnp.where(is3, g[:, -1, 1] / r2, 0.0)
        c = c.at[:, 2, 0].add(-e1).at[:, 2, 1].add(e1)
        c = c.at[:, -1, 0].add(-e2).at[:, -1, 2].add(e2)
    lower = np.tril(np.ones((n_stages + 1, n_stages)), -1)  # row s reads outputs l < s
    c = c * lower[None]
    if h_max is not None and n_stages > 1:
        # DDIM from point l to l+1, carried to each row's point: A(p_{l+1} -> p_m) G_0(l).
        seg = phi_weights(exp_linear(schedule, points[:, :-1], points[:, 1:], model), 1)
        carry = exp_linear(schedule, points[:, None, 1:], points[:, :, None], model).a
        chain = carry * seg[:, None, :, 0] * lower[None]
        c = jnp.where((jnp.abs(h) > h_max)[:, None, None], chain, c)
    return StageCoeffs(t_stage, lin.a, c, None)


_TAILS = {0: (2, 1), 1: (1,), 2: (2,)}  # last orders of DPM-Solver-fast by nfe % 3


def fast_orders(n_steps: int, remainder: int) -> np.ndarray:
    """DPM-Solver-fast's orders on ``n_steps`` steps for ``nfe % 3 == remainder``."""
    tail = _TAILS[remainder]
    return np.array([3] * (n_steps - len(tail)) + list(tail), dtype=np.int64)


def _singlestep_coefficients(orders_for, model):
    def coefficients(schedule, ts, h_max=None):
        orders = orders_for(jnp.asarray(ts).shape[0] - 1)
        return singlestep_table(schedule, ts, orders, model, h_max)

    return coefficients


@functools.lru_cache(maxsize=None)
def _dpm_solver(order: int) -> Solver:
    return make_solver(f"dpm{order}", order, order,
                       _singlestep_coefficients(lambda n: np.full(n, order), "eps"),
                       stage_init, stage_step(order))


def dpm_solver(order: int = 3, *, h_max=H_MAX) -> Solver:
    """Singlestep DPM-Solver-``order`` (1, 2 or 3), noise prediction, ``order`` NFE per step.

    Stages at ``lambda``-fractions of each step (module docstring), so any grid works; the
    ``"log_snr"`` grid is DPM-Solver's. Order-1 DPM-Solver is DDIM. Steps longer than
    ``h_max`` in ``lambda`` are taken as DDIM chains (module docstring; ``None`` disables).

    Example:
      >>> import jax
      >>> from deis_jax import as_model, sample, schedules, testing
      >>> from deis_jax.solvers import dpm_solver
      >>> sched = schedules.vp_linear()
      >>> model = as_model(testing.gaussian_mixture(2, 4, seed=0).eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (8, 2))
      >>> x = sample(model, x_T, solver=dpm_solver(3), nfe=12, grid="log_snr")
    """
    order = check_member("order", order, (1, 2, 3))
    h_max = check_positive_or_none("h_max", h_max)
    return _dpm_solver(order).replace(hparams={"h_max": h_max})


@functools.lru_cache(maxsize=None)
def _dpm_fast(remainder: int) -> Solver:
    tail = tuple((stage_step(k), k) for k in _TAILS[remainder])
    # An order-1 last step (nfe % 3 = 0 or 1) has local error O(h^2): global order 2.
    return make_solver(
        "dpm_fast", 3 if remainder == 2 else 2, 3, _singlestep_coefficients(lambda n: fast_orders(n, remainder), "eps"),
        stage_init, stage_step(3), final_steps=tail, min_steps=len(tail),
        for_nfe=_fast_for_nfe)


def _fast_for_nfe(solver: Solver, nfe: int) -> Solver:
    nfe = check_int("nfe", nfe, minimum=1)
    return _dpm_fast(nfe % 3).replace(hparams=solver.hparams)


def dpm_fast(nfe: int | None = None, *, h_max=H_MAX) -> Solver:
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): order-3 steps, then order-2 and/or order-1
    steps, so that the NFE equals ``nfe`` exactly (any ``nfe >= 1``; ``nfe // 3 + 1`` steps).

    Args:
      nfe: fixes the order mix for a grid passed as ``ts`` (``nfe // 3 + 2`` points).
        ``sample(..., nfe=n)`` chooses it from ``n`` whatever this is; without either, a
        ``K``-step grid gets ``K - 1`` order-3 steps and one order-2 step.
      h_max: steps longer than this in ``lambda`` are taken as DDIM chains (module
        docstring; ``None`` disables).
    """
    h_max = check_positive_or_none("h_max", h_max)
    remainder = 2 if nfe is None else check_int("nfe", nfe, minimum=1) % 3
    return _dpm_fast(remainder).replace(hparams={"h_max": h_max})
