"""Layers with the networks' precision settings (see :mod:`deis_jax.precision`).

Every network here computes in ``dtype`` (``None``: the input's; ``jnp.bfloat16`` for mixed
precision) with ``param_dtype`` parameters (float32), and runs its normalisations in float32
at least: their statistics and output, which the next layer casts back.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["Precision", "conv", "dense", "norm_dtype"]


class Precision(nn.Module):
    """Base of the networks and their blocks: the ``dtype`` / ``param_dtype`` attributes."""

    dtype: Any = None
    param_dtype: Any = jnp.float32


def conv(m: Precision, features: int, kernel, **kwargs) -> nn.Conv:
    return nn.Conv(features, kernel, dtype=m.dtype, param_dtype=m.param_dtype, **kwargs)


def dense(m: Precision, features: int, **kwargs) -> nn.Dense:
    return nn.Dense(features, dtype=m.dtype, param_dtype=m.param_dtype, **kwargs)


def norm_dtype(x):
    """The dtype a normalisation of ``x`` computes in: float32 at least."""
    return jnp.promote_types(x.dtype, jnp.float32)
