"""A small U-Net for 8x8 images (NHWC): residual blocks, group norm, time embedding,
self-attention at the lowest resolution (DDPM's architecture, Ho et al. 2020, App. B,
scaled down)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from deis_jax.models.embedding import (
    SinusoidalEmbedding, label_conditioned, time_features)
from deis_jax.models.layers import Precision, conv, dense, norm_dtype

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    return min(8, channels)


def _norm(m: Precision, x):
    """Group norm computed (statistics and output) in float32 at least."""
    return nn.GroupNorm(_groups(x.shape[-1]), dtype=norm_dtype(x), param_dtype=m.param_dtype)(x)


class ResBlock(Precision):
    """``h = x + conv(silu(GN(conv(silu(GN(x))) + W emb)))`` with a 1x1 skip on a channel change."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, emb):
        h = conv(self, self.channels, (3, 3))(nn.silu(_norm(self, x)))
        h = h + dense(self, self.channels)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(_norm(self, h))
        h = conv(self, self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.channels else conv(self, self.channels, (1, 1))(x)
        return skip + h


class AttnBlock(Precision):
    """Single-head self-attention over the spatial positions, with a residual connection
    (softmax in float32)."""

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = _norm(self, x).reshape(b, hgt * wid, c)
        h = nn.MultiHeadDotProductAttention(
            num_heads=1, out_kernel_init=nn.initializers.zeros, dtype=self.dtype,
            param_dtype=self.param_dtype, force_fp32_for_softmax=True)(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(Precision):
    """U-Net score network for small NHWC images.

    Levels ``channels[0], channels[1], ...`` with 2x average-pool down-sampling between them and
    nearest-neighbour up-sampling back; ``num_res_blocks`` residual blocks per level; skip
    connections by concatenation; optional self-attention at the lowest resolution.

    Attributes:
      channels: channels per resolution level (8x8 with two levels reaches 4x4).
      num_res_blocks: residual blocks per level on the way down.
      attention: self-attention at the lowest resolution.
      emb_dim: size of the time embedding.
      time_scale: multiplier of ``t`` in the embedding.
      num_classes: ``C`` for a class-conditional network, called ``apply(params, x, t,
        label)`` with ``label`` in ``[0, C]`` (``C``, or no label, is the null label: the
        unconditional prediction); the label's embedding is added to the time embedding.
        None: unconditional.
      dtype: compute dtype of the convolutions, dense and attention layers (``None``: the
        input's; ``jnp.bfloat16`` for mixed precision). The time embedding, the group norms
        and the attention softmax compute in float32 at least; the output is in the compute
        dtype.
      param_dtype: dtype of the parameters (float32: keep them so under mixed precision).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> net = UNet(channels=(8, 16))
      >>> params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
      >>> net.apply(params, jnp.zeros((2, 8, 8, 1)), jnp.full((2,), 0.3)).shape
      (2, 8, 8, 1)
    """

    channels: Sequence[int] = (32, 64)
    num_res_blocks: int = 1
    attention: bool = True
    emb_dim: int = 128
    time_scale: float = 1000.0
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, t, label=None):
        precision = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        emb = time_features(SinusoidalEmbedding(self.emb_dim, self.time_scale), x, t)
        emb = dense(self, self.emb_dim)(nn.silu(dense(self, self.emb_dim)(emb)))
        emb = label_conditioned(emb, label, self.num_classes, self.param_dtype)
        h = conv(self, self.channels[0], (3, 3))(x)
        skips = []
        for level, ch in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(channels=ch, **precision)(h, emb)
            skips.append(h)
            if level < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), (2, 2))
        h = ResBlock(channels=self.channels[-1], **precision)(h, emb)
        if self.attention:
            h = AttnBlock(**precision)(h)
        h = ResBlock(channels=self.channels[-1], **precision)(h, emb)
        for level in reversed(range(len(self.channels))):
            h = ResBlock(channels=self.channels[level], **precision)(
                jnp.concatenate([h, skips[level]], axis=-1), emb)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.silu(_norm(self, h))
        return conv(self, x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
