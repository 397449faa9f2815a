"""The solver contract shared by every sampler, and the two step kernels most of them use.

A :class:`Solver` is a bundle of pure functions (as optax's ``GradientTransformation``):

* ``coefficients(schedule, ts) -> coeffs``: every per-step number the scan needs, as a pytree
  whose leaves have leading axis ``N = len(ts) - 1``; built once, vectorised, before the scan.
* ``init(x_T, coeffs) -> state``: the scan carry; ``state.x`` is the current sample.
* ``step(model_fn, state, coeffs_i, key) -> state``: one step; ``model_fn(x, t)`` is the
  eps- or x0-prediction (``Solver.model``) with scalar ``t``. Deterministic solvers ignore
  ``key``.

The driver :func:`deis_jax.sample` runs any solver as one ``lax.scan``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_int

__all__ = [
    "Solver",
    "make_solver",
    "MultistepState",
    "MultistepCoeffs",
    "multistep_init",
    "multistep_step",
    "exp_step_factors",
    "check_order",
]


class Solver(NamedTuple):
    """A sampler: coefficient builder, carry initialiser and pure step.

    Attributes:
      name: registry name, e.g. ``"tab3"``.
      order: theoretical global convergence order.
      nfe_per_step: model evaluations per step (for the common case).
      coefficients: ``(schedule, ts) -> coeffs`` (pytree, leading axis ``N``).
      init: ``(x_T, coeffs) -> state`` with ``state.x``.
      step: ``(model_fn, state, coeffs_i, key) -> state``.
      nfe_for_steps: ``n_steps -> NFE`` (exact number of model calls).
      steps_for_nfe: ``nfe -> n_steps``; raises ``ValueError`` if ``nfe`` is not reachable.
      model: ``"eps"`` or ``"x0"``: which prediction ``step`` consumes.
      stochastic: whether ``step`` uses its PRNG key.
      min_steps: fewest steps the method is defined for.
    """

    name: str
    order: int
    nfe_per_step: int
    coefficients: Callable[..., Any]
    init: Callable[..., Any]
    step: Callable[..., Any]
    nfe_for_steps: Callable[[int], int]
    steps_for_nfe: Callable[[int], int]
    model: str = "eps"
    stochastic: bool = False
    min_steps: int = 1


def make_solver(name, order, nfe_per_step, coefficients, init, step, **kwargs) -> Solver:
    """Build a :class:`Solver` whose NFE is ``nfe_per_step * n_steps``."""

    def nfe_for_steps(n_steps: int) -> int:
        return nfe_per_step * n_steps

    def steps_for_nfe(nfe: int) -> int:
        nfe = check_int("nfe", nfe, minimum=1)
        min_nfe = nfe_per_step * kwargs.get("min_steps", 1)
        if nfe < min_nfe or nfe % nfe_per_step:
            raise ValueError(
                f"solver {name!r} uses {nfe_per_step} model call(s) per step, so nfe must be a "
                f"multiple of {nfe_per_step} and >= {min_nfe}; got nfe={nfe}"
            )
        return nfe // nfe_per_step

    return Solver(name, order, nfe_per_step, coefficients, init, step, nfe_for_steps,
                  steps_for_nfe, **kwargs)


class MultistepState(NamedTuple):
    """Carry of a linear multistep solver: the sample and the last ``K`` model outputs."""

    x: Any
    hist: Any  # (K, *x.shape), most recent first


class MultistepCoeffs(NamedTuple):
    """Per-step table of a linear multistep exponential integrator.

    ``x_{i+1} = a_i x_i + sum_j c_{ij} out_{i-j}`` with ``out_{i-j}`` the model output at
    ``t_{i-j}``.
    """

    t: Any  # (N,) evaluation time of step i
    a: Any  # (N,)
    c: Any  # (N, K)


def multistep_init(x, coeffs: MultistepCoeffs) -> MultistepState:
    k = coeffs.c.shape[-1]
    return MultistepState(x, jnp.zeros((k,) + x.shape, x.dtype))


def multistep_step(model_fn, state: MultistepState, co: MultistepCoeffs, key=None):
    r"""One linear multistep step: a single model call and a fused multiply-add.

    .. math:: x_{i+1} = a_i x_i + \sum_{j=0}^{K-1} c_{ij}\, \mathrm{out}(x_{i-j}, t_{i-j})
    """
    del key
    out = model_fn(state.x, co.t)
    hist = jnp.concatenate([out[None], state.hist[:-1]], axis=0)
    dtype = state.x.dtype
    x = co.a.astype(dtype) * state.x + jnp.tensordot(co.c.astype(dtype), hist, axes=1)
    return MultistepState(x, hist)


def exp_step_factors(schedule, ts):
    """``(alpha_{i+1}/alpha_i, alpha_{i+1} (rho_{i+1} - rho_i))`` for every step: the exact
    linear part and the DDIM weight, computed with ``expm1`` so small steps keep precision."""
    ts = jnp.asarray(ts)
    lam = schedule.log_snr(ts)
    log_alpha = schedule.log_alpha(ts)
    ratio = jnp.exp(log_alpha[1:] - log_alpha[:-1])
    ddim = jnp.exp(log_alpha[1:] - lam[:-1]) * jnp.expm1(lam[:-1] - lam[1:])
    return ratio, ddim


def check_order(name: str, order, valid) -> int:
    """Validate a solver order against the static tuple ``valid``."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {name}={order!r}")
    return int(order)
