"""An MLP score network for low-dimensional data (2-d toy sets)."""

from __future__ import annotations

import flax.linen as nn

from deis_jax.models.embedding import (
    SinusoidalEmbedding, label_conditioned, time_features)
from deis_jax.models.layers import Precision, dense, norm_dtype

__all__ = ["MLPScore"]


class MLPScore(Precision):
    """Residual MLP conditioned on time through a sinusoidal embedding.

    ``h = W_in x``; each block ``h <- h + W_2 silu(LayerNorm(W_1 silu(h) + E(t)))``; output
    ``W_out silu(h)`` with the input's dimension. It predicts whatever it is trained on (eps,
    x0, v, or the raw EDM network ``F``); the sampler is told which through ``prediction``.

    Attributes:
      hidden: width of the hidden layers.
      depth: number of residual blocks.
      emb_dim: size of the time embedding.
      time_scale: multiplier of ``t`` in the embedding (see :class:`SinusoidalEmbedding`).
      num_classes: ``C`` for a class-conditional network, called ``apply(params, x, t,
        label)`` with ``label`` in ``[0, C]`` (``C``, or no label, is the null label: the
        unconditional prediction); the label's embedding is added to the time embedding
        (:func:`~deis_jax.models.embedding.label_conditioned`). None: unconditional.
      out_features: output size (None: the input's dimension, a score network; the number
        of classes for the logits of a noise-conditional classifier,
        :mod:`deis_jax.training.classifier`).
      dtype: compute dtype of the dense layers (``None``: the input's; ``jnp.bfloat16`` for
        mixed precision). The time embedding and the layer norms compute in float32 at
        least; the output is in the compute dtype.
      param_dtype: dtype of the parameters (float32: keep them so under mixed precision).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from deis_jax import as_model, sample, schedules
      >>> net = MLPScore(hidden=32, depth=1)
      >>> params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
      >>> net.apply(params, jnp.ones((4, 2)), jnp.full((4,), 0.5)).shape
      (4, 2)
      >>> model = as_model(net, schedules.vp_linear(), params=params)
      >>> sample(model, jnp.ones((4, 2)), nfe=5).shape
      (4, 2)
    """

    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64
    time_scale: float = 1000.0
    num_classes: int | None = None
    out_features: int | None = None

    @nn.compact
    def __call__(self, x, t, label=None):
        emb = time_features(SinusoidalEmbedding(self.emb_dim, self.time_scale), x, t)
        emb = dense(self, self.hidden)(nn.silu(dense(self, self.hidden)(emb)))
        emb = label_conditioned(emb, label, self.num_classes, self.param_dtype)
        h = dense(self, self.hidden)(x)
        for _ in range(self.depth):
            z = dense(self, self.hidden)(nn.silu(h)) + emb
            z = nn.LayerNorm(dtype=norm_dtype(z), param_dtype=self.param_dtype)(z)
            z = dense(self, self.hidden)(nn.silu(z))
            h = h + z
        out = x.shape[-1] if self.out_features is None else self.out_features
        return dense(self, out, kernel_init=nn.initializers.zeros)(nn.silu(h))
