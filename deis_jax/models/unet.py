"""A small U-Net for 8x8 images (NHWC): residual blocks, group norm, time embedding,
self-attention at the lowest resolution (DDPM's architecture, Ho et al. 2020, App. B,
scaled down)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from deis_jax.models.embedding import SinusoidalEmbedding

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    return min(8, channels)


class ResBlock(nn.Module):
    """``h = x + conv(silu(GN(conv(silu(GN(x))) + W emb)))`` with a 1x1 skip on a channel change."""

    channels: int

    @nn.compact
    def __call__(self, x, emb):
        h = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
        h = h + nn.Dense(self.channels)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.channels))(h))
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1))(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, with a residual connection."""

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(_groups(c))(x).reshape(b, hgt * wid, c)
        h = nn.MultiHeadDotProductAttention(num_heads=1, out_kernel_init=nn.initializers.zeros)(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
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

    @nn.compact
    def __call__(self, x, t):
        emb = SinusoidalEmbedding(self.emb_dim, self.time_scale)(t.astype(x.dtype))
        emb = nn.Dense(self.emb_dim)(nn.silu(nn.Dense(self.emb_dim)(emb)))
        h = nn.Conv(self.channels[0], (3, 3))(x)
        skips = []
        for level, ch in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(ch)(h, emb)
            skips.append(h)
            if level < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), (2, 2))
        h = ResBlock(self.channels[-1])(h, emb)
        if self.attention:
            h = AttnBlock()(h)
        h = ResBlock(self.channels[-1])(h, emb)
        for level in reversed(range(len(self.channels))):
            h = ResBlock(self.channels[level])(jnp.concatenate([h, skips[level]], axis=-1), emb)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]))(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
