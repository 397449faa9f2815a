r"""Sample-quality metrics: energy distance and sliced Wasserstein for vectors, a Frechet
distance in the feature space of a small shipped digit classifier for 8x8 digits.

* Energy distance (Szekely & Rizzo 2013):
  :math:`D^2 = 2E\lVert X-Y\rVert - E\lVert X-X'\rVert - E\lVert Y-Y'\rVert \ge 0`, zero iff
  the distributions agree. Estimated by the V-statistic (all pairs, diagonal included), which is
  never negative (it is a squared norm of a difference of kernel mean embeddings), so ratios of
  two estimates are meaningful; its bias ``E|X-X'|/n + E|Y-Y'|/m`` sets a small noise floor.
* Frechet distance (the FID formula, Heusel et al. 2017, eq. 6):
  :math:`\lVert\mu_1-\mu_2\rVert^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`,
  here on the 32-d penultimate features of :func:`digit_classifier`.
* Checkerboard fraction: the share of 2-d samples inside the black squares of the
  ``"checkerboard"`` dataset (1 for the data itself; 0.5 for points spread evenly over the
  board): what "the squares are sharp" means in a figure, as a number.
"""

from __future__ import annotations

import json
import os
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from flax import serialization

from deis_jax import testing

__all__ = [
    "DigitClassifier",
    "DigitQuality",
    "digit_classifier",
    "digit_quality",
    "energy_distance",
    "frechet_distance",
    "in_squares",
    "save_digit_classifier",
    "sliced_wasserstein",
    "train_digit_classifier",
]

_ASSET = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "digit_classifier")


def energy_distance(x, y, *, max_points: int = 4000) -> float:
    """Squared energy distance between samples ``x (n, d)`` and ``y (m, d)``: the float64
    V-statistic of :func:`deis_jax.testing.energy_distance` on at most ``max_points`` rows of
    each (never negative, so ratios between samplers stay meaningful)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)[:max_points]
    y = np.asarray(y, np.float64).reshape(len(y), -1)[:max_points]
    with jax.enable_x64(True):
        return float(max(float(testing.energy_distance(x, y, unbiased=False)), 0.0))


def in_squares(x) -> float:
    """Fraction of the points ``x (n, 2)`` inside the squares of the ``"checkerboard"``
    dataset: ``|x_1|, |x_2| < 2`` and ``floor(x_1) + floor(x_2)`` even.

    Example:
      >>> in_squares([[0.5, 0.5], [0.5, 1.5], [-1.5, -1.5], [2.5, 0.5]])
      0.5
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"in_squares takes 2-d points (n, 2), got shape {x.shape}")
    cell = np.floor(x).astype(np.int64)
    inside = (np.abs(x) < 2).all(axis=1) & (cell.sum(axis=1) % 2 == 0)
    return float(inside.mean())


def sliced_wasserstein(x, y, *, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance over ``n_proj`` random directions (equal sample sizes are
    matched by sorting; otherwise both are compared through 256 quantiles)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    dirs = np.random.default_rng(seed).standard_normal((x.shape[1], n_proj))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    q = np.linspace(0.0, 1.0, 256)
    px, py = np.quantile(x @ dirs, q, axis=0), np.quantile(y @ dirs, q, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(n, k)``."""
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


class _ClassifierNet(nn.Module):
    """MLP on flattened 8x8 digits: 64 -> 128 -> 32 (features) -> 11 (ten digits + "not a
    digit")."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        feats = nn.Dense(32)(h)
        return nn.Dense(11)(nn.relu(feats)), feats


def _negatives(key, digits, n):
    """Images that are not digits: uniform noise, digits under heavy noise, blends of two."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    third = n // 3
    noise = jax.random.uniform(k1, (third, 8, 8, 1), minval=-1.0, maxval=1.0)
    idx = jax.random.randint(k2, (3, n - 2 * third), 0, digits.shape[0])
    std = jax.random.uniform(k3, (third, 1, 1, 1), minval=0.6, maxval=1.5)
    noisy = jnp.clip(digits[idx[0, :third]] + std * jax.random.normal(k4, (third, 8, 8, 1)), -1, 1)
    blend = 0.5 * (digits[idx[1]] + digits[idx[2]])
    return jnp.concatenate([noise, noisy, blend], axis=0)


class DigitClassifier(NamedTuple):
    """The shipped digit classifier: ``features(x) (n, 32)`` and ``probs(x) (n, 11)`` for
    ``x (n, 8, 8, 1)`` in ``[-1, 1]`` (class 10 = "not a digit"), plus its held-out accuracy
    on real test digits when it was trained."""

    features: Callable
    probs: Callable
    test_accuracy: float


def train_digit_classifier(seed: int = 0, steps: int = 4000, noise: float = 0.1):
    """Train the classifier on the digits train split (light Gaussian input noise) plus an
    eleventh "not a digit" class (:func:`_negatives`), so that confidence on a digit class
    means the image looks like a digit. Returns ``(params, test_accuracy)``."""
    from deis_jax.training.data import digit_labels, load_dataset

    data = load_dataset("digits")
    y_train, y_test = digit_labels()
    net = _ClassifierNet()
    key = jax.random.key(seed)
    params = net.init(key, jnp.zeros((1, 8, 8, 1)))
    opt = optax.adamw(optax.cosine_decay_schedule(3e-3, steps), weight_decay=1e-4)
    opt_state = opt.init(params)
    x_train, y_train = jnp.asarray(data.train), jnp.asarray(y_train)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_noise, k_neg = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (128,), 0, x_train.shape[0])
        x = x_train[idx] + noise * jax.random.normal(k_noise, (128, 8, 8, 1))
        x = jnp.concatenate([x, _negatives(k_neg, x_train, 48)], axis=0)
        y = jnp.concatenate([y_train[idx], jnp.full((48,), 10, y_train.dtype)])

        def loss(p):
            logits, _ = net.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(steps):
        params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
    logits, _ = net.apply(params, jnp.asarray(data.test))
    logits = logits[:, :10]
    return params, float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_test))


def save_digit_classifier(params, test_accuracy: float, path: str = _ASSET) -> None:
    """Write the classifier asset (``.msgpack`` weights + ``.json`` record)."""
    with open(path + ".msgpack", "wb") as f:
        f.write(serialization.to_bytes(params))
    with open(path + ".json", "w") as f:
        json.dump({"test_accuracy": test_accuracy, "architecture": "mlp 64-128-32-11"}, f)


def digit_classifier(path: str = _ASSET) -> DigitClassifier:
    """Load the digit classifier shipped in ``deis_jax/assets/``."""
    if not os.path.exists(path + ".msgpack"):
        raise FileNotFoundError(f"digit classifier asset missing at {path}.msgpack")
    net = _ClassifierNet()
    template = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with open(path + ".msgpack", "rb") as f:
        params = serialization.from_bytes(template, f.read())
    with open(path + ".json") as f:
        record = json.load(f)
    apply = jax.jit(lambda x: net.apply(params, x))
    return DigitClassifier(lambda x: apply(jnp.asarray(x, jnp.float32))[1],
                           lambda x: jax.nn.softmax(apply(jnp.asarray(x, jnp.float32))[0]),
                           float(record["test_accuracy"]))


class DigitQuality(NamedTuple):
    """Quality of generated digits.

    Attributes:
      frechet: Frechet distance to the reference set in classifier-feature space.
      recognised: fraction of samples classified as a digit (not class 10) with probability
        > 0.5.
      mean_confidence: mean probability of the most likely digit class.
      class_entropy: entropy (nats) of the predicted-digit histogram (log 10 = 2.30 when all
        classes appear equally often; low values flag mode collapse).
    """

    frechet: float
    recognised: float
    mean_confidence: float
    class_entropy: float


def digit_quality(samples, reference, classifier: DigitClassifier | None = None
                  ) -> DigitQuality:
    """Score generated digits ``(n, 8, 8, 1)`` against real ``reference`` digits."""
    clf = digit_classifier() if classifier is None else classifier
    samples = np.clip(np.asarray(samples, np.float32), -1, 1)
    probs = np.asarray(clf.probs(samples))
    top = probs[:, :10].max(-1)
    recognised = (probs.argmax(-1) < 10) & (top > 0.5)
    hist = np.bincount(probs[:, :10].argmax(-1), minlength=10) / len(probs)
    entropy = float(-np.sum(hist[hist > 0] * np.log(hist[hist > 0])))
    fd = frechet_distance(clf.features(samples), clf.features(reference))
    return DigitQuality(fd, float(np.mean(recognised)), float(top.mean()), entropy)
