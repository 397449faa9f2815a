"""Sinusoidal time embedding shared by the score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["SinusoidalEmbedding", "time_features"]


class SinusoidalEmbedding(nn.Module):
    r"""Fixed sinusoidal features of a scalar time (Vaswani et al. 2017; DDPM, Ho et al. 2020).

    .. math::
       e(t) = [\sin(s t \omega_k), \cos(s t \omega_k)]_{k<d/2},\quad
       \omega_k = P^{-k/(d/2)}

    with ``s = scale`` and ``P = max_period``. With ``scale=1000`` a time in ``[0, 1]`` is
    embedded like DDPM's integer step; an EDM ``c_noise = log(rho)/4`` in ``[-2, 2]`` works
    with the same default.

    Attributes:
      dim: embedding size (even).
      scale: multiplier of ``t`` before the sinusoids.
      max_period: longest period ``P``.
    """

    dim: int = 64
    scale: float = 1000.0
    max_period: float = 10_000.0

    @nn.compact
    def __call__(self, t):
        half = self.dim // 2
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=jnp.float32) / half)
        args = (self.scale * t)[:, None] * freqs[None, :].astype(t.dtype)
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def time_features(embedding: SinusoidalEmbedding, x, t):
    """``embedding(t)`` computed in float32 at least (float64 for float64 ``x``), whatever the
    network's compute dtype: ``sin(1000 t)`` in bfloat16 would lose the time entirely (8
    significant bits hold t = 0.10377 as 0.10400)."""
    return embedding(t.astype(jnp.promote_types(x.dtype, jnp.float32)))
