r"""Guidance as model wrappers: classifier-free and classifier guidance for any solver.

Each wrapper returns a model with the call form every solver takes -- ``guided(params, x, t)``
(or ``guided(x, t)`` for a model without parameters) -- so :func:`deis_jax.sample`,
:func:`deis_jax.adaptive.solve_ode`, inversion and the likelihood accept it unchanged. The
wrapper is a ``functools.partial`` whose array arguments (the label, the scale, the guidance
interval, the classifier's parameters) are *data* of the compiled sampler
(:mod:`deis_jax._callables`): a new scale or label reuses the executable, and
``jax.vmap`` over the scale compiles once. The base model's own parameters still travel as
``sample(params=...)``.

A *conditional model* is called ``model_fn(params, x, t, label)`` (or ``model_fn(x, t,
label)``) with ``label: (batch,)`` integers in ``[0, n_classes)``, plus the ``null_label``
(conventionally ``n_classes``) for the unconditional prediction of a model trained with label
dropout.

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
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import (
    check_callable, check_choice, check_int, check_scalar, is_concrete)
from deis_jax.parameterization import _bcast, as_eps_fn, prediction_from_eps
from deis_jax.schedules import Schedule, check_schedule

__all__ = ["INTERVAL_VARIABLES", "classifier_free", "classifier_guidance"]

INTERVAL_VARIABLES = ("t", "log_snr")
_GUIDED_PREDICTIONS = ("eps", "x0", "v", "score")


def _check_label_input(model_fn: Callable) -> None:
    """A conditional model takes a label after ``(params, x, t)`` or ``(x, t)``: refuse one
    whose signature binds two positional arguments at most."""
    check_callable("model_fn", model_fn, "model_fn(params, x, t, label) or "
                   "model_fn(x, t, label)")
    try:
        sig = inspect.signature(model_fn)
    except (TypeError, ValueError):
        return  # no signature to read (a C function): the call itself will tell
    for n in (3, 4):
        try:
            sig.bind(*([None] * n))
            return
        except TypeError:
            pass
    raise TypeError(f"model_fn takes no label input: a conditional model is called as "
                    f"model_fn(params, x, t, label) or model_fn(x, t, label), and "
                    f"model_fn{sig} cannot be")


def _check_label(label, n_classes: int, *, allow=()):
    """Integer labels, scalar or ``(batch,)``, in ``[0, n_classes)`` (or in ``allow``) when
    concrete."""
    label = jnp.asarray(label)
    if not jnp.issubdtype(label.dtype, jnp.integer):
        raise TypeError(f"label must be an integer class index, got label={label!r}")
    if label.ndim > 1:
        raise ValueError(f"label must be a scalar or of shape (batch,), got shape {label.shape}")
    if is_concrete(label):
        values = np.asarray(label).reshape(-1)
        bad = [int(v) for v in values if not (0 <= v < n_classes or v in allow)]
        if bad:
            raise ValueError(f"label must lie in [0, n_classes) = [0, {n_classes}), got "
                             f"label={bad[0]}" + (f" ({len(bad)} bad values)" if len(bad) > 1
                                                  else ""))
    return label.astype(jnp.int32)


def _check_scale(scale):
    return jnp.asarray(check_scalar("scale", scale))


def _split_args(args):
    """``(params, x, t)`` or ``(x, t)`` -> ``(head, x, t)``, ``head`` = ``()`` or ``(params,)``."""
    *head, x, t = args
    return tuple(head), x, t


def _labels(label, batch: int):
    """``label`` (scalar or ``(batch,)``) as ``(batch,)``; a per-sample label needs the model
    called on the whole batch (raised at trace time otherwise)."""
    if label.ndim == 1 and label.shape[0] != batch:
        raise ValueError(
            f"label has shape {label.shape} (one per sample) but the model is called on a "
            f"batch of {batch}: per-sample labels need the model called on the whole batch "
            "(sample(), solve_ode(per_sample=False)); otherwise pass a scalar label, or "
            "jax.vmap over (x, label) yourself")
    return jnp.broadcast_to(label, (batch,))


def _in_interval(t, interval, variable, schedule):
    if interval is None:
        return jnp.ones(t.shape, bool)
    v = t if variable == "t" else schedule.log_snr(t)
    return (v >= interval[0]) & (v <= interval[1])


def _cfg_call(model_fn, variable, null_label, *args, label, scale, interval, schedule):
    head, x, t = _split_args(args)
    batch = x.shape[0]
    labels = jnp.concatenate([_labels(label, batch),
                              jnp.full((batch,), null_label, jnp.int32)])
    out = model_fn(*head, jnp.concatenate([x, x]), jnp.concatenate([t, t]), labels)
    cond, uncond = out[:batch], out[batch:]
    w = jnp.where(_in_interval(t, interval, variable, schedule), scale, 0.0)
    w = _bcast(w, cond).astype(cond.dtype)
    return cond + w * (cond - uncond)


def classifier_free(model_fn: Callable, label, scale, *, n_classes: int,
                    null_label: int | None = None, interval=None, interval_in: str = "t",
                    schedule: Schedule | None = None):
    r"""Classifier-free guidance: ``(1 + w) model(x, t, y) - w model(x, t, null)``.

    Args:
      model_fn: a conditional model ``model_fn(params, x, t, label)`` or ``model_fn(x, t,
        label)`` returning any of the predictions (eps, x0, v, score, EDM: the guided output
        is the same kind; see the module docstring for why).
      label: the requested class, a scalar or ``(batch,)`` integers in ``[0, n_classes)``
        (per sample: only where the model sees the whole batch, as in ``sample``).
      scale: the guidance weight ``w`` (``0``: conditional; ``-1``: unconditional); a scalar,
        traced data (``jax.vmap`` over it compiles once).
      n_classes: number of classes.
      null_label: the label of the unconditional prediction (default ``n_classes``).
      interval: ``(low, high)``: guide only for ``t`` (or ``lambda``) in ``[low, high]``;
        elsewhere the conditional prediction (``w = 0``). None: everywhere.
      interval_in: ``"t"`` or ``"log_snr"`` (needs ``schedule``).
      schedule: the model's schedule (for an interval in ``log_snr``).

    Returns:
      ``guided(params, x, t)`` (or ``guided(x, t)``), a ``functools.partial`` whose label,
      scale and interval are data.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from deis_jax import sample, schedules
      >>> from deis_jax.guidance import classifier_free
      >>> sched = schedules.vp_linear()
      >>> def model(x, t, label):  # a toy conditional eps-model: class c pulls towards c
      ...     return x - label[:, None].astype(x.dtype) * 0.1
      >>> guided = classifier_free(model, 1, 2.0, n_classes=2)
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> sample(guided, sched, x_T, solver="ddim", nfe=5).shape
      (4, 2)
    """
    _check_label_input(model_fn)
    n_classes = check_int("n_classes", n_classes, minimum=1)
    null_label = n_classes if null_label is None else check_int("null_label", null_label,
                                                                  minimum=0)
    label = _check_label(label, n_classes)
    scale = _check_scale(scale)
    check_choice("interval_in", interval_in, INTERVAL_VARIABLES)
    if interval is not None:
        try:
            low, high = interval
        except (TypeError, ValueError):
            raise TypeError(f"interval must be a pair (low, high), got interval={interval!r}"
                            ) from None
        low = check_scalar("interval[0]", low)
        high = check_scalar("interval[1]", high)
        if is_concrete((low, high)) and not float(low) < float(high):
            raise ValueError(f"interval must have low < high, got interval={interval!r}")
        interval = (jnp.asarray(low), jnp.asarray(high))
        if interval_in == "log_snr":
            if schedule is None:
                raise ValueError("interval_in='log_snr' needs schedule= (lambda of t)")
            check_schedule(schedule)
    return functools.partial(_cfg_call, model_fn, interval_in, null_label, label=label,
                             scale=scale, interval=interval,
                             schedule=schedule if interval_in == "log_snr" else None)


def _classifier_call(model_fn, classifier_fn, prediction, *args, label, scale,
                     classifier_params, schedule):
    head, x, t = _split_args(args)
    eps = as_eps_fn(lambda x, t: model_fn(*head, x, t), schedule, prediction)(x, t)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    labels = _labels(label, x.shape[0])

    def log_prob(x):  # samples are independent: the gradient of the sum is per sample
        logits = classifier_fn(classifier_params, x, t)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    grad = jax.grad(log_prob)(x)
    eps = eps - (scale * _bcast(sigma, x) * grad).astype(eps.dtype)
    return prediction_from_eps(x, eps, alpha, sigma, prediction).astype(eps.dtype)


def classifier_guidance(model_fn: Callable, classifier_fn: Callable, label, scale, *,
                        n_classes: int, schedule: Schedule, classifier_params=None,
                        prediction: str = "eps"):
    r"""Classifier guidance: ``eps - s sigma_t grad_x log p_phi(y | x, t)``.

    Args:
      model_fn: the unconditional model, ``model_fn(params, x, t)`` or ``model_fn(x, t)``.
      classifier_fn: a noise-conditional classifier ``classifier_fn(classifier_params, x, t)
        -> logits (batch, n_classes)`` (``classifier_params`` may be None for an analytic
        one), trained on ``x_t`` of the same schedule.
      label: the requested class, a scalar or ``(batch,)`` integers in ``[0, n_classes)``.
      scale: the guidance scale ``s`` (traced data; ``1`` with the exact classifier gives the
        exact conditional model).
      n_classes: number of classes.
      schedule: the schedule (``sigma_t``, and the conversions to and from ``eps``).
      classifier_params: the classifier's parameters (a pytree of arrays: data of the
        compiled sampler).
      prediction: what ``model_fn`` predicts: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``; the
        guided model predicts the same.

    Returns:
      ``guided(params, x, t)`` (or ``guided(x, t)``).
    """
    check_callable("model_fn", model_fn, "model_fn(params, x, t) or model_fn(x, t)")
    check_callable("classifier_fn", classifier_fn,
                   "classifier_fn(classifier_params, x, t) -> logits")
    check_choice("prediction", prediction, _GUIDED_PREDICTIONS)
    check_schedule(schedule)
    n_classes = check_int("n_classes", n_classes, minimum=1)
    label = _check_label(label, n_classes)
    scale = _check_scale(scale)
    return functools.partial(_classifier_call, model_fn, classifier_fn, prediction,
                             label=label, scale=scale, classifier_params=classifier_params,
                             schedule=schedule)
