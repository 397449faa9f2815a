"""Noise-conditional classifier: trained on the forward marginals, it approaches the exact
class posterior of two Gaussian classes at every noise level, and guides a sampler towards
the requested class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, sample, schedules, testing
from deis_jax.guidance import classifier_guidance
from deis_jax.training import array_dataset
from deis_jax.training.classifier import train_noisy_classifier

MEANS = np.array([[-1.0, 0.5], [1.0, -0.5]])
STD = 0.3


def _two_gaussians(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = MEANS[y] + STD * rng.standard_normal((n, 2))
    return array_dataset(x, x[:64], labels=y, test_labels=y[:64])


def _exact_posterior(schedule, x, t):
    """q(y | x_t): classes N(alpha m_c, (alpha^2 s^2 + sigma^2) I) with equal weights."""
    a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
    var = a**2 * STD**2 + s**2
    logits = -jnp.sum((x[:, None] - a * MEANS[None]) ** 2, -1) / (2 * var[..., 0])
    return jax.nn.softmax(logits, -1)


@pytest.fixture(scope="module")
def trained():
    sched = schedules.vp_linear()
    return sched, train_noisy_classifier(_two_gaussians(), sched, steps=1500, hidden=64,
                                         depth=2)


def test_classifier_approaches_the_exact_posterior(trained):
    sched, clf = trained
    key_t, key_x = jax.random.split(jax.random.key(1))
    t = jax.random.uniform(key_t, (2000,), minval=sched.t_min, maxval=sched.t_max)
    x0 = jnp.asarray(MEANS)[jnp.arange(2000) % 2]
    x0 = x0 + STD * jax.random.normal(key_x, x0.shape)
    x_t = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * jax.random.normal(
        jax.random.key(2), x0.shape)
    got = jax.nn.softmax(clf.classifier_fn(clf.params, x_t, t), -1)
    want = _exact_posterior(sched, x_t, t)
    # Mean absolute error of p(y = 1 | x_t) over draws across all noise levels (a constant
    # 1/2 would be off by ~0.3 on average).
    err = float(jnp.mean(jnp.abs(got[:, 1] - want[:, 1])))
    assert err < 0.03, err


def test_classifier_guidance_picks_the_class(trained):
    sched, clf = trained
    gmm = testing.GaussianMixture(jnp.full((2,), 0.5), jnp.asarray(MEANS),
                                  jnp.full((2, 2), STD))
    model = as_model(gmm.eps_fn(sched), sched)  # the exact unconditional model of the data
    x_T = sched.prior_sample(jax.random.key(0), (400, 2))
    for label in (0, 1):
        guided = classifier_guidance(model, clf.classifier_fn, 1.0, label=label,
                                     classifier_params=clf.params)
        x = sample(guided, x_T, solver="tab3", nfe=20)
        near = jnp.argmin(jnp.sum((x[:, None] - MEANS[None]) ** 2, -1), -1)
        assert float(jnp.mean(near == label)) > 0.97


def test_unlabelled_data_is_refused():
    with pytest.raises(ValueError, match="has no labels"):
        train_noisy_classifier(array_dataset(np.zeros((8, 2))), schedules.vp_linear())
