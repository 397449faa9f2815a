r"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables).

Along a solution of the probability-flow ODE ``dx/dlambda = F(x, lambda)`` (written in the half
log-SNR ``lambda``, :func:`deis_jax.adaptive.pf_ode_field`) the marginal densities obey
(Chen et al. 2018, Thm. 1; Song et al. 2021, App. D.2)

.. math::
   \frac{d}{d\lambda}\log p_{\lambda}(x(\lambda)) = -\nabla\cdot F(x(\lambda), \lambda),
   \qquad
   \log p_{t_{\min}}(x) = \log p_{t_{\max}}(x_T)
       + \int_{\lambda(t_{\min})}^{\lambda(t_{\max})} \nabla\cdot F\, d\lambda ,

so the augmented state ``[x, Delta]`` with ``dDelta/dlambda = div F`` is integrated from the
data (``t_min``) to the noise end (``t_max``), where the prior ``N(0, prior_std^2 I)`` of the
schedule stands in for ``p_{t_max}`` (its mismatch, e.g. ``alpha(1) ~ 6.7e-3`` for VP-linear,
is part of the model, as in Score-SDE). With ``F = (dlog alpha/dlambda) x - sigma eps``,
``div F = d (dlog alpha/dlambda) - sigma tr(d eps/dx)``.

The divergence is taken

* ``"exact"``: the trace of the Jacobian, one Jacobian-vector product per coordinate (``d``
  tangents of one linearisation; low dimension only);
* ``"hutchinson"``: the Skilling--Hutchinson estimate ``(1/K) sum_k z_k^T (dF/dx) z_k`` with
  ``K`` Rademacher or Gaussian probes (Skilling 1989; Hutchinson 1990; Grathwohl et al. 2019),
  drawn once per solve and held fixed along it, so the ODE stays deterministic and the
  estimate of ``log p`` is unbiased.

Either way the drift and the divergence come from one ``jax.linearize`` per evaluation: the
model runs forward once and its tangent map is applied to the ``K`` (or ``d``) probes. The
samples of a batch must not interact inside the model (no batch statistics): the probes span
the whole batch and the per-sample sums read the diagonal blocks of the Jacobian.

``log p`` is the density of ``p_{t_min}`` -- the data distribution convolved with the forward
noise at ``t_min`` -- evaluated at ``x`` (Song et al. 2021 use ``t_min = 1e-5``). The result is
in nats and in bits per dimension; see :func:`log_likelihood` for dequantised discrete data
and the data-scaling offset.

References: R. T. Q. Chen et al., *Neural ODEs*, NeurIPS 2018; W. Grathwohl et al., *FFJORD*,
ICLR 2019; L. Theis, A. van den Oord, M. Bethge, *A note on the evaluation of generative
models*, ICLR 2016; J. Skilling, *The eigenvalues of mega-dimensional matrices*, 1989;
M. F. Hutchinson, *A stochastic estimator of the trace of the influence matrix*, 1990;
Y. Song et al., *Score-Based Generative Modeling through SDEs*, ICLR 2021, Sec. 4.3 and
App. D.2.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_int, check_key, is_concrete
from deis_jax.adaptive import check_solve_args, integrate, nfe_for_steps, pf_ode_field
from deis_jax.inversion import encode
from deis_jax.model import Model, batched_cond, takes_model
from deis_jax.sampling import prepare

__all__ = ["DIVERGENCES", "PROBES", "LikelihoodOutput", "log_likelihood",
           "FixedGridLikelihood", "fixed_grid_log_likelihood", "dequantize"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class LikelihoodOutput(NamedTuple):
    """Result of :func:`log_likelihood` (every field per sample, shape ``(batch,)``, except
    ``x_T`` and, for a shared-steps solve, ``nfe``/``n_steps``/``success``).

    Attributes:
      logp: ``log p_{t_min}(x)`` in nats (of the data density after the scaling offset and
        the dequantisation term when ``data_range``/``n_bins`` are given, see
        :func:`log_likelihood`).
      bpd: bits per dimension, ``-logp / (d ln 2)``.
      prior_logp: ``log N(x_T; 0, prior_std^2 I)``.
      delta_logp: the integrated divergence, so that ``logp = prior_logp + delta_logp``
        (before the offsets).
      x_T: the end point of the ODE at ``t_max`` (the encoding of ``x``).
      nfe: model evaluations (linearisations) of the solve.
      n_steps: attempted adaptive steps.
      success: whether the solve finished within ``max_steps``.
    """

    logp: Any
    bpd: Any
    prior_logp: Any
    delta_logp: Any
    x_T: Any
    nfe: Any
    n_steps: Any
    success: Any


def _probes(divergence, probe, n_probes, key, x):
    """``(P, batch, ...)`` tangents and the weight of their sum: the ``d`` coordinate vectors
    (each set in every sample at once) with weight 1, or ``K`` random probes with ``1/K``."""
    if divergence == "exact":
        d = math.prod(x.shape[1:])
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
        return jnp.broadcast_to(basis, (d,) + x.shape), 1.0
    shape = (n_probes,) + x.shape
    draw = jax.random.rademacher if probe == "rademacher" else jax.random.normal
    return draw(key, shape, x.dtype), 1.0 / n_probes


def _augmented_field(field: Callable, tangents, weight) -> Callable:
    r"""``[x, Delta] -> [F(x), weight * sum_p <v_p, (dF/dx) v_p>]`` per sample, from one
    ``jax.linearize`` of ``F`` and its tangent map applied to the ``tangents`` ``(P, batch,
    ...)`` (module docstring)."""

    def aug(lam, state):
        x, _ = state
        dx, tangent_map = jax.linearize(lambda y: field(lam, y), x)
        jv = jax.vmap(tangent_map)(tangents)
        feature_axes = tuple(range(2, tangents.ndim))
        div = weight * jnp.sum(jv * tangents, axis=(0,) + feature_axes)
        return dx, div

    return aug


@functools.partial(jax.jit, static_argnames=(
    "solver", "per_sample", "max_steps", "divergence", "probe", "n_probes"))
def _log_likelihood(model, solver, per_sample, max_steps, divergence, probe, n_probes, x, key,
                    t_start, t_end, rtol, atol):
    schedule = model.schedule
    lam0 = schedule.log_snr(t_start).astype(x.dtype)
    lam1 = schedule.log_snr(t_end).astype(x.dtype)
    tangents, weight = _probes(divergence, probe, n_probes, key, x)
    zero = jnp.zeros(x.shape[:1], x.dtype)
    if per_sample:  # each vmapped solve holds one sample: a batch of 1

        def one(x0, v, c):
            m = model if c is None else model.replace(
                cond=jax.tree_util.tree_map(lambda leaf: leaf[None], c))
            aug = _augmented_field(pf_ode_field(m.eps, schedule), v[:, None], weight)
            (x_T, delta), n_steps, ok = integrate(aug, (x0[None], zero[:1]), lam0, lam1,
                                                  solver, rtol, atol, max_steps)
            return x_T[0], delta[0], n_steps, ok

        cond = None if model.cond is None else batched_cond(model.cond, x.shape[0])
        x_T, delta, n_steps, ok = jax.vmap(one, in_axes=(0, 1, 0))(x, tangents, cond)
    else:
        field = pf_ode_field(model.eps, schedule)
        (x_T, delta), n_steps, ok = integrate(_augmented_field(field, tangents, weight),
                                              (x, zero), lam0, lam1, solver, rtol, atol,
                                              max_steps)
    prior = schedule.prior_logp(x_T)
    return x_T, prior, delta, nfe_for_steps(n_steps), n_steps, ok


def _check_range(x, data_range):
    """``data_range = (low, high)`` with ``low < high``; a concrete ``x`` must lie inside."""
    try:
        low, high = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (low, high) of numbers, got "
                        f"data_range={data_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"data_range must be finite with low < high, got "
                         f"data_range={data_range!r}")
    if x is not None and is_concrete(x):
        arr = np.asarray(x)
        outside = (arr < low) | (arr > high)
        if outside.any():
            first = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(
                f"x has {int(outside.sum())} value(s) outside data_range={data_range!r}, the "
                f"first at index {first}: x{list(first)}={float(arr[first])!r}; the density "
                "of such points is not the model's (it is not clamped): rescale the data "
                "as for training")
    return low, high


def _data_offset(x, data_range, n_bins) -> float:
    """``d log(high - low) - d log(n_bins)``: the scaling offset and the dequantisation term
    (:func:`log_likelihood`), after the eager checks of ``data_range`` and ``n_bins``."""
    offset = 0.0
    d = math.prod(x.shape[1:])
    if n_bins is not None:
        n_bins = check_int("n_bins", n_bins, minimum=2)
        if data_range is None:
            raise ValueError(f"n_bins={n_bins} needs data_range=(low, high), the model's range "
                             "of the dequantised data")
        offset -= d * math.log(n_bins)
    if data_range is not None:
        low, high = _check_range(x, data_range)
        offset += d * math.log(high - low)
    return offset


def _bits_per_dim(logp, x):
    return -logp / (math.prod(x.shape[1:]) * math.log(2.0))


@takes_model
def log_likelihood(
    model: Model,
    x,
    *,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    key=None,
    data_range=None,
    n_bins: int | None = None,
    t_min=None,
    t_max=None,
    solver: str = "tsit5",
    rtol=1e-5,
    atol=1e-5,
    per_sample: bool = False,
    max_steps: int = 4096,
) -> LikelihoodOutput:
    r"""Log-likelihood ``log p(x)`` of a diffusion model by its probability-flow ODE.

    Integrates ``[x, Delta]`` from ``t_min`` to ``t_max`` in half log-SNR with diffrax
    (module docstring) and returns ``log p = log N(x_T; 0, prior_std^2) + Delta``.

    **Data scaling.** The model sees ``x = low + (high - low) y`` where ``y`` in ``[0, 1]^d`` is
    the data in its own units. With ``data_range=(low, high)`` the density is reported for
    ``y``: ``log p_y = log p_x + d log(high - low)`` (the change-of-variables offset; for the
    usual ``[-1, 1]`` scaling it adds ``d log 2``), and ``x`` outside the range is an error.

    **Dequantisation.** For data with ``n_bins`` levels per dimension (256 for 8-bit images, 17
    for scikit-learn's digits), dequantise first (:func:`dequantize`: ``y = (k + u)/n_bins``,
    ``u ~ U[0, 1)^d``) and pass ``n_bins``: the probability of the discrete value is then
    bounded below as ``log P(k) >= E_u[log p_y(y)] - d log n_bins`` (Jensen's
    inequality over the cell of volume ``n_bins^-d``; Theis, van den Oord & Bethge 2016; as
    in Song et al. 2021, App. D.2), and ``logp``/``bpd``
    report this bound for one draw of ``u`` (average over draws for the expectation):
    ``bpd = -log p_y / (d ln 2) + log2(n_bins)``.

    Args:
      model: a :class:`~deis_jax.Model` (:func:`deis_jax.as_model`); its schedule's prior is
        ``p_{t_max}``; its parameters are traced data (new parameters do not recompile).
      x: data in the model's units, shape ``(batch, ...)``, finite.
      divergence: ``"exact"`` (trace of the Jacobian: ``d`` tangent passes per evaluation)
        or ``"hutchinson"`` (``n_probes`` random probes).
      probe: ``"rademacher"`` or ``"gaussian"`` (Hutchinson only).
      n_probes: ``K >= 1`` probes (Hutchinson only); the variance falls like ``1/K``.
      key: a PRNG key, required by ``"hutchinson"`` (the probes).
      data_range: ``(low, high)``: the model's data range, for the scaling offset and a range
        check; None reports the density of ``x`` itself.
      n_bins: levels per dimension of discrete data (needs ``data_range``); None for
        continuous data.
      t_min, t_max: the ends of the solve (default the schedule's): ``log p`` is the density
        of ``p_{t_min}``.
      solver: ``"tsit5"`` or ``"dopri5"``.
      rtol, atol: tolerances of the adaptive solve on ``[x, Delta]`` (traced: no recompile).
      per_sample: each sample its own steps (``jax.vmap``), else one solve for the batch.
      max_steps: cap on attempted steps; called eagerly, reaching it raises ``RuntimeError``.

    Returns:
      :class:`LikelihoodOutput`.

    Raises:
      ValueError, TypeError: bad arguments (named, with their value), non-finite ``x``, ``x``
        outside ``data_range``, Hutchinson without a key or with ``n_probes < 1`` -- before
        tracing.

    Example:
      >>> import jax
      >>> from deis_jax import as_model, schedules, testing
      >>> from deis_jax.likelihood import log_likelihood
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.gaussian_mixture(dim=2, n_modes=3, seed=0)
      >>> x, _ = gmm.sample(jax.random.key(0), 8)
      >>> out = log_likelihood(as_model(gmm.eps_fn(sched), sched), x)
      >>> out.logp.shape, out.bpd.shape
      ((8,), (8,))
    """
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    n_probes = check_int("n_probes", n_probes, minimum=1)
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("divergence='hutchinson' draws random probes: pass key=")
        check_key("key", key)
    model, x, (t_start, t_end), max_steps = check_solve_args(
        "x", model, x, ("t_min", t_min, "t_min"), ("t_max", t_max, "t_max"), solver=solver,
        per_sample=per_sample, max_steps=max_steps, rtol=rtol, atol=atol)
    offset = _data_offset(x, data_range, n_bins)
    dtype = x.dtype
    x_T, prior, delta, nfe, n_steps, ok = _log_likelihood(
        model, solver, bool(per_sample), max_steps, divergence, probe, n_probes, x,
        key if divergence == "hutchinson" else None,
        jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype), jnp.asarray(rtol, dtype),
        jnp.asarray(atol, dtype))
    if is_concrete(ok) and not bool(jnp.all(ok)):
        raise RuntimeError(f"log_likelihood's ODE solve did not reach t_max within "
                           f"max_steps={max_steps} steps; raise max_steps or loosen rtol/atol")
    logp = prior + delta + offset
    return LikelihoodOutput(logp, _bits_per_dim(logp, x), prior, delta, x_T, nfe, n_steps, ok)


class FixedGridLikelihood(NamedTuple):
    """Result of :func:`fixed_grid_log_likelihood` (per sample, shape ``(batch,)``).

    Attributes:
      logp: ``log p(x)`` in nats, with the offsets of ``data_range``/``n_bins``.
      bpd: bits per dimension, ``-logp / (d ln 2)``.
      prior_logp: ``log N(x_T; 0, prior_std^2 I)``.
      log_det: ``log |det dPhi/dx|`` of the encoding map.
      x_T: the encoding ``Phi(x)``.
      nfe: model calls of one encoding (the Jacobian adds ``d`` tangent passes to each).
    """

    logp: Any
    bpd: Any
    prior_logp: Any
    log_det: Any
    x_T: Any
    nfe: int


@takes_model
def fixed_grid_log_likelihood(model: Model, x, *, solver="tab3", ts=None, nfe=None,
                              grid: str = "quadratic", data_range=None,
                              n_bins: int | None = None):
    r"""Log-likelihood of the discrete flow that a deterministic solver defines on a grid.

    The solver run on the reversed grid is a map ``Phi: x -> x_T`` (the encoding of
    :func:`deis_jax.inversion.encode`), a composition of invertible steps for small enough
    steps; by the change of variables

    .. math::
       \log p(x) = \log \mathcal N(\Phi(x); 0, \sigma_{prior}^2 I)
           + \log\left|\det \frac{\partial \Phi}{\partial x}\right|,

    exact for this discrete model, and converging to the probability-flow likelihood of
    :func:`log_likelihood` as the steps shrink at the solver's order. The Jacobian is formed
    per sample by forward-mode differentiation through the whole solve (``d`` tangents):
    low dimension only. Costs one fixed-grid solve, so it compares cost and accuracy with
    the adaptive solve.

    Args:
      model: a :class:`~deis_jax.Model`, as in :func:`deis_jax.sample`.
      x: data, shape ``(batch, ...)``, at ``ts[-1]`` (usually ``t_min``).
      solver, ts, nfe, grid: a deterministic solver and its sampling (decreasing) grid, as in
        :func:`deis_jax.inversion.encode`.
      data_range, n_bins: the scaling offset and dequantisation, as in
        :func:`log_likelihood`.

    Returns:
      :class:`FixedGridLikelihood`.
    """
    model, x = prepare(model, x, name="x")
    offset = _data_offset(x, data_range, n_bins)
    kwargs = dict(solver=solver, ts=ts, nfe=nfe, grid=grid)
    nfe = []

    def phi(x1, c1):  # one sample through the solve; vmap batches the model calls again
        m = model if c1 is None else model.replace(
            cond=jax.tree_util.tree_map(lambda leaf: leaf[None], c1))
        out = encode(m, x1[None], full_output=True, check_finite=False, **kwargs)
        nfe.append(out.nfe)  # a Python int, known at trace time
        return out.x[0], out.x[0]

    cond = None if model.cond is None else batched_cond(model.cond, x.shape[0])
    jac, x_T = jax.vmap(jax.jacfwd(phi, has_aux=True))(x, cond)
    d = math.prod(x.shape[1:])
    _, log_det = jnp.linalg.slogdet(jnp.reshape(jac, (x.shape[0], d, d)))
    prior = model.schedule.prior_logp(x_T)
    logp = prior + log_det + offset
    return FixedGridLikelihood(logp, _bits_per_dim(logp, x), prior, log_det, x_T, nfe[0])


def dequantize(key, k, *, n_bins: int, data_range=(-1.0, 1.0), dtype=None):
    """Uniformly dequantised data in the model's units: ``low + (high - low)(k + u)/n_bins``
    with ``u ~ U[0, 1)`` per entry, for integer levels ``k`` in ``[0, n_bins)``.

    Pass the result to :func:`log_likelihood` with the same ``n_bins`` and ``data_range``.
    (A model trained on ``low + (high - low) k/(n_bins - 1)`` sees the dequantised cells
    shifted by at most one level; Score-SDE's likelihoods make the same choice.)

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = dequantize(jax.random.key(0), jnp.array([[0, 16]]), n_bins=17)
      >>> bool(((x >= -1) & (x < 1)).all())
      True
    """
    check_key("key", key)
    n_bins = check_int("n_bins", n_bins, minimum=2)
    low, high = _check_range(None, data_range)
    k = jnp.asarray(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise TypeError(f"k must hold integer levels, got dtype {k.dtype}")
    if is_concrete(k) and k.size and (int(k.min()) < 0 or int(k.max()) >= n_bins):
        raise ValueError(f"k must lie in [0, n_bins) = [0, {n_bins}), got values in "
                         f"[{int(k.min())}, {int(k.max())}]")
    dtype = dtype or jnp.result_type(float)
    u = jax.random.uniform(key, k.shape, dtype)
    return low + (high - low) * (k.astype(dtype) + u) / n_bins
