r"""The exponential-integrator kit every EI solver builds its table from.

Between two times ``s -> t`` the probability-flow ODE is solved exactly by (DEIS eq. 9,
DPM-Solver eq. 3.4, DPM-Solver++ eq. 9; ``lambda = log(alpha/sigma)``)

.. math::
   x_t = \frac{\alpha_t}{\alpha_s} x_s - \sigma_t \int_0^{h} e^{u}\,
         \epsilon(\lambda_s + u)\, du
       = \frac{\sigma_t}{\sigma_s} x_s + \alpha_t \int_0^{h} e^{-u}\,
         x_0(\lambda_s + u)\, du, \qquad h = \lambda_t - \lambda_s .

Both read :math:`x_t = a\,x_s - s_t \int_0^1 \hat h\, e^{\hat h (1 - v)}\, m(v)\, dv` with
the *linear part* (:func:`exp_linear`) ``a = alpha_t/alpha_s``, ``s_t = sigma_t``,
``hh = h`` for noise prediction ``m = eps`` and ``a = sigma_t/sigma_s``, ``s_t = alpha_t``,
``hh = -h`` for data prediction ``m = x0``. Replacing ``m`` by a polynomial in
``v = (lambda - lambda_s)/h`` gives closed forms in the phi-functions
``phi_k(z) = int_0^1 e^{(1-v) z} v^{k-1}/(k-1)! dv``:
the monomial ``v^k`` has weight ``-s_t hh k! phi_{k+1}(hh)`` (:func:`phi_weights`); ``k = 0``
is the DDIM weight ``-s_t (e^{hh} - 1)``.

Here: phi-functions; Lagrange bases (values and monomial coefficients); the history window
of a multistep method; the linear part; closed-form weights of a Lagrange polynomial in
``lambda`` (DPM-Solver++(3M), log-rho DEIS) and Gauss--Legendre weights of one in ``t`` or
``rho`` (tAB/rhoAB-DEIS); and the linear multistep table with its one-call step. DDIM,
DEIS, iPNDM, DPM-Solver(++), UniPC and the EI SDE steps use these pieces; nothing here is
specific to one of them. Everything is ``jnp`` on the (possibly traced) grid: the tables are
differentiable with respect to ``ts``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice
from deis_jax.quadrature import DEFAULT_NODES, gauss_legendre

__all__ = [
    "BASES",
    "ExpLinear",
    "FinalRule",
    "MultistepCoeffs",
    "MultistepState",
    "SECOND_BAND",
    "apply_final_rule",
    "blend_final",
    "curvature_weight",
    "damp_curvature",
    "ei_weights",
    "exp_linear",
    "exp_poly_weights",
    "final_weight",
    "history_window",
    "lagrange_basis",
    "lagrange_monomials",
    "lowered_degrees",
    "multistep_init",
    "multistep_step",
    "pad_columns",
    "phi",
    "phi_weights",
    "ring_combine",
    "ring_push",
    "second_weight",
    "smoothstep",
]

BASES = ("t", "rho", "log_rho")
# FinalRule.second_band (lo, lo_width, hi, hi_width) of x0-prediction 2M and UniPC (bh2): the
# step before the last lowered to degree 0 while the last step is 1.2-1.75 long in lambda
# (fading in over 1.0-1.2, out over 1.75-1.95). UniPC-bh1 has its own (unipc.FINAL_RULES).
SECOND_BAND = (1.1, 0.1, 1.85, 0.1)
_TAYLOR_TERMS = 20


def phi(n: int, z):
    r"""The phi-function ``phi_n(z) = sum_{m>=0} z^m / (m+n)!`` (``phi_0 = e^z``), elementwise.

    ``phi_1(z) = expm1(z)/z`` and ``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z``; the recursion
    cancels for small ``|z|``, so there the Taylor series is summed instead (error below
    ``1e-17`` for ``|z| < 1``). Differentiable (double ``where``).

    Args:
      n: static order ``n >= 0``.
      z: array.
    """
    z = jnp.asarray(z)
    if n == 0:
        return jnp.exp(z)
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, 0.5)
    zl = jnp.where(small, 2.0, z)
    series = jnp.zeros_like(zs)
    for m in range(_TAYLOR_TERMS, -1, -1):  # Horner
        series = series * zs + 1.0 / float(math.factorial(m + n))
    rec = jnp.expm1(zl) / zl
    for k in range(1, n):
        rec = (rec - 1.0 / math.factorial(k)) / zl
    return jnp.where(small, series, rec)


class ExpLinear(NamedTuple):
    """Linear part of the exact solution from ``s`` to ``t`` (module docstring)."""

    a: Any  # weight of x_s: alpha_t/alpha_s (eps) or sigma_t/sigma_s (x0)
    scale: Any  # s_t: sigma_t (eps) or alpha_t (x0)
    hh: Any  # h (eps) or -h (x0), h = lambda_t - lambda_s


def exp_linear(schedule, t_from, t_to, model: str) -> ExpLinear:
    """The linear part from ``t_from`` to ``t_to`` (arrays of any matching shape)."""
    h = schedule.log_snr(t_to) - schedule.log_snr(t_from)
    if model == "eps":
        return ExpLinear(jnp.exp(schedule.log_alpha(t_to) - schedule.log_alpha(t_from)),
                         schedule.sigma(t_to), h)
    return ExpLinear(jnp.exp(schedule.log_sigma(t_to) - schedule.log_sigma(t_from)),
                     schedule.alpha(t_to), -h)


def phi_weights(lin: ExpLinear, n_powers: int):
    r"""Weights ``G_k = -s_t hh k! phi_{k+1}(hh)`` of the monomials ``v^k``, ``k < n_powers``,
    stacked on a new last axis; ``G_0 = -s_t expm1(hh)`` is the DDIM weight."""
    g = [-lin.scale * jnp.expm1(lin.hh)]
    g += [-lin.scale * lin.hh * math.factorial(k) * phi(k + 1, lin.hh)
          for k in range(1, n_powers)]
    return jnp.stack(g, axis=-1)


def history_window(n_steps: int, degrees) -> tuple[np.ndarray, np.ndarray]:
    """Static window of a multistep method: step ``i`` uses grid points ``i, i-1, ..., i-d_i``.

    Args:
      n_steps: ``N``.
      degrees: static ints ``(N,)`` (``d_i <= i``) or one int (then ``min(i, degree)``:
        the lower-order warm-up).

    Returns:
      ``(idx, mask)`` of shape ``(N, K)``, ``K = max(d) + 1``: the grid index of each
      history point (clipped to 0 where masked) and which exist.
    """
    if np.ndim(degrees) == 0:
        degrees = np.minimum(np.arange(n_steps), int(degrees))
    degrees = np.asarray(degrees, dtype=np.int64)
    if np.any(degrees > np.arange(n_steps)):
        raise ValueError(f"degrees[i] must be <= i (history available), got {degrees}")
    k = int(degrees.max()) + 1 if n_steps else 1
    idx = np.arange(n_steps)[:, None] - np.arange(k)[None, :]
    mask = np.arange(k)[None, :] <= degrees[:, None]
    return np.maximum(idx, 0), mask


def lagrange_basis(u, nodes, mask):
    r"""Evaluate the Lagrange basis ``l_j(u) = prod_{m != j} (u - u_m)/(u_j - u_m)``.

    Args:
      u: evaluation points, shape ``(N, Q)``.
      nodes: interpolation nodes, shape ``(N, K)``.
      mask: static bool ``(N, K)``, which nodes exist; masked nodes are left out of the
        products and their basis functions are zero.

    Returns:
      Array of shape ``(N, Q, K)``.
    """
    k = nodes.shape[-1]
    off_diag = ~np.eye(k, dtype=bool)
    use = off_diag[None] & mask[:, None, :] & mask[:, :, None]  # (N, j, m)
    diff = nodes[:, :, None] - nodes[:, None, :]  # u_j - u_m
    denom = jnp.where(use, diff, 1.0)  # double-where: finite gradients through unused pairs
    ratio = (u[:, :, None, None] - nodes[:, None, None, :]) / denom[:, None]
    basis = jnp.prod(jnp.where(use[:, None], ratio, 1.0), axis=-1)
    return basis * mask[:, None, :]


def lagrange_monomials(nodes, mask):
    r"""Monomial coefficients of the Lagrange basis: ``l_j(v) = sum_k P[..., j, k] v^k``.

    ``l_j(v) = prod_{m != j, mask_m} (v - v_m)/(v_j - v_m)`` over the nodes ``v_m`` that
    exist (``mask``); rows of missing nodes are zero. Equivalently ``P`` solves the
    transposed Vandermonde system ``sum_j P[j, k] v_j^i = delta_{ik}`` for the existing
    nodes, which is how UniPC's small linear systems are solved (no LU needed).

    Args:
      nodes: ``(N, K)``; mask: static bool ``(N, K)``.

    Returns:
      ``(N, K, K)``.
    """
    mask = np.asarray(mask)
    k = nodes.shape[-1]
    one, zero = jnp.ones_like(nodes[:, 0]), jnp.zeros_like(nodes[:, 0])
    rows = []
    for j in range(k):
        poly = [one] + [zero] * (k - 1)
        denom = one
        for m in range(k):
            if m == j:
                continue
            use = mask[:, m]
            shifted = [zero] + poly[:-1]
            poly = [jnp.where(use, sh - nodes[:, m] * q, q) for sh, q in zip(shifted, poly)]
            # Missing nodes may coincide with existing ones: keep their factors at 1 so
            # neither the values nor the gradients see 0/0 (double where).
            denom = denom * jnp.where(use & mask[:, j], nodes[:, j] - nodes[:, m], 1.0)
        rows.append(jnp.where(mask[:, j, None], jnp.stack(poly, axis=-1) / denom[:, None], 0.0))
    return jnp.stack(rows, axis=1)


def exp_poly_weights(schedule, ts, degrees, model: str, g_map=None):
    r"""Closed-form weights of a multistep exponential integrator with a Lagrange polynomial
    in ``lambda`` (DPM-Solver++(3M), log-rho DEIS).

    Over step ``i`` the model output is replaced by the Lagrange polynomial through
    ``(lambda_{i-j}, m_{i-j})``, ``j = 0..degrees[i]``, and the exponential integral is taken
    exactly: with ``v = (lambda - lambda_i)/h_i`` and ``l_j(v) = sum_k p_{jk} v^k``,
    ``C_{ij} = sum_k p_{jk} G_{ik}`` (:func:`phi_weights`), and
    ``x_{i+1} = a_i x_i + sum_j C_ij m_{i-j}``.

    Args:
      schedule: noise schedule.
      ts: grid ``(N+1,)``, either direction; may be traced.
      degrees: static ints ``(N,)`` (``<= i``) or one int (warm-up ``min(i, degree)``).
      model: ``"eps"`` or ``"x0"``.
      g_map: optional ``g_map(g, h, degrees) -> g`` replacing the monomial weights ``G (N, K)``
        before they are combined (DPM-Solver++'s 2M weight and damped curvature,
        :mod:`deis_jax.solvers.dpm_solver_pp`); ``h (N,)`` the steps in ``lambda``.

    Returns:
      ``(a, C)`` of shapes ``(N,)`` and ``(N, K)``, ``K = max(degrees) + 1``.
    """
    ts = jnp.asarray(ts)
    n = ts.shape[0] - 1
    idx, mask = history_window(n, degrees)
    lam = schedule.log_snr(ts)
    h = lam[1:] - lam[:-1]
    v = (lam[idx] - lam[:-1, None]) / h[:, None]  # (N, K) nodes, v_0 = 0
    lin = exp_linear(schedule, ts[:-1], ts[1:], model)
    g = phi_weights(lin, idx.shape[1])
    if g_map is not None:
        g = g_map(g, h, mask.sum(axis=1) - 1)
    p = lagrange_monomials(v, mask)  # (N, K basis, K powers)
    return lin.a, jnp.einsum("njk,nk->nj", p, g)


def curvature_weight(h, scale: float):
    r"""``s(h) = 1 / (1 + (h/h_c)^4)``, ``h_c = scale``: the weight of the curvature (degree
    >= 2) part of the interpolating polynomial on a step of length ``h`` in ``lambda``.

    Exact as ``h -> 0`` (``1 - s = O(h^4)``, so the method keeps its order) and small on long
    steps, where the Taylor series of the model output in ``lambda`` no longer converges and
    the extrapolated curvature does more harm than good (measured on sharp mixtures:
    :mod:`~deis_jax.solvers.dpm_solver_pp`, :mod:`~deis_jax.solvers.deis_ab`).
    """
    return 1.0 / (1.0 + (jnp.abs(h) / scale) ** 4)


def damp_curvature(g, h, scale: float):
    """Monomial weights ``G (N, K)`` of :func:`exp_poly_weights` with the weight of ``v^k``,
    ``k >= 2``, multiplied by ``s(h)^(k-1)`` (:func:`curvature_weight`): a ``g_map``."""
    s = curvature_weight(h, scale)
    powers = jnp.maximum(jnp.arange(g.shape[-1]) - 1, 0)
    return g * s[:, None] ** powers[None, :]


def _basis_of_lambda(schedule, basis: str, lam):
    if basis == "t":
        return schedule.t_from_log_snr(lam)
    if basis == "rho":
        return jnp.exp(-lam)
    return -lam


def _basis_of_t(schedule, basis: str, ts):
    if basis == "t":
        return ts
    if basis == "rho":
        return schedule.rho(ts)
    return -schedule.log_snr(ts)


def ei_weights(schedule, ts, degree: int, basis: str = "t", *, n_nodes=DEFAULT_NODES):
    r"""Multistep exponential-integrator weights by Gauss--Legendre quadrature, ``(N, degree+1)``.

    ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + sum_j C[i, j] eps_{i-j}`` with

    .. math::
       C_{ij} = \alpha_{i+1}\int_{t_i}^{t_{i+1}} \frac{d\rho}{d\tau}\,\ell_{ij}(u(\tau))\,d\tau

    for the Lagrange basis ``l_ij`` in the variable ``u`` (``basis``: ``t`` for tAB-DEIS,
    ``rho`` for rhoAB-DEIS, ``log rho``) through the last ``degree + 1`` evaluations; rows
    ``i < degree`` have zeros beyond column ``i`` (warm-up). The integral is taken in
    ``lambda`` (``d rho = -e^{-lambda} d lambda``), where the integrand is analytic up to
    ``t_min`` (in ``t``, ``d rho/dt`` is singular at ``t = 0`` for VP), or in ``rho`` when the
    basis is ``rho`` (a polynomial: the quadrature is exact). The reference DEIS code used a
    10,000-point Riemann sum (~1e-4 relative error); this agrees with closed forms to ~1e-14.

    Args:
      schedule: noise schedule.
      ts: grid of shape ``(N+1,)``, monotone (either direction); may be traced.
      degree: polynomial degree ``r >= 0`` (``r = 0`` is DDIM).
      basis: interpolation variable, one of :data:`BASES`.
      n_nodes: Gauss--Legendre nodes per step.
    """
    check_choice("basis", basis, BASES)
    ts = jnp.asarray(ts)
    x, w = gauss_legendre(n_nodes)
    lam = schedule.log_snr(ts)
    lam_a, lam_b = lam[:-1], lam[1:]
    idx, mask = history_window(ts.shape[0] - 1, degree)
    if idx.shape[1] < degree + 1:  # fewer steps than the degree: keep the table's width
        idx = np.pad(idx, ((0, 0), (0, degree + 1 - idx.shape[1])))
        mask = np.pad(mask, ((0, 0), (0, degree + 1 - mask.shape[1])))
    nodes = _basis_of_t(schedule, basis, ts)[idx]
    alpha_next = schedule.alpha(ts[1:])
    if basis == "rho":
        rho = schedule.rho(ts)
        mid, half = 0.5 * (rho[1:] + rho[:-1]), 0.5 * (rho[1:] - rho[:-1])
        u = mid[:, None] + half[:, None] * x[None, :]
        weight = half[:, None] * w[None, :]
    else:
        # d rho = -e^{-lambda} d lambda = -rho_i e^{-(lambda - lambda_i)} d lambda.
        mid, half = 0.5 * (lam_b + lam_a), 0.5 * (lam_b - lam_a)
        lam_q = mid[:, None] + half[:, None] * x[None, :]
        rho_a = jnp.exp(-lam_a)
        weight = -(rho_a * half)[:, None] * jnp.exp(-(lam_q - lam_a[:, None])) * w[None, :]
        u = _basis_of_lambda(schedule, basis, lam_q)
    basis_vals = lagrange_basis(u, nodes, mask)  # (N, Q, K)
    return alpha_next[:, None] * jnp.einsum("nq,nqk->nk", weight, basis_vals)


def pad_columns(c, width: int):
    """Pad the last axis of a weight table with zeros to ``width`` columns."""
    missing = width - c.shape[-1]
    return c if missing <= 0 else jnp.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, missing)])


def lowered_degrees(degrees, second: int = 1) -> np.ndarray:
    """The reference implementations' final steps applied to a degree pattern: the last step
    at degree 0 (DDIM, UniP-1) and the one before at degree at most ``second`` (1: DPM-Solver++'s
    and UniPC's ``lower_order_final``, diffusers' DEIS; 0: :attr:`FinalRule.second_band`)."""
    low = np.array(degrees, dtype=np.int64)
    if low.size:
        low[-1] = 0
    if low.size >= 2:
        low[-2] = min(low[-2], second)
    return low


def smoothstep(x):
    """``3x^2 - 2x^3`` on ``[0, 1]``, 0 below and 1 above: a C^1 switch (differentiable)."""
    x = jnp.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class FinalRule(NamedTuple):
    r"""Where a multistep method lowers the order of its last two steps, from the geometry of
    the grid alone (no step count).

    The weight of the lowered rows (:func:`lowered_degrees`) is

    .. math:: w = \mathrm{smoothstep}\Big(\frac{e - c + \tau}{2\tau}\Big),\qquad
              e = |h_{N-1}|\,\Big|\frac{h_{N-1}}{h_{N-2}}\Big|^{\beta},

    ``h`` the steps in ``lambda``: ``e`` is the extrapolation length of the last step, longer
    when the step is long and when it is long relative to the one before (the history
    nodes lie closer together than the distance extrapolated over). ``w = 0`` exactly for
    ``e <= c - tau``, so once the steps are short the method keeps its full order; ``w = 1``
    for ``e >= c + tau``. Continuous and differentiable in the grid (learned grids), with no
    step-count threshold, so the error cannot jump when one more step is allowed.

    ``second_band = (lo, lo_width, hi, hi_width)``, optional: the step before the last is
    lowered further, to degree 0, with weight ``w2 = w b(|h_{N-1}|)``, ``b`` the smooth band
    (two smoothsteps) that is 1 for a last step between ``lo + lo_width`` and
    ``hi - hi_width`` long in ``lambda`` and 0 outside ``lo - lo_width .. hi + hi_width``
    (:func:`second_weight`), times a smooth switch that turns it off where the last step is
    much longer than the one before, ``h_{N-1}/h_{N-2}`` from ``second_ratio - 0.5`` to
    ``second_ratio + 0.5`` (the uniform-t grid under VP, ratio ~4). Measured, not derived:
    on the sharp ring, grids whose steps grow towards the end (EDM, quadratic under VP) with a
    last step 1.2-1.8 long, the extrapolation of the step before it overshoots
    (x0-prediction 2M and UniPC: :mod:`~deis_jax.solvers.dpm_solver_pp`,
    :mod:`~deis_jax.solvers.unipc`).
    """

    center: float  # c
    width: float  # tau
    ratio_power: float = 0.0  # beta
    second_band: tuple[float, float, float, float] | None = None  # (lo, lo_w, hi, hi_w)
    second_ratio: float = math.inf  # band off above this h_{N-1}/h_{N-2} (+- 0.5)


def final_weight(schedule, ts, rule: FinalRule):
    """``w`` of :class:`FinalRule` on the grid ``ts`` (0 when ``ts`` has fewer than 3 points)."""
    lam = schedule.log_snr(jnp.asarray(ts))
    if lam.shape[0] < 3:
        return jnp.zeros((), lam.dtype)
    h_last, h_prev = lam[-1] - lam[-2], lam[-2] - lam[-3]
    e = jnp.abs(h_last) * jnp.abs(h_last / h_prev) ** rule.ratio_power
    return smoothstep((e - rule.center + rule.width) / (2.0 * rule.width))


def second_weight(schedule, ts, rule: FinalRule):
    """``w2 = w b(|h_{N-1}|)`` of :attr:`FinalRule.second_band` (0 without a band)."""
    lam = schedule.log_snr(jnp.asarray(ts))
    if rule.second_band is None or lam.shape[0] < 3:
        return jnp.zeros((), lam.dtype)
    lo, lo_width, hi, hi_width = rule.second_band
    h_last = jnp.abs(lam[-1] - lam[-2])
    ratio = h_last / jnp.abs(lam[-2] - lam[-3])
    band = (smoothstep((h_last - lo + lo_width) / (2.0 * lo_width))
            * smoothstep((hi + hi_width - h_last) / (2.0 * hi_width))
            * smoothstep(rule.second_ratio + 0.5 - ratio))  # 1 for second_ratio = inf
    return final_weight(schedule, ts, rule) * band


def blend_final(full, low, w, rows: int = 2):
    """``full`` with its last ``rows`` rows replaced by ``(1 - w) full + w low``."""
    return full.at[-rows:].set((1.0 - w) * full[-rows:] + w * low[-rows:])


def apply_final_rule(schedule, ts, full, build, degrees, rule: FinalRule):
    """The table(s) ``full`` with the final steps of :class:`FinalRule` ``rule``.

    ``build(degrees) -> table(s)`` (the same pytree and widths as ``full``) builds the table
    for a static degree pattern; ``degrees`` is the pattern of ``full``. The last two rows
    become ``(1 - w) full + w low`` (``low = build(lowered_degrees(degrees))``), then, with a
    :attr:`~FinalRule.second_band`, the row before the last ``(1 - w2) row + w2 low2`` with
    ``low2`` the step lowered to degree 0. Rows are rows of the step (interval) they belong to.
    """
    w = final_weight(schedule, ts, rule)
    out = jax.tree_util.tree_map(lambda f, lo: blend_final(f, lo, w), full,
                                 build(lowered_degrees(degrees)))
    if rule.second_band is None:
        return out
    w2 = second_weight(schedule, ts, rule)
    return jax.tree_util.tree_map(
        lambda f, lo: f.at[-2].set((1.0 - w2) * f[-2] + w2 * lo[-2]), out,
        build(lowered_degrees(degrees, second=0)))


class MultistepState(NamedTuple):
    """Carry of a linear multistep solver: the sample, the last ``K`` model outputs in a ring
    buffer (the output of step ``j`` in slot ``j mod K``) and the step count."""

    x: Any
    hist: Any  # (K, *x.shape)
    step: Any  # int32 scalar


class MultistepCoeffs(NamedTuple):
    """Per-step table of a linear multistep exponential integrator.

    ``x_{i+1} = a_i x_i + sum_j c_{ij} out_{i-j}`` with ``out_{i-j}`` the model output at
    ``t_{i-j}`` (columns in history order: most recent first).
    """

    t: Any  # (N,) evaluation time of step i
    a: Any  # (N,)
    c: Any  # (N, K)


def multistep_init(x, coeffs: MultistepCoeffs) -> MultistepState:
    k = coeffs.c.shape[-1]
    return MultistepState(x, jnp.zeros((k,) + x.shape, x.dtype), jnp.zeros((), jnp.int32))


def ring_push(hist, step, out):
    """``hist`` with ``out`` written in place into slot ``step mod K`` (no shifting copy)."""
    return jax.lax.dynamic_update_index_in_dim(hist, out.astype(hist.dtype),
                                               step % hist.shape[0], axis=0)


def ring_combine(hist, c, step, dtype):
    r"""``sum_j c[j] out_{step-j}`` over the ring buffer after :func:`ring_push` at ``step``:
    the ``K`` weights are permuted into slot order, then one unrolled, fused multiply-add
    over the slots."""
    k = hist.shape[0]
    w = jnp.take(c.astype(dtype), (step - jnp.arange(k)) % k)
    total = w[0] * hist[0]
    for slot in range(1, k):
        total = total + w[slot] * hist[slot]
    return total


def multistep_step(model_fn, state: MultistepState, co: MultistepCoeffs, key=None):
    r"""One linear multistep step: a single model call and a fused multiply-add.

    .. math:: x_{i+1} = a_i x_i + \sum_{j=0}^{K-1} c_{ij}\, \mathrm{out}(x_{i-j}, t_{i-j})
    """
    del key
    dtype = state.x.dtype
    hist = ring_push(state.hist, state.step, model_fn(state.x, co.t))
    x = co.a.astype(dtype) * state.x + ring_combine(hist, co.c, state.step, dtype)
    return MultistepState(x, hist, state.step + 1)
