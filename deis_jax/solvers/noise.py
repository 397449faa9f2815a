r"""Shared pieces of the stochastic samplers: per-sample noise and the noisy linear step.

Every stochastic step here is (or contains) a *noisy linear multistep* update

.. math::
   x_{i+1} = a_i x_i + \sum_{j=0}^{K-1} c_{ij}\,\mathrm{out}(x_{i-j}, t_{i-j}) + n_i z_i,
   \qquad z_i \sim \mathcal N(0, I),

with every coefficient built before the scan (:class:`NoisyCoeffs`). The noise is drawn
*per sample*: the step key is folded with the sample's batch index, so the same seed and the
same batch position give the same sample whatever the batch size (and however the batch is
sharded).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deis_jax._checks import require_key
from deis_jax.solvers.ei import MultistepState, ring_combine, ring_push

__all__ = [
    "per_sample_normal",
    "NoisyCoeffs",
    "noisy_multistep_step",
]


def per_sample_normal(key, shape, dtype=None):
    """Standard normal noise of ``shape = (batch, ...)``, drawn independently per sample.

    Sample ``b`` uses ``jax.random.fold_in(key, b)``, so its noise depends only on ``key`` and
    ``b``: a batch of 8 and a batch of 32 share their first 8 noise vectors.

    Example:
      >>> import jax
      >>> z8 = per_sample_normal(jax.random.key(0), (8, 3))
      >>> z32 = per_sample_normal(jax.random.key(0), (32, 3))
      >>> bool((z8 == z32[:8]).all())
      True
    """
    dtype = dtype or jnp.result_type(float)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(shape[0]))
    return jax.vmap(lambda k: jax.random.normal(k, tuple(shape[1:]), dtype))(keys)


class NoisyCoeffs(NamedTuple):
    """Per-step table of a noisy linear multistep step.

    ``x_{i+1} = a_i x_i + sum_j c_{ij} out_{i-j} + noise_i z_i``.
    """

    t: Any  # (N,) model-evaluation time of step i
    a: Any  # (N,)
    c: Any  # (N, K)
    noise: Any  # (N,) standard deviation of the injected noise


@functools.lru_cache(maxsize=None)
def noisy_multistep_step(name: str):
    """The step ``(model_fn, state, coeffs_i, key) -> state`` of a noisy linear multistep
    solver called ``name`` (one model call, a fused multiply-add and per-sample noise)."""

    def step(model_fn, state: MultistepState, co: NoisyCoeffs, key=None) -> MultistepState:
        key = require_key(name, key)
        dtype = state.x.dtype
        hist = ring_push(state.hist, state.step, model_fn(state.x, co.t))
        z = per_sample_normal(key, state.x.shape, dtype)
        x = (co.a.astype(dtype) * state.x + ring_combine(hist, co.c, state.step, dtype)
             + co.noise.astype(dtype) * z)
        return MultistepState(x, hist, state.step + 1)

    return step
