"""Dynamic thresholding against a direct NumPy computation; use through sample()."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, sample, schedules, testing
from deis_jax.thresholding import dynamic_thresholding, threshold, thresholded_x0_fn


def _numpy_threshold(x0, p, m):
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.maximum(np.quantile(flat, p, axis=1), m).reshape((-1,) + (1,) * (x0.ndim - 1))
    return np.clip(x0, -s, s) * m / s


@pytest.mark.parametrize("p,m", [(0.995, 1.0), (0.9, 1.0), (0.5, 2.0), (1.0, 1.0)])
def test_matches_numpy(x64, p, m):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((5, 3, 8, 8)) * np.array([0.2, 1.0, 3.0, 10.0, 0.9])[:, None, None,
                                                                                  None]
    got = np.asarray(threshold(jnp.asarray(x0), p, m))
    np.testing.assert_allclose(got, _numpy_threshold(x0, p, m), rtol=1e-14, atol=0)
    assert np.all(np.abs(got) <= m + 1e-12)
    # A sample already inside [-m, m] is returned unchanged.
    assert np.abs(x0[0]).max() <= m
    np.testing.assert_array_equal(got[0], x0[0])


def test_jit_and_model_wrapper():
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(4, 3, std=0.4, scale=3.0, seed=1)
    model = as_model(gmm.eps_fn(sched), sched, prediction="eps")
    x = jax.random.normal(jax.random.key(0), (6, 4)) * 2
    t = jnp.full((6,), 0.3)
    wrapped = dynamic_thresholding(model, percentile=0.9, max_value=1.5)
    assert wrapped.prediction == "x0" and wrapped.schedule is model.schedule
    direct = threshold(model.x0(x, t), 0.9, 1.5)
    # the thresholded Model is a pytree: passed to jit as an argument
    got = jax.jit(lambda m, x, t: m.x0(x, t))(wrapped, x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-6)


def test_sampling_with_thresholding(x64):
    """Through sample(): a huge max_value leaves the x0-model sampler unchanged, a small one
    keeps every data prediction (and so the final sample) inside the range."""
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, scale=2.0, seed=4)
    x_T = sched.prior_sample(jax.random.key(1), (64, 2))
    model = as_model(gmm.eps_fn(sched), sched)
    plain = sample(model, x_T, solver="dpmpp_2m", nfe=12)
    same = sample(dynamic_thresholding(model, max_value=1e6), x_T, solver="dpmpp_2m", nfe=12)
    np.testing.assert_allclose(np.asarray(same), np.asarray(plain), rtol=1e-12, atol=1e-12)
    calls = []
    x0_fn = thresholded_x0_fn(model.x0, 0.995, 1.0)

    def spy(x, t):
        out = x0_fn(x, t)
        jax.debug.callback(lambda o: calls.append(np.abs(np.asarray(o)).max()), out)
        return out

    clipped = sample(as_model(spy, sched, prediction="x0"), x_T, solver="dpmpp_2m", nfe=12)
    assert len(calls) == 12 and max(calls) <= 1.0 + 1e-12
    wrapped = sample(dynamic_thresholding(model, percentile=0.995, max_value=1.0), x_T,
                     solver="dpmpp_2m", nfe=12)
    np.testing.assert_allclose(np.asarray(wrapped), np.asarray(clipped), rtol=1e-10,
                               atol=1e-12)
    assert float(jnp.max(jnp.abs(plain))) > 1.5  # thresholding had something to do
    assert float(jnp.max(jnp.abs(clipped))) < 1.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="percentile"):
        threshold(jnp.ones((2, 2)), percentile=0.0)
    with pytest.raises(ValueError, match="percentile"):
        thresholded_x0_fn(lambda x, t: x, percentile=1.5)
    model = as_model(lambda x, t: x, schedules.vp_linear())
    with pytest.raises(ValueError, match="max_value"):
        dynamic_thresholding(model, max_value=0.0)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_thresholding(model, percentile=1.5)
    with pytest.raises(ValueError, match="prediction"):  # the base model's prediction
        as_model(lambda x, t: x, schedules.vp_linear(), prediction="noise")
    with pytest.raises(TypeError, match="model must be a deis_jax.Model.*as_model"):
        dynamic_thresholding(lambda x, t: x, max_value=1.0)
