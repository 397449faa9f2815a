"""Time and class-label embeddings shared by the score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["SinusoidalEmbedding", "label_conditioned", "time_features"]


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


def label_conditioned(emb, label, num_classes: int | None, param_dtype):
    r"""The conditioning vector of a class-conditional network: the time embedding plus a
    learned embedding of the label (the ``y``-embedding added to the time embedding of
    class-conditional DDPMs; Dhariwal & Nichol 2021, Sec. 3; Ho & Salimans 2021, Sec. 3):

    .. math::
       e(t, y) = e(t) + E_y,\qquad E \in \mathbb R^{(C + 1) \times D},

    with ``C = num_classes`` and row ``C`` the *null label*: a network trained with label
    dropout (:class:`~deis_jax.training.DiffusionSpec` ``label_dropout``) gives its
    unconditional prediction there, as classifier-free guidance
    (:func:`deis_jax.guidance.classifier_free` with ``null_cond = n_classes``) asks.

    Called inside a network's compact ``__call__``; it creates the ``nn.Embed`` only when
    ``num_classes`` is set, so an unconditional network keeps its parameters (and old
    checkpoints still load).

    Args:
      emb: the time embedding ``(batch, D)``.
      label: integer labels ``(batch,)`` in ``[0, num_classes]``, or None: the null label
        (the unconditional prediction of a conditional network).
      num_classes: ``C``, or None for an unconditional network (which refuses a label).
      param_dtype: dtype of the embedding table.
    """
    if num_classes is None:
        if label is not None:
            raise ValueError("this network is unconditional (num_classes=None) and takes no "
                             "label; build it with num_classes=C to condition on C classes")
        return emb
    if label is None:
        label = jnp.full(emb.shape[:1], num_classes, jnp.int32)
    table = nn.Embed(num_classes + 1, emb.shape[-1], param_dtype=param_dtype,
                     name="label_embedding")
    return emb + table(jnp.asarray(label, jnp.int32)).astype(emb.dtype)
