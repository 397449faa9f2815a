r"""DPM-Solver++ (data prediction): singlestep 2S and multistep 2M / 3M.

With ``x0`` the data prediction and ``h_i = lambda_{i+1} - lambda_i`` (Lu et al. 2022b):

* **2S** (Alg. 1, the stage at ``r_1 = 1/2`` of the step in ``lambda``, 2 NFE per step):
  ``u = (sigma_{s_1}/sigma_s) x_s - alpha_{s_1}(e^{-r_1 h}-1) x0_s``,
  ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h}-1)((1 - 1/(2r_1)) x0_s + x0(u, s_1)/(2r_1))``.
* **2M** (Alg. 2, 1 NFE per step), ``r_i = h_{i-1}/h_i``:

  .. math::
     x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}(e^{-h_i}-1)
       \Big[\big(1 + \tfrac{1}{2r_i}\big) x0_i - \tfrac{1}{2r_i} x0_{i-1}\Big].

* **3M** (1 NFE per step): the exact exponential integral of the quadratic Lagrange
  interpolant of ``x0`` in ``lambda`` through the last three evaluations (closed form in
  phi-functions, :func:`~deis_jax.solvers.ei.exp_poly_weights`); this is the
  third-order member of the family whose first two members are DDIM and (up to an
  ``O(h^3)`` term) 2M.

2M and 3M are :class:`~deis_jax.solvers.ei.MultistepCoeffs` tables (``model="x0"``): the
warm-up steps and the lower-order final steps are rows with zero weights, no branches. 2S is
a two-stage row of :mod:`deis_jax.solvers.runge_kutta`.

**Final steps** (``final_steps``). The reference implementation (``"reference"``) lowers the
order of the last two steps (to 1 and 2) only when there are fewer than 15 steps. Its error
then jumps when the step count reaches 15: with 3M's weights, on the 8-mode ring under
VP-linear on the quadratic grid, RMSE goes from 2.8e-2 at 13 steps to 7.3e-2 at 15
(``tests/test_no_cliffs.py``; 2.6x, ``benchmarks/results/cliffs.md``). The default
``"stable"`` rule does not depend on the NFE: the *last* step of 3M always has order 2, which
keeps the global order 3 (one step's local error ``O(h^3)`` is of the size of the global
error) and damps the large final step in ``lambda`` that quadratic and EDM grids produce near
``t_min``; 2M keeps order 2 throughout. Measured: no cliff (``RMSE(n+2) <= 1.1 RMSE(n)``,
NFE 5-50, 1,000 samples) in ``benchmarks/results/cliffs.md``; the price is a larger error than
the reference rule at 10-14 steps on quadratic/EDM grids (up to 2.7x on the ring); from 15
steps on it is smaller there, and within 10% on the log-SNR grid. ``"none"``: full order up
to the last step.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_member, check_positive_or_none
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.dpm_solver import H_MAX, singlestep_table
from deis_jax.solvers.ei import (
    MultistepCoeffs,
    exp_linear,
    exp_poly_weights,
    multistep_init,
    multistep_step,
    pad_columns,
    phi_weights,
)
from deis_jax.solvers.runge_kutta import stage_init, stage_step

__all__ = ["dpm_solver_pp", "dpmpp_2s", "multistep_degrees", "FINAL_STEPS"]

FINAL_STEPS = ("stable", "reference", "none")
REFERENCE_STEPS = 15  # the reference rule lowers the last orders below this many steps


def multistep_degrees(n_steps: int, order: int, final_steps: str = "none") -> np.ndarray:
    """Polynomial degree (order - 1) of every step: warm-up ``0, 1, ...`` up to ``order - 1``,
    then the final-step rule (``"stable"``: 3M's last step degree 1; ``"reference"``: below 15
    steps the last two steps degrees 0 and at most 1; ``"none"``)."""
    deg = np.minimum(np.arange(n_steps), order - 1)
    if final_steps == "stable" and order == 3 and n_steps:
        deg[-1] = min(deg[-1], 1)
    if final_steps == "reference" and 0 < n_steps < REFERENCE_STEPS:
        deg[-1] = 0
        deg[-2:-1] = np.minimum(deg[-2:-1], 1)
    return deg


def _coefficients_2m(final_steps: str):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        lin = exp_linear(schedule, ts[:-1], ts[1:], "x0")
        c0 = phi_weights(lin, 1)[:, 0]
        h = -lin.hh
        h_prev = jnp.concatenate([h[:1], h[:-1]])
        second = multistep_degrees(n, 2, final_steps) == 1
        d = jnp.where(second, 1.0 / (2.0 * (h_prev / h)), 0.0)  # 1/(2 r_i); 0 at degree 0
        c = jnp.stack([c0 * (1.0 + d), -c0 * d], axis=-1)
        return MultistepCoeffs(ts[:-1], lin.a, c)

    return coefficients


def _coefficients_3m(final_steps: str):
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        deg = multistep_degrees(ts.shape[0] - 1, 3, final_steps)
        a, c = exp_poly_weights(schedule, ts, deg, "x0")
        return MultistepCoeffs(ts[:-1], a, pad_columns(c, 3))

    return coefficients


@functools.lru_cache(maxsize=None)
def _dpm_solver_pp(order: int, final_steps: str) -> Solver:
    build = _coefficients_2m if order == 2 else _coefficients_3m
    suffix = "" if final_steps == "stable" else f"_{final_steps}"
    return make_solver(f"dpmpp_{order}m{suffix}", order, 1, build(final_steps), multistep_init,
                       multistep_step, model="x0")


def dpm_solver_pp(order: int = 2, *, final_steps: str = "stable") -> Solver:
    """Multistep DPM-Solver++(``order``M), ``order`` in (2, 3), 1 NFE per step, x0 model.

    Args:
      order: 2 (Alg. 2 of Lu et al. 2022b) or 3.
      final_steps: ``"stable"`` (default: 3M's last step has order 2 at every NFE; 2M
        unchanged), ``"reference"`` (below 15 steps the last two steps have orders 1 and 2,
        as in the reference implementations; has an error cliff at 15 steps) or ``"none"``
        (see the module docstring).
    """
    order = check_member("order", order, (2, 3))
    check_choice("final_steps", final_steps, FINAL_STEPS)
    return _dpm_solver_pp(order, final_steps)


def _coefficients_2s(schedule, ts, h_max=None):
    n = jnp.asarray(ts).shape[0] - 1
    return singlestep_table(schedule, ts, np.full(n, 2), "x0", h_max)


_DPMPP_2S = make_solver("dpmpp_2s", 2, 2, _coefficients_2s, stage_init, stage_step(2),
                        model="x0")


def dpmpp_2s(*, h_max=H_MAX) -> Solver:
    """Singlestep DPM-Solver++(2S), 2 NFE per step, the stage at ``r_1 = 1/2`` of each step
    in ``lambda``. Steps longer than ``h_max`` in ``lambda`` are taken as DDIM chains (see
    :mod:`deis_jax.solvers.dpm_solver`)."""
    return _DPMPP_2S.replace(hparams={"h_max": check_positive_or_none("h_max", h_max)})
