"""Quality metrics against closed forms, and the shipped digit classifier."""

import os

import numpy as np
from scipy.stats import norm

from deis_jax.training import (
    digit_classifier, digit_quality, energy_distance, frechet_distance, load_dataset,
    sliced_wasserstein)


def test_energy_distance_of_shifted_gaussians():
    # 1-d N(0,1) vs N(m,1): 2 E|N(m,2)| - 2 E|N(0,2)|, E|N(m,v)| = sqrt(v) 2 phi(m/sqrt v)
    #   + m (1 - 2 Phi(-m/sqrt v)).
    rng = np.random.default_rng(0)
    m, s = 1.0, np.sqrt(2.0)
    e_abs = s * 2 * norm.pdf(m / s) + m * (1 - 2 * norm.cdf(-m / s))
    want = 2 * e_abs - 2 * s * 2 * norm.pdf(0)
    got = np.mean([energy_distance(rng.standard_normal((2000, 1)),
                                   m + rng.standard_normal((2000, 1))) for _ in range(3)])
    np.testing.assert_allclose(got, want, rtol=0.08)
    same = energy_distance(rng.standard_normal((2000, 2)), rng.standard_normal((2000, 2)))
    assert 0 <= same < 0.01


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(1)
    mu = np.array([1.0, -2.0, 0.5])
    a = rng.standard_normal((40000, 3))
    b = mu + 2.0 * rng.standard_normal((40000, 3))
    # |mu|^2 + tr(I + 4I - 2 (4I)^{1/2}) = |mu|^2 + 3.
    np.testing.assert_allclose(frechet_distance(a, b), mu @ mu + 3.0, rtol=0.03)
    np.testing.assert_allclose(frechet_distance(a, a), 0.0, atol=1e-6)


def test_sliced_wasserstein_of_a_shift():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 2))
    shift = np.array([0.6, -0.8])  # |shift| = 1; E_theta[(shift . theta)^2] = 1/2 in 2-d
    np.testing.assert_allclose(sliced_wasserstein(x, x + shift, n_proj=2000), np.sqrt(0.5),
                               rtol=0.03)


def test_shipped_digit_classifier():
    clf = digit_classifier()
    path = os.path.join(os.path.dirname(__import__("deis_jax").__file__), "assets",
                        "digit_classifier.msgpack")
    assert os.path.getsize(path) < 2 * 2**20
    assert clf.test_accuracy > 0.95
    data = load_dataset("digits")
    real = digit_quality(data.test, data.train, clf)
    assert real.recognised > 0.95 and real.class_entropy > 2.2
    assert real.frechet < 5.0
    noise = np.random.default_rng(0).uniform(-1, 1, (300, 8, 8, 1))
    fake = digit_quality(noise, data.train, clf)
    assert fake.recognised < 0.1 and fake.frechet > 20 * real.frechet
    assert clf.features(data.test[:4]).shape == (4, 32)
