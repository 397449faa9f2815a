r"""DPM-Solver++ (data prediction): singlestep 2S and multistep 2M / 3M.

With ``x0`` the data prediction and ``h_i = lambda_{i+1} - lambda_i`` (Lu et al. 2022b):

* **2S** (Alg. 1, the stage at ``r_1 = 1/2`` of the step in ``lambda``, 2 NFE per step):
  ``u = (sigma_{s_1}/sigma_s) x_s - alpha_{s_1}(e^{-r_1 h}-1) x0_s``,
  ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h}-1)((1 - 1/(2r_1)) x0_s + x0(u, s_1)/(2r_1))``.
* **2M** (Alg. 2, 1 NFE per step), ``r_i = h_{i-1}/h_i``:

  .. math::
     x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}(e^{-h_i}-1)
       \Big[\big(1 + \tfrac{1}{2r_i}\big) x0_i - \tfrac{1}{2r_i} x0_{i-1}\Big].

* **3M** (1 NFE per step): ``x0`` is replaced by the quadratic through the last three
  evaluations, ``q(v) = x0_i + v D_1 + v^2 D_2`` with ``v = (lambda - lambda_i)/h_i``, and

  .. math::
     x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i + G_0\, x0_i + G_1 D_1 + s(h_i)\, G_2 D_2,
     \qquad G_k = -\alpha_{i+1} (-h_i)\, k!\, \varphi_{k+1}(-h_i)

  (the exact exponential integral of ``v^k``, :func:`~deis_jax.solvers.ei.phi_weights`).

Both are tables of :func:`~deis_jax.solvers.ei.exp_poly_weights` (``model="x0"``): a step
of degree 1 (2M, and 3M's second step) uses 2M's weight ``G_0/2`` on ``v`` (the
reference's; the exact ``G_1`` differs by ``O(h^3)`` and was less accurate on every
benchmark problem at NFE <= 10); warm-up steps and lowered final steps are rows with zero
weights, no branches.

**The curvature weight of 3M** (``curvature``). The reference implementations (DPM-Solver,
diffusers, k-diffusion's ``dpmpp_3m_sde``) weight ``D_2`` by ``G_2/2``: half the exact
integral, which makes them *second*-order methods (measured 2.00 at NFE 96-768 on a smooth
mixture, ``tests/test_dpm_solver.py``), but on sharp data that damping is what makes them
more accurate than the exact weight below NFE ~50 (1.2-1.7x on the 2-d ring at NFE 10-25).
The default ``"auto"`` weight

.. math:: s(h) = 1 / \big(1 + (h / h_c)^4\big),\qquad h_c = ``CURVATURE_SCALE``

is exact as ``h -> 0`` (``1 - s = O(h^4)``: 3M keeps order 3) and damps the quadratic's
curvature on long steps, where the Taylor series of ``x0`` in ``lambda`` no longer
converges (:func:`~deis_jax.solvers.ei.curvature_weight`, shared with log-rho DEIS).
``"reference"`` is the constant 1/2, ``"exact"`` 1.

**Final steps** (``final_steps``). ``"auto"`` lowers the last two steps (to degrees 0 and
<= 1, as the reference implementations do below 10 or 15 steps) by the weight of
:class:`~deis_jax.solvers.ei.FinalRule`, a smooth function of the lengths of the last steps
in ``lambda`` (``FINAL_RULES``), never of the step count, so the error does not jump when
the NFE grows. 2M's rule also lowers the step before the last to degree 0 (DDIM) by the
weight of ``FinalRule.second_band`` (:data:`~deis_jax.solvers.ei.SECOND_BAND`: while the last
step is 1.2-1.75 long in ``lambda``, fading over 1.0-1.2 and 1.75-1.95). Without it 2M's
error rose with the NFE on the ring's EDM grid, 1.22x from NFE 8 to 10 under VP and 1.28x from
6 to 8 under VE (significant cliffs; diffusers' 2M the same): its slope, extrapolated over a
step 1.4-1.6 long, overshoots. With it the error there is 0.66-0.75x at NFE 8-13 and no cliff
remains; it costs up to 1.09x on the 64-d mixture (VE, EDM grid, NFE 9-11). Measured, not
derived: with a last step above ~1.9 (NFE <= 8 on the EDM grid, the uniform grid under VP)
keeping the slope was up to 1.5x more accurate on the ring.
``"reference"``: below 15 steps the last two steps have degrees 0 and 1 (diffusers' rule;
with it 3M's error jumps at 15 steps, e.g. 2.6x on the ring under VP on the quadratic grid,
``benchmarks/results/cliffs.md``). ``"none"``: full order up to the last step.
A :class:`~deis_jax.solvers.ei.FinalRule` may be passed instead.

**How the constants were chosen** (measured, not derived). ``FINAL_RULES`` and
``CURVATURE_SCALE`` were fitted on the two benchmark problems (2-d ring of sharp modes, 64-d
mixture; VP and VE; log-SNR, uniform, quadratic and EDM grids; NFE 5-50; 126 cells, float64)
to minimise the cells where ours is more than 1.02x the error of the *most* accurate of three
reference rules at that cell (lowered below 10 steps, below 15 steps, never); then checked on
held-out problems (a 16-mode ring, an 8-d mixture; VP-cosine and VE). The result beats
diffusers' DPM-Solver++ on most cells (``benchmarks/results/peers.md``) but not all: no rule
of the grid alone can, since the best final order differs between problems on the same grid
(on the EDM grid at 20 steps the lowered 3M is 1.5x better on the ring and 1.7x worse on the
64-d mixture). The 2M rule lowers when the geometric mean of the last two steps
``sqrt(h_{N-1} h_{N-2})`` exceeds ~1 (``ratio_power = -1/2``); 3M's lowers partly from a
last step of 1 and fully from 3. 3M's wide ramp is forced by the no-cliff criterion: with a
narrow one (lowered above 1.5 +- 0.3, the best fit) the blended error dips where the two
rules' errors cancel and then rises 1.9x from 14 to 16 NFE on the ring under VP on the
quadratic grid (``tests/test_no_cliffs.py``); the wide ramp rises at most 1.04x over NFE
5-40 on all four grids there, for 37 instead of 29 fitted cells above 1.02x the best
reference rule.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_member, check_positive_or_none
from deis_jax.solvers.base import Solver, make_solver, option_suffix
from deis_jax.solvers.dpm_solver import H_MAX, singlestep_table
from deis_jax.solvers.ei import (
    SECOND_BAND,
    FinalRule,
    MultistepCoeffs,
    apply_final_rule,
    damp_curvature,
    exp_poly_weights,
    lowered_degrees,
    multistep_init,
    multistep_step,
    pad_columns,
)
from deis_jax.solvers.runge_kutta import stage_init, stage_step

__all__ = ["dpm_solver_pp", "dpmpp_2s", "multistep_degrees", "dpmpp_weights", "FINAL_STEPS",
           "FINAL_RULES", "CURVATURES", "CURVATURE_SCALE"]

FINAL_STEPS = ("auto", "reference", "none")
CURVATURES = ("auto", "reference", "exact")
REFERENCE_STEPS = 15  # diffusers lowers the last orders below this many steps
FINAL_RULES = {2: FinalRule(1.0, 0.1, -0.5, SECOND_BAND), 3: FinalRule(2.0, 1.0, 0.0)}
CURVATURE_SCALE = 0.5


def multistep_degrees(n_steps: int, order: int, final_steps: str = "none") -> np.ndarray:
    """Polynomial degree (order - 1) of every step: warm-up ``0, 1, ...`` up to
    ``order - 1``; with ``final_steps="reference"`` the last two lowered below 15 steps."""
    deg = np.minimum(np.arange(n_steps), order - 1)
    if final_steps == "reference" and 0 < n_steps < REFERENCE_STEPS:
        deg = lowered_degrees(deg)
    return deg


def dpmpp_weights(curvature: str):
    """The monomial weights DPM-Solver++ uses: ``G_0/2`` on ``v`` in steps of degree 1 (2M),
    the curvature weight on ``v^2`` (module docstring)."""

    def g_map(g, h, degrees):
        if g.shape[-1] > 1:
            g = g.at[:, 1].set(jnp.where(degrees == 1, 0.5 * g[:, 0], g[:, 1]))
        if curvature == "reference":
            return g.at[:, 2:].multiply(0.5)
        return g if curvature == "exact" else damp_curvature(g, h, CURVATURE_SCALE)

    return g_map


@functools.lru_cache(maxsize=None)
def _dpm_solver_pp(order: int, final_steps, curvature: str) -> Solver:
    g_map = dpmpp_weights(curvature)

    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        deg = multistep_degrees(n, order, final_steps if final_steps == "reference" else "none")
        a, c = exp_poly_weights(schedule, ts, deg, "x0", g_map)
        c = pad_columns(c, order)
        if final_steps not in ("reference", "none") and n >= 2:
            rule = FINAL_RULES[order] if final_steps == "auto" else final_steps
            c = apply_final_rule(schedule, ts, c, lambda d: pad_columns(
                exp_poly_weights(schedule, ts, d, "x0", g_map)[1], order), deg, rule)
        return MultistepCoeffs(ts[:-1], a, c)

    # The reference's half curvature weight leaves an O(h^3) local error: second order.
    true_order = 2 if curvature == "reference" else order
    suffix = option_suffix(final_steps=final_steps, curvature=curvature)
    return make_solver(f"dpmpp_{order}m{suffix}", true_order, 1, coefficients, multistep_init,
                       multistep_step, model="x0")


def dpm_solver_pp(order: int = 2, *, final_steps="auto", curvature: str = "auto") -> Solver:
    """Multistep DPM-Solver++(``order``M), ``order`` in (2, 3), 1 NFE per step, x0 model.

    Args:
      order: 2 (Alg. 2 of Lu et al. 2022b) or 3.
      final_steps: ``"auto"`` (default: the last two steps lowered by a smooth function of
        the grid's last steps, :data:`FINAL_RULES`), ``"reference"`` (below 15 steps the last
        two steps have orders 1 and 2, as in diffusers; its error jumps at 15 steps),
        ``"none"``, or a :class:`~deis_jax.solvers.ei.FinalRule` (module docstring).
      curvature: 3M's weight of the curvature term: ``"auto"`` (default, exact on short
        steps, damped on long ones), ``"reference"`` (1/2, as the reference implementations:
        a second-order method) or ``"exact"``.

    Example:
      >>> from deis_jax import get_solver
      >>> from deis_jax.solvers import dpm_solver_pp
      >>> dpm_solver_pp(3, final_steps="reference", curvature="reference").name
      'dpmpp_3m_final_steps_reference_curvature_reference'
      >>> get_solver("dpmpp_3m_reference").name  # the same solver, registered
      'dpmpp_3m_reference'
    """
    order = check_member("order", order, (2, 3))
    if not isinstance(final_steps, FinalRule):
        check_choice("final_steps", final_steps, FINAL_STEPS)
    check_choice("curvature", curvature, CURVATURES)
    return _dpm_solver_pp(order, final_steps, curvature)


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
