r"""UniPC: unified predictor (UniP) + corrector (UniC) at no extra NFE (Zhao et al. 2023).

Over the interval ``t_n -> t_{n+1}`` (``h = lambda_{n+1} - lambda_n``) with model outputs
``m`` (data prediction ``x0`` by default, or noise ``eps``), ``hh = -h`` (x0) or ``h``
(eps), ``r_k = (lambda_{n-k} - lambda_n)/h`` and ``D_k = (m_{n-k} - m_n)/r_k``:

.. math::
   \tilde x_{n+1} &= \ell_n x^c_n - s_{n+1}\,(e^{hh}-1)\, m_n
                    - s_{n+1} B(h) \sum_{k=1}^{p-1} a_k D_k
   \quad (\text{UniP-}p)\\
   x^c_{n+1} &= \ell_n x^c_n - s_{n+1}\,(e^{hh}-1)\, m_n
       - s_{n+1} B(h)\Big(\sum_{k=1}^{p-1} c_k D_k + c_p\,(m_{n+1} - m_n)\Big)
   \quad (\text{UniC-}p)

with ``ell_n = sigma_{n+1}/sigma_n``, ``s = alpha`` (x0) or ``ell_n = alpha_{n+1}/alpha_n``,
``s = sigma`` (eps); ``B(h) = hh`` (``"bh1"``) or ``e^{hh} - 1`` (``"bh2"``); ``a``, ``c``
solve ``R a = b`` with ``R_{ik} = r_k^{i}``, ``b_i = hh\,\varphi_{i+1}(hh)\, i!/B(h)`` (a
transposed Vandermonde system, solved through the Lagrange basis). Zhao et al. 2023, Alg. 2/3
and eq. (9); ``a_1 = 1/2`` for ``p = 2`` and, with data prediction, ``c_1 = 1/2`` for
``p = 1``, as in the reference implementation. With noise prediction UniC-1 uses the solved
weight instead, ``B(h) c_1 = h\varphi_2(h) = (e^h - 1 - h)/h`` (exact for ``eps`` linear in
``lambda``, the same for bh1 and bh2; with bh2 ``c_1`` is 0.42 at ``h = 1``, 0.34 at
``h = 2``): the ``e^{-lambda}`` weight of the noise integral leans on the start of the step,
and ``1/2`` over-weights the new point on long steps.
Measured (1,000 samples, float64, NFE 5-26): with ``1/2`` UniPC-1-eps's RMSE rose 1.3-1.8x
from NFE 5-8 to NFE 7-10 on the ring (VP and VE, log-SNR and quadratic grids); with ``b_1`` (and
the fade below) it does not, and at NFE 10 and 20 it is more accurate in 22 of the 24
problem/schedule/grid/NFE cases of the two benchmark problems (up to 1.6x), at most 10% less
in the other two. The corrector needs
``m_{n+1} = m(\tilde x_{n+1}, t_{n+1})``, which is exactly the next step's model call, so it
costs nothing: step ``i`` makes one call at the predicted ``x_i``, corrects ``x_i`` with it,
then predicts ``x_{i+1}``. The last step has no corrector (no call at ``t_N``).
UniPC-``p`` has order ``p + 1``. Warm-up steps run at lower order (rows of the table).

**Final steps** (``final_steps``). The reference implementation (and diffusers' default)
always lowers the last two intervals: UniP-1 (DDIM) with no corrector on the last, order at
most 2 on the one before. That makes UniPC a second-order method asymptotically, but on sharp
data it is the more accurate rule over the whole practical range: lowered against full order
on the two benchmark problems (VP and VE; log-SNR, EDM, quadratic and uniform grids; 126 cells
at NFE 5-50, float64), UniPC-3's error with the lowered rule was at most 1.02x the full-order
error in 111 cells (geometric mean of the ratios 0.39 at NFE 5-12, 0.60 at NFE 15-50; the
worst 1.58x, on the 64-d mixture) and UniPC-2's in 118 (geometric means 0.74 and 0.82). The
default ``"auto"`` is that rule weighted by :class:`~deis_jax.solvers.ei.FinalRule`
:data:`FINAL_RULE`: fully lowered while the last step is longer than 0.15 in ``lambda`` (every
grid of NFE <= 50 under VP), full order once it is shorter than 0.05 (so the convergence
order ``p + 1`` is kept: measured from 256 steps, ``tests/test_solver_orders.py``), smooth in
between and in the grid (learned grids). ``"reference"``: always lowered. ``"none"``: full
order up to the end.

**The interval before the last** (data prediction, ``FinalRule.second_band``). On grids whose
steps grow towards the end (EDM; quadratic under VP) the lowered rule still extrapolates at
order 2-3 over the interval before the last, which there is 1.1-2 long in ``lambda``; on the
sharp ring that overshoots, and the reference rule's error *rose* with the NFE: UniPC-3 1.25x
from NFE 8 to 10 (VP) and 1.32x from 6 to 8 (VE) on the EDM grid, UniPC-2 1.20x / 1.24x,
UniPC-2/3-bh1 up to 1.85x (``benchmarks/results/cliffs.md``; the official UniPC in diffusers
gives the same numbers). ``"auto"`` therefore also lowers that interval to order 1 with the
weight ``w2`` of :func:`~deis_jax.solvers.ei.second_weight`, a smooth band in the length of
the last step: 1.2-1.75 for bh2 (:data:`~deis_jax.solvers.ei.SECOND_BAND`, fading over
1.0-1.2 and 1.75-1.95), 1.0-2.5 for bh1 (fading over 0.2-1.0 and 2.5-2.7, and off where
the last step is more than ~2.5x the one before, ``second_ratio``: without that switch the
band lowered the uniform-t grid's (VP) interval before its 2.1-2.6 long last step at NFE
25-50 and UniPC-2-bh1 was 8.4x less accurate than the official one on the 64-d mixture at
NFE 50). Measured, not derived (the ratio of RMSEs with and without it, float64, 1,000
samples): UniPC-3 at NFE 10 on the ring's EDM grid 0.60 (VP) / 0.57 (VE), at NFE 10-15 on
its VP quadratic grid 0.64-0.77, on the 64-d mixture 0.76-0.93 at NFE 10-18 (EDM); no
significant cliff remains (``benchmarks/results/cliffs.md``). It trades against the official
UniPC: UniPC-3 is never worse (geometric mean of the ratios 0.93), UniPC-2 is worse than 1.02x
in 4 of 144 cells (worst 1.16x), UniPC-2/3-bh1 in 9 / 4 (worst 2.18x / 1.14x, VP quadratic
grid at NFE 25; ``benchmarks/results/peers.md``). Where the band is off it would cost: with
a last step above ~2 (NFE <= 8 on the EDM grid, the VP uniform grid) the order-2 interval
before it was up to 1.4x more accurate on the ring, and below ~1 (the VP quadratic grid from
NFE 21) lowering it cost up to 1.3x. Noise prediction keeps the
one-interval rule (it had no such rise).

**Long steps with noise prediction.** With ``prediction="eps"`` the UniC correction over a
long step (``|h| > 1`` in ``lambda``; the first steps of few-step quadratic grids under VE
reach 2.6) made the sampler unstable: on the 64-d benchmark mixture under VE, quadratic grid,
UniPC-3 reached RMSE 2.28 at NFE 6 with 951 of 1,000 samples in the wrong mode (DDIM: 0.31),
UniPC-1 4.97 at NFE 5. Each interval's corrector is therefore faded out as the step grows,
``x^c = (1 - v) x^c_{UniC} + v \tilde x`` with ``v = clip((|h| - 1)/(b - 1), 0, 1)``
(:func:`corrector_damping`): full corrector for ``|h| <= 1``, none from ``|h| = b``, ``b = 2``
for UniPC-2/3 and ``b = 3`` for UniPC-1 (``EPS_CORRECTOR_RAMP``); continuous in the grid, and
``v = 0`` once the steps are short, so the order is kept. Measured (1,000 samples, NFE 5-20):
the 64-d case above becomes 0.32 / 0.25 / 0.23 at NFE 5 / 6 / 7, and UniPC-3-eps on the ring
under VE (quadratic grid) goes from 1.39 to 0.06 at NFE 5. The widths were chosen by the
no-cliff sweep: ``b = 2`` for UniPC-1 left its RMSE rising 1.45x from NFE 8 to 10 on the ring
under VE (quadratic grid), ``b = 3`` removes that, but for UniPC-2/3 it is 1.8-2.1x less
accurate at NFE 5 on the ring's EDM grid and UniPC-3's RMSE rose 1.33x from NFE 6 to 8 on the
64-d mixture (VP, EDM grid). Data prediction (the default) showed no such instability and is
unchanged.

The state keeps the predicted ``x`` (what the driver's ``hook`` sees and edits), the last
corrected sample and the history of model outputs; a hook's edit reaches the corrected
sample through the model call only (the corrector starts from the previous corrected point).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_member
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.ei import (
    SECOND_BAND,
    FinalRule,
    apply_final_rule,
    blend_final,
    exp_linear,
    history_window,
    lowered_degrees,
    lagrange_monomials,
    pad_columns,
    phi,
    ring_combine,
    ring_push,
)

__all__ = ["unipc", "UniPCState", "UniPCCoeffs", "VARIANTS", "FINAL_STEPS", "FINAL_RULE",
           "FINAL_RULES", "EPS_FINAL_RULE", "EPS_CORRECTOR_RAMP", "corrector_damping"]

VARIANTS = ("bh1", "bh2")
FINAL_STEPS = ("auto", "reference", "none")
# Lowered for |h_{N-1}| >= 0.15, full order below 0.05; with data prediction the step before
# the last also at order 1 for a last step 1.2-1.75 long (bh2: SECOND_BAND) or 1.0-2.5 long
# (bh1); with noise prediction never (module docstring).
FINAL_RULE = FinalRule(0.1, 0.05, 0.0, SECOND_BAND)
FINAL_RULES = {"bh2": FINAL_RULE,
               "bh1": FINAL_RULE._replace(second_band=(0.6, 0.4, 2.6, 0.1), second_ratio=2.5)}
EPS_FINAL_RULE = FINAL_RULE._replace(second_band=None)
# Noise prediction: the corrector fades out for |h| from a to b, (a, b) by order.
EPS_CORRECTOR_RAMP = {1: (1.0, 3.0), 2: (1.0, 2.0), 3: (1.0, 2.0)}


class UniPCState(NamedTuple):
    x: Any  # predicted sample at the current time
    x_corr: Any  # corrected sample at the previous time
    hist: Any  # (P+1, *x.shape) ring buffer of m_i, ..., m_{i-P} (ei.ring_push)
    step: Any  # int32 step count


class UniPCCoeffs(NamedTuple):
    t: Any  # (N,) model time t_i
    keep: Any  # (N,) weight of the predicted x in the corrected x (1 on the first row)
    corr_x: Any  # (N,) weight of the previous corrected x
    corr: Any  # (N, P+1) corrector weights on [m_i, m_{i-1}, ..., m_{i-P}]
    pred_x: Any  # (N,) weight of the corrected x in the prediction
    pred: Any  # (N, P+1) predictor weights on [m_i, ..., m_{i-P}]


def interval_weights(schedule, ts, orders, variant: str, model: str):
    """UniP / UniC weights of every interval ``n`` for the static orders ``orders[n]``.

    Returns ``(lin, pred, corr)``: ``lin (N,)`` the weight of the corrected ``x_n``;
    ``pred (N, P+1)`` on ``[m_n, ..., m_{n-P}]``; ``corr (N, P+1)`` on
    ``[m_{n+1}, m_n, ..., m_{n+1-P}]``, ``P = max(orders)``.
    """
    orders = np.asarray(orders, dtype=np.int64)
    n = orders.shape[0]
    p = int(orders.max())
    ts = jnp.asarray(ts)
    lam = schedule.log_snr(ts)
    h = lam[1:] - lam[:-1]
    lin, scale, hh = exp_linear(schedule, ts[:-1], ts[1:], model)
    h_phi_1 = jnp.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    b = jnp.stack([hh * phi(m + 1, hh) * math.factorial(m) / b_h for m in range(1, p + 1)],
                  axis=-1)  # (N, P)
    # History nodes r_k, k = 1..P-1 (masked where the step's order does not use them).
    ks = np.arange(1, p)
    idx, mask = history_window(n, orders - 1)
    prev, r_mask = idx[:, 1:], mask[:, 1:]  # (N, P-1)
    r = jnp.where(r_mask, (lam[prev] - lam[:-1, None]) / h[:, None], 1.0)

    def masked_system(nodes, size, dim):
        # Solve sum_k rho_k nodes_k^i = b_i (i < size) through the Lagrange basis.
        use = np.arange(dim)[None, :] < size[:, None]
        return jnp.einsum("nkj,nj->nk", lagrange_monomials(nodes, use), b[:, :dim])

    scale_b = scale * b_h
    pred = [-scale * h_phi_1] + [jnp.zeros_like(h)] * p
    if p >= 2:
        rho_p = masked_system(r, orders - 1, p - 1)  # (N, P-1)
        rho_p = jnp.where((orders == 2)[:, None] & (ks[None, :] == 1), 0.5, rho_p)
        for k in ks:
            w = jnp.where(r_mask[:, k - 1], scale_b * rho_p[:, k - 1] / r[:, k - 1], 0.0)
            pred[0] = pred[0] + w
            pred[k] = -w
    # Corrector nodes: r_1..r_{q-1}, then 1 (the new point) at position q-1.
    pos = np.arange(p)
    is_new = pos[None, :] == orders[:, None] - 1
    r_pad = jnp.concatenate([r, jnp.ones((n, 1), r.dtype)], axis=-1) if p >= 2 else \
        jnp.ones((n, 1), h.dtype)
    nodes_c = jnp.where(is_new, 1.0, r_pad)
    rho_c = masked_system(nodes_c, orders, p)  # (N, P)
    if model == "x0":  # the reference implementation's fixed c_1 (see the module docstring)
        rho_c = jnp.where((orders == 1)[:, None] & (pos[None, :] == 0), 0.5, rho_c)
    c_new = jnp.sum(jnp.where(is_new, rho_c, 0.0), axis=-1)
    corr = [-scale_b * c_new, -scale * h_phi_1 + scale_b * c_new] + [jnp.zeros_like(h)] * (p - 1)
    for k in ks:
        w = jnp.where(r_mask[:, k - 1], scale_b * rho_c[:, k - 1] / r[:, k - 1], 0.0)
        corr[1] = corr[1] + w
        corr[1 + k] = -w
    return lin, jnp.stack(pred, axis=-1), jnp.stack(corr, axis=-1)


def corrector_damping(schedule, ts, ramp):
    """Per interval, the weight ``v = clip((|h| - a) / (b - a), 0, 1)`` given to "no
    corrector" in the noise-prediction UniC step, ``(a, b) = ramp`` (``EPS_CORRECTOR_RAMP[p]``
    for UniPC-``p``)."""
    lam = schedule.log_snr(jnp.asarray(ts))
    a, b = ramp
    return jnp.clip((jnp.abs(lam[1:] - lam[:-1]) - a) / (b - a), 0.0, 1.0)


def unipc_orders(n_steps: int, order: int) -> np.ndarray:
    """Order of every interval: warm-up ``1, 2, ...`` up to ``order``."""
    return np.minimum(np.arange(n_steps) + 1, order)


def unipc(predictor_order: int = 2, *, variant: str = "bh2", prediction: str = "x0",
          final_steps="auto") -> Solver:
    """UniPC-``p``: UniP-``p`` + UniC-``p`` (``p = predictor_order``, 1..3), convergence order
    ``p + 1``, 1 NFE/step.

    Args:
      predictor_order: order ``p`` of the predictor UniP-``p`` (1, 2 or 3); the corrector
        raises the method's order to ``p + 1`` (``Solver.order``).
      variant: ``"bh2"`` (``B(h) = e^{hh}-1``, default) or ``"bh1"`` (``B(h) = hh``).
      prediction: ``"x0"`` (data prediction, default) or ``"eps"`` (noise prediction).
      final_steps: ``"auto"`` (default: the last two intervals at orders 1 and <= 2 unless the
        last step is shorter than ~0.1 in ``lambda``), ``"reference"`` (always lowered, as the
        reference implementation), ``"none"``, or a :class:`~deis_jax.solvers.ei.FinalRule`
        (module docstring).

    Example:
      >>> from deis_jax.solvers import unipc
      >>> solver = unipc(3, variant="bh1")
      >>> solver.order
      4
    """
    p = check_member("predictor_order", predictor_order, (1, 2, 3))
    check_choice("variant", variant, VARIANTS)
    check_choice("prediction", prediction, ("x0", "eps"))
    if not isinstance(final_steps, FinalRule):
        check_choice("final_steps", final_steps, FINAL_STEPS)
    return _unipc(p, variant, prediction, final_steps)


@functools.lru_cache(maxsize=None)
def _unipc(order: int, variant: str, prediction: str, final_steps) -> Solver:
    def coefficients(schedule, ts):
        ts = jnp.asarray(ts)
        n = ts.shape[0] - 1
        orders = unipc_orders(n, order)
        lin, pred, corr = interval_weights(schedule, ts, orders, variant, prediction)

        def build(degrees):
            _, p, c = interval_weights(schedule, ts, degrees + 1, variant, prediction)
            return pad_columns(p, pred.shape[-1]), pad_columns(c, corr.shape[-1])

        if final_steps == "reference" and n >= 2:
            pred, corr = (blend_final(f, low, 1.0) for f, low in
                          zip((pred, corr), build(lowered_degrees(orders - 1))))
        elif final_steps != "none" and n >= 2:
            rule = final_steps if final_steps != "auto" else (
                FINAL_RULES[variant] if prediction == "x0" else EPS_FINAL_RULE)
            pred, corr = apply_final_rule(schedule, ts, (pred, corr), build, orders - 1, rule)
        if prediction == "eps":
            v = corrector_damping(schedule, ts, EPS_CORRECTOR_RAMP[order])[:, None]
            corr = (1.0 - v) * corr + v * jnp.roll(pred, 1, axis=-1)  # roll: no corrector
        pred, corr = pad_columns(pred, order + 1), pad_columns(corr, order + 1)
        first = np.arange(n) == 0
        # Row i corrects interval i-1 (none on row 0) and predicts interval i.
        corr_rows = jnp.concatenate([jnp.zeros_like(corr[:1]), corr[:-1]], axis=0)
        corr_x = jnp.concatenate([jnp.zeros_like(lin[:1]), lin[:-1]], axis=0)
        return UniPCCoeffs(ts[:-1], jnp.asarray(first, lin.dtype), corr_x, corr_rows, lin, pred)

    suffixes = (variant != "bh2", f"_{variant}"), (prediction != "x0", "_eps"), \
        (final_steps != "auto", f"_{final_steps if isinstance(final_steps, str) else 'rule'}")
    name = f"unipc{order}" + "".join(text for used, text in suffixes if used)
    return make_solver(name, order + 1, 1, coefficients, unipc_init, unipc_step,
                       model=prediction)


def unipc_init(x, coeffs: UniPCCoeffs) -> UniPCState:
    k = coeffs.pred.shape[-1]
    return UniPCState(x, x, jnp.zeros((k,) + x.shape, x.dtype), jnp.zeros((), jnp.int32))


def unipc_step(model_fn, state: UniPCState, co: UniPCCoeffs, key=None) -> UniPCState:
    """One call at the predicted ``x_i``; correct ``x_i`` with it; predict ``x_{i+1}``."""
    del key
    dtype = state.x.dtype
    i = state.step
    vals = ring_push(state.hist, i, model_fn(state.x, co.t))  # m_i, ..., m_{i-P}
    x_c = (co.keep.astype(dtype) * state.x + co.corr_x.astype(dtype) * state.x_corr
           + ring_combine(vals, co.corr, i, dtype))
    x_next = co.pred_x.astype(dtype) * x_c + ring_combine(vals, co.pred, i, dtype)
    return UniPCState(x_next, x_c, vals, i + 1)
