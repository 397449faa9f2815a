"""The analytic problems themselves: exact scores, exact samples, ground-truth accuracy."""

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import schedules, testing


def test_score_is_the_gradient_of_the_marginal_log_density(x64):
    s = schedules.vp_linear()
    gmm = testing.gaussian_mixture(3, 5, std=[0.1, 0.2, 0.3, 0.4, 0.5], seed=4)
    x = jax.random.normal(jax.random.key(0), (7, 3))
    t = jnp.linspace(0.01, 0.9, 7)
    auto = jax.vmap(jax.grad(lambda xi, ti: gmm.marginal_logp(xi[None], ti, s)[0]))(x, t)
    np.testing.assert_allclose(gmm.score(x, t, s), auto, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gmm.eps(x, t, s), -s.sigma(t)[:, None] * auto, rtol=1e-10,
                               atol=1e-12)


def test_exact_samples_have_the_mixture_moments(x64):
    gmm = testing.ring_mixture(8, std=0.05)
    x, labels = gmm.sample(jax.random.key(1), 40_000)
    counts = np.bincount(np.asarray(labels), minlength=8) / 40_000
    np.testing.assert_allclose(counts, 1 / 8, atol=0.01)
    np.testing.assert_allclose(np.mean(np.asarray(x), 0), 0.0, atol=0.02)
    assert np.mean(np.asarray(gmm.component(x) == labels)) > 0.999


def test_ground_truth_is_stable_under_halving_the_tolerance(x64):
    s = schedules.ve()
    gmm = testing.ring_mixture(8, std=0.05)
    x_T = s.prior_sample(jax.random.key(2), (16, 2))
    a, _ = testing.ode_ground_truth(gmm, s, x_T, s.t_max, s.t_min)
    b, _ = testing.ode_ground_truth(gmm, s, x_T, s.t_max, s.t_min, rtol=5e-11, atol=5e-11)
    assert float(testing.rmse(a, b)) < 1e-9
