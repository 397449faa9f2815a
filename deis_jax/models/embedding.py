"""Sinusoidal time embedding shared by the score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["SinusoidalEmbedding"]


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
