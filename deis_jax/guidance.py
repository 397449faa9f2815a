r"""Guidance as transformations of a :class:`~deis_jax.Model`: classifier-free and classifier
guidance for any solver and any condition.

Each function takes a ``Model`` and returns a new ``Model`` -- so :func:`deis_jax.sample`,
:func:`deis_jax.adaptive.solve_ode`, inversion and the likelihood accept it unchanged. The
base model travels inside the guided one as data, and so do the scale, the rescale, the
interval and the conditions: a new scale, prompt or label reuses the compiled sampler, and
``jax.vmap`` over the scale compiles once.

A condition is any pytree of arrays handed to the network as its last argument (class labels
``(batch,)``, text embeddings ``(batch, L, D)``, masks), each leaf batched or shared (leading
axis 1), see :func:`deis_jax.as_model`. The *null* condition is what the network was trained
to see for "no condition" (a null label, the empty prompt's embedding) or a negative prompt.

**Classifier-free guidance** (Ho & Salimans 2021, eq. 6):

.. math::
   \tilde\epsilon(x, t, y) = (1 + w)\,\epsilon(x, t, y) - w\,\epsilon(x, t, \varnothing),

so ``w = 0`` is the conditional model and ``w = -1`` the unconditional one (diffusers'
``guidance_scale`` is ``1 + w``). Both predictions come from one call on the doubled batch.
The weights sum to one, and every parameterisation -- ``x0 = (x - sigma eps)/alpha``,
``v = alpha eps - sigma x0``, ``score = -eps/sigma``, the EDM denoiser -- is an affine function
of ``eps`` with coefficients that depend on ``x`` and ``t`` only. An affine map commutes
with a combination whose weights sum to one, so guiding the model's own output is exactly
guiding ``eps``: the wrapper needs no conversion and keeps the model's ``prediction``.

Optionally guidance acts only inside an interval of noise levels (Kynkäänniemi et al. 2024):
``w`` is replaced by 0 (the conditional model) for ``t`` (or ``lambda``) outside it.

**Classifier guidance** (Dhariwal & Nichol 2021, Alg. 2; Song et al. 2021, Sec. 5):
with a noise-conditional classifier ``p_phi(y | x_t, t)``,

.. math::
   \nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + s\,\nabla_x \log p_\phi(y \mid x, t),
   \qquad \tilde\epsilon = \epsilon - s\,\sigma_t\,\nabla_x \log p_\phi(y \mid x, t),

exact at ``s = 1`` for the exact posterior classifier. The classifier's gradient is added in
``eps`` space: the model's output is converted to ``eps``, guided and converted back (this
correction is not a weights-sum-to-one combination, so it is *not* the same in every space).

References: J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, 2021; P. Dhariwal,
A. Nichol, *Diffusion Models Beat GANs on Image Synthesis*, NeurIPS 2021; Y. Song et al.,
*Score-Based Generative Modeling through SDEs*, ICLR 2021; T. Kynkäänniemi et al.,
*Applying Guidance in a Limited Interval Improves Sample and Distribution Quality*, NeurIPS
2024.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from deis_jax._checks import check_callable, check_choice, check_scalar, is_concrete
from deis_jax.model import Model, takes_model
from deis_jax.parameterization import _bcast

__all__ = ["INTERVAL_VARIABLES", "classifier_free", "classifier_guidance"]

INTERVAL_VARIABLES = ("t", "log_snr")


def _check_scale(name, value):
    return jnp.asarray(check_scalar(name, value))


def _interval(interval, interval_in):
    check_choice("interval_in", interval_in, INTERVAL_VARIABLES)
    if interval is None:
        return None
    try:
        low, high = interval
    except (TypeError, ValueError):
        raise TypeError(f"interval must be a pair (low, high), got interval={interval!r}"
                        ) from None
    low = check_scalar("interval[0]", low)
    high = check_scalar("interval[1]", high)
    if is_concrete((low, high)) and not float(low) < float(high):
        raise ValueError(f"interval must have low < high, got interval={interval!r}")
    return (jnp.asarray(low), jnp.asarray(high))


def _in_interval(t, interval, variable, schedule):
    if interval is None:
        return jnp.ones(t.shape, bool)
    v = t if variable == "t" else schedule.log_snr(t)
    return (v >= interval[0]) & (v <= interval[1])


def _check_null_cond(cond, null_cond) -> None:
    """``null_cond`` must have ``cond``'s structure and, leaf by leaf, its trailing shape."""
    if cond is None:
        raise ValueError("classifier-free guidance needs a condition: pass cond= (or build the "
                         "model with as_model(..., cond=...))")
    if null_cond is None:
        raise ValueError("classifier-free guidance needs null_cond= (the unconditional input: "
                         "the null label, the empty prompt's embedding, or a negative prompt)")
    s1, s2 = jax.tree_util.tree_structure(cond), jax.tree_util.tree_structure(null_cond)
    if s1 != s2:
        raise ValueError(f"null_cond must have cond's structure: cond is {s1}, null_cond is "
                         f"{s2}")
    for a, b in zip(jax.tree_util.tree_leaves(cond), jax.tree_util.tree_leaves(null_cond)):
        if jnp.shape(a)[1:] != jnp.shape(b)[1:] or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"null_cond must match cond leaf by leaf (all but the leading batch axis, and "
                f"the dtype): cond has a leaf of shape {jnp.shape(a)} ({jnp.result_type(a)}), "
                f"null_cond {jnp.shape(b)} ({jnp.result_type(b)})")


def _cfg_network(params, x, t, cond):
    """The guided prediction: one base call on the doubled batch (conditional, then null)."""
    base = params["base"]
    batch = x.shape[0]
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), *cond)
    out = base.replace(cond=both).output(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    c, u = out[:batch], out[batch:]
    w = jnp.where(_in_interval(t, params["interval"], params["interval_in"], base.schedule),
                  params["scale"], 0.0)
    guided = c + _bcast(w, c).astype(c.dtype) * (c - u)
    axes = tuple(range(1, c.ndim))
    std_c = jnp.std(c, axis=axes, keepdims=True)
    std_g = jnp.std(guided, axis=axes, keepdims=True)
    rescaled = guided * (std_c / jnp.where(std_g > 0, std_g, 1.0))
    r = params["rescale"].astype(c.dtype)
    return r * rescaled + (1 - r) * guided


@takes_model
def classifier_free(model: Model, scale, *, cond=None, null_cond=None, rescale=0.0,
                    interval=None, interval_in: str = "t") -> Model:
    r"""Classifier-free guidance: ``(1 + w) m(x, t, c) - w m(x, t, null)``, optionally
    rescaled.

    Args:
      model: a conditional :class:`~deis_jax.Model` (its network takes a condition); any
        prediction (the guided model predicts the same; an EDM denoiser's guided output is
        its ``x0``).
      scale: the guidance weight ``w`` (``0``: conditional; ``-1``: unconditional;
        diffusers' ``guidance_scale`` is ``1 + w``); a scalar, traced data.
      cond: the condition (default: the model's own ``cond``); any pytree of arrays, e.g.
        labels ``(batch,)`` or embeddings ``(batch, L, D)`` (leading axis 1 to share it).
      null_cond: the unconditional input of the same structure: the null label, the empty
        prompt's embedding, or a *negative prompt*.
      rescale: guidance rescale ``phi`` in ``[0, 1]`` (Lin et al. 2024, Sec. 3.4): the guided
        output ``g`` is mixed with ``g * std(c) / std(g)`` (standard deviations over each
        sample), ``phi * rescaled + (1 - phi) g``; applied to the model's own output, as
        diffusers does. ``0`` is plain CFG, exactly. Traced data.
      interval: ``(low, high)``: guide only for ``t`` (or ``lambda``) in ``[low, high]``;
        elsewhere the conditional prediction (``w = 0``). None: everywhere.
      interval_in: ``"t"`` or ``"log_snr"``.

    Returns:
      The guided :class:`~deis_jax.Model` (its scale, rescale, interval and conditions are
      data).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from deis_jax import as_model, sample, schedules
      >>> from deis_jax.guidance import classifier_free
      >>> sched = schedules.vp_linear()
      >>> def net(x, t, label):  # a toy conditional eps-model: class c pulls towards c
      ...     return x - label[:, None].astype(x.dtype) * 0.1
      >>> model = as_model(net, sched, cond=jnp.array([1]))
      >>> guided = classifier_free(model, 2.0, null_cond=jnp.array([2]))
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> sample(guided, x_T, solver="ddim", nfe=5).shape
      (4, 2)
    """
    cond = model.cond if cond is None else cond
    cond = model.replace(cond=cond).cond if cond is not None else None  # numbers -> arrays
    if null_cond is not None:
        null_cond = model.replace(cond=null_cond).cond
    _check_null_cond(cond, null_cond)
    rescale = check_scalar("rescale", rescale, lower=0.0, upper=1.0)
    params = {"base": model.replace(cond=None), "scale": _check_scale("scale", scale),
              "rescale": jnp.asarray(rescale), "interval": _interval(interval, interval_in),
              "interval_in": interval_in}
    prediction = "x0" if model.prediction == "edm" else model.prediction
    return Model(_cfg_network, params, model.schedule, prediction, "t", None,
                 (cond, null_cond))


def _classifier_network(classifier_fn, params, x, t, label):
    base = params["base"]
    eps = base.eps(x, t)
    sigma = base.schedule.sigma(t)

    def log_prob(x):  # samples are independent: the gradient of the sum is per sample
        logits = classifier_fn(params["classifier"], x, t)
        logp = jax.nn.log_softmax(logits, axis=-1)
        # a label past the logits' width reads NaN (not 0 with a zero gradient, which would
        # return the unguided samples silently): sampling then stops with FloatingPointError
        picked = jnp.take_along_axis(logp, label[:, None], axis=-1, mode="clip")
        bad = ((label < 0) | (label >= logp.shape[-1]))[:, None]
        poison = logp[:, :1] * jnp.where(bad, jnp.nan, 0.0)  # NaN (and its gradient) if bad
        return jnp.sum(jnp.where(bad, poison, picked))

    grad = jax.grad(log_prob)(x)
    return eps - (params["scale"] * _bcast(sigma, x) * grad).astype(eps.dtype)


@takes_model
def classifier_guidance(model: Model, classifier_fn: Callable, scale, *, label,
                        classifier_params=None) -> Model:
    r"""Classifier guidance: ``eps - s sigma_t grad_x log p_phi(y | x, t)``.

    Args:
      model: the (unconditional) :class:`~deis_jax.Model`; any prediction.
      classifier_fn: a noise-conditional classifier ``classifier_fn(classifier_params, x, t)
        -> logits (batch, n_classes)`` (``classifier_params`` may be None for an analytic
        one), trained on ``x_t`` of the model's schedule; defined once (it is static).
      scale: the guidance scale ``s`` (traced data; ``1`` with the exact classifier gives the
        exact conditional model).
      label: the requested class, a scalar or ``(batch,)`` integers (data); a label the
        classifier's logits do not have makes the guided model return NaN, so ``sample``
        raises ``FloatingPointError`` instead of returning unguided samples.
      classifier_params: the classifier's parameters (a pytree of arrays: data).

    Returns:
      The guided :class:`~deis_jax.Model`, an eps-prediction.
    """
    check_callable("classifier_fn", classifier_fn,
                   "classifier_fn(classifier_params, x, t) -> logits")
    label = jnp.asarray(label)
    if not jnp.issubdtype(label.dtype, jnp.integer) or label.ndim > 1:
        raise TypeError(f"label must be an integer class index, a scalar or of shape (batch,), "
                        f"got dtype {label.dtype} and shape {label.shape}")
    params = {"base": model, "classifier": classifier_params,
              "scale": _check_scale("scale", scale)}
    return Model(functools.partial(_classifier_network, classifier_fn), params, model.schedule,
                 "eps", "t", None, label.astype(jnp.int32))
