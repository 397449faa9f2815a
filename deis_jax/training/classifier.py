r"""Noise-conditional classifiers ``p_phi(y | x_t, t)`` for classifier guidance.

Classifier guidance (:func:`deis_jax.guidance.classifier_guidance`; Dhariwal & Nichol 2021,
Sec. 4; Song et al. 2021, Sec. 5 and App. I.4) needs the class posterior of the *noised*
data at every noise level of the sampler's schedule. The classifier is trained on the forward
marginals of that schedule by cross-entropy,

.. math::
   L(\phi) = \mathbb E_{t \sim U[t_{\min}, t_{\max}],\ (x_0, y),\ \epsilon}
       \big[-\log p_\phi(y \mid \alpha_t x_0 + \sigma_t \epsilon,\ t)\big],

whose minimiser is the exact posterior ``q(y | x_t)`` at every ``t`` (the cross-entropy is a
proper scoring rule, minimised pointwise in ``(x_t, t)``).

The network is the residual MLP of the score networks (:class:`~deis_jax.models.MLPScore`)
with ``n_classes`` outputs, on the flattened input, with the same time embedding.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deis_jax._checks import check_int, check_scalar
from deis_jax.models import MLPScore
from deis_jax.schedules import Schedule, check_schedule
from deis_jax.training.data import Dataset, batch_indices
from deis_jax.training.losses import _bcast, sample_times

__all__ = ["NoisyClassifier", "classifier_loss", "classifier_logits", "train_noisy_classifier"]


def classifier_logits(net: MLPScore, params, x, t):
    """Logits ``(batch, n_classes)`` of ``net`` on the flattened ``x (batch, ...)`` at times
    ``t (batch,)``: the ``classifier_fn(params, x, t)`` of classifier guidance (bind ``net``
    with ``functools.partial``; a Flax module compares by value, so rebuilding it reuses the
    compiled sampler)."""
    return net.apply(params, jnp.reshape(x, (x.shape[0], -1)), t)


def classifier_loss(logits_fn: Callable, schedule: Schedule, x0, labels, key):
    """The cross-entropy of the module docstring, one ``(t, eps)`` draw per example:
    ``logits_fn(x_t, t)`` against ``labels``."""
    k_t, k_eps = jax.random.split(key)
    t = sample_times(k_t, x0.shape[0], x0.dtype, schedule.t_min, schedule.t_max)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps
    logits = logits_fn(x_t, t)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class NoisyClassifier(NamedTuple):
    """A trained noise-conditional classifier.

    Attributes:
      classifier_fn: ``classifier_fn(params, x, t) -> logits``, as
        :func:`deis_jax.guidance.classifier_guidance` takes it.
      params: its parameters (pass as ``classifier_params=``).
      n_classes: number of classes.
    """

    classifier_fn: Callable
    params: dict
    n_classes: int


def train_noisy_classifier(data: Dataset, schedule: Schedule, *, steps: int = 2000,
                           batch_size: int = 256, lr: float = 2e-3, hidden: int = 256,
                           depth: int = 3, seed: int = 0) -> NoisyClassifier:
    """Train a noise-conditional classifier on ``data``'s labelled training split under
    ``schedule`` (AdamW, cosine learning rate from ``lr``; stateless seed-and-step batches
    as in :func:`~deis_jax.training.fit`).

    Example:
      >>> import numpy as np
      >>> from deis_jax import schedules
      >>> from deis_jax.training import array_dataset
      >>> x = np.r_[np.full((8, 2), -1.0), np.full((8, 2), 1.0)]
      >>> y = np.r_[[0] * 8, [1] * 8]
      >>> data = array_dataset(x, x, labels=y, test_labels=y)
      >>> clf = train_noisy_classifier(data, schedules.vp_linear(), steps=5, hidden=8)
      >>> clf.classifier_fn(clf.params, x, np.full(16, 0.5, np.float32)).shape
      (16, 2)
    """
    check_schedule(schedule)
    if data.train_labels is None:
        raise ValueError(f"the dataset {data.name!r} has no labels: a classifier needs "
                         "labelled data (e.g. 'digits')")
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_scalar("lr", lr, lower=0.0, lower_open=True)
    net = MLPScore(hidden=check_int("hidden", hidden, minimum=1),
                   depth=check_int("depth", depth, minimum=1), out_features=data.n_classes)
    classifier_fn = functools.partial(classifier_logits, net)
    x_train = data.train.reshape(len(data.train), -1)
    key = jax.random.key(seed)
    params = net.init(key, jnp.asarray(x_train[:1]), jnp.zeros((1,), x_train.dtype))
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x0, labels, key):
        loss = functools.partial(classifier_loss, schedule=schedule, x0=x0, labels=labels,
                                 key=key)
        grads = jax.grad(lambda p: loss(functools.partial(classifier_fn, p)))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(steps):
        rows = batch_indices(len(x_train), i, batch_size, seed)
        params, opt_state = step(params, opt_state, x_train[rows],
                                 np.asarray(data.train_labels[rows], np.int32),
                                 jax.random.fold_in(key, i))
    return NoisyClassifier(classifier_fn, params, data.n_classes)
