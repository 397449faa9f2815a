"""Score networks: shapes, time conditioning, per-sample independence, config round trip, and
the samplers driving a Linen model and a model written in the other Flax API (NNX)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import deis_jax
from deis_jax import schedules
from deis_jax.models import MLPScore, SinusoidalEmbedding, UNet, model_from_config


def _randomize(params, key):
    """Random parameters everywhere (the output layers are zero-initialised)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_sinusoidal_embedding_values():
    emb = SinusoidalEmbedding(dim=8, scale=2.0, max_period=100.0)
    t = jnp.array([0.0, 0.25])
    out = emb.apply({}, t)
    freqs = 100.0 ** (-np.arange(4) / 4)
    want = np.concatenate([np.sin(2 * 0.25 * freqs), np.cos(2 * 0.25 * freqs)])
    np.testing.assert_allclose(out[0], np.r_[np.zeros(4), np.ones(4)], atol=1e-7)
    np.testing.assert_allclose(out[1], want, rtol=1e-6)


@pytest.mark.parametrize("model,shape", [
    (MLPScore(hidden=32, depth=2), (5, 3)),
    (UNet(channels=(8, 16), emb_dim=32), (5, 8, 8, 2)),
])
def test_shapes_time_dependence_and_batch_independence(model, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.linspace(0.1, 0.9, shape[0])
    params = jax.jit(model.init)(jax.random.key(1), x[:1], t[:1])
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(params, x, t), 0.0)  # zero-initialised output layer
    params = _randomize(params, jax.random.key(2))
    out = apply(params, x, t)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    # Time conditioning reaches the output.
    assert float(jnp.max(jnp.abs(apply(params, x, t + 0.05) - out))) > 1e-4
    # No mixing across the batch (group norm and attention are per sample): changing the
    # other samples leaves the first output unchanged.
    others = x.at[1:].set(jax.random.normal(jax.random.key(3), x[1:].shape))
    np.testing.assert_allclose(apply(params, others, t)[0], out[0], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(apply(params, others, t)[1:] - out[1:]))) > 1e-4


def test_model_from_config():
    m = model_from_config({"name": "unet", "channels": [8, 16], "attention": False})
    assert isinstance(m, UNet) and m.channels == (8, 16) and not m.attention
    assert model_from_config({"name": "mlp", "depth": 1}) == MLPScore(depth=1)
    with pytest.raises(ValueError, match="model name"):
        model_from_config({"name": "transformer"})
    with pytest.raises(ValueError, match="name"):
        model_from_config({"hidden": 3})
    # A misspelt key used to fail in the dataclass constructor, not listing the valid ones.
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hiden'\] in the 'mlp' model "
                                         r"config; valid keys: \['depth', 'dtype', 'emb_dim', "
                                         r"'hidden', 'num_classes', 'out_features', 'param_dtype', "
                                         r"'time_scale'\]"):
        model_from_config({"name": "mlp", "hiden": 3})


def _linear_gaussian_eps(schedule, mean, std):
    """Exact eps of N(mean, std^2 I): ``sigma (x - alpha mean) / (alpha^2 std^2 + sigma^2)``."""
    def eps(x, t):
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        return s * (x - a * mean[None]) / (a**2 * std**2 + s**2)
    return eps


class _LinenGaussian(nn.Module):
    """A Linen module computing the exact eps of a Gaussian from its parameters."""

    @nn.compact
    def __call__(self, x, t):
        mean = self.param("mean", lambda k: jnp.zeros((x.shape[-1],)))
        log_std = self.param("log_std", lambda k: jnp.zeros(()))
        sched = schedules.vp_linear()
        a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
        return s * (x - a * mean[None]) / (a**2 * jnp.exp(2 * log_std) + s**2)


class _NNXGaussian(nnx.Module):
    """The same model in Flax NNX: parameters live on the module object."""

    def __init__(self, dim):
        self.mean = nnx.Param(jnp.zeros((dim,)))
        self.log_std = nnx.Param(jnp.zeros(()))

    def __call__(self, x, t):
        sched = schedules.vp_linear()
        a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
        return s * (x - a * self.mean[...][None]) / (a**2 * jnp.exp(2 * self.log_std[...]) + s**2)


def test_samplers_take_linen_and_nnx_models():
    sched = schedules.vp_linear()
    mean, std = jnp.array([0.5, -1.0]), 0.4
    x_T = sched.prior_sample(jax.random.key(0), (64, 2))
    exact = deis_jax.as_model(_linear_gaussian_eps(sched, mean, std), sched)
    want = deis_jax.sample(exact, x_T, solver="tab3", nfe=10)

    linen = _LinenGaussian()
    params = linen.init(jax.random.key(0), x_T[:1], jnp.ones((1,)))
    params = {"params": {"mean": mean, "log_std": jnp.log(jnp.float32(std))}}
    got_linen = deis_jax.sample(deis_jax.as_model(linen, sched, params=params), x_T,
                                solver="tab3", nfe=10)
    got_partial = deis_jax.sample(
        deis_jax.as_model(functools.partial(linen.apply, params), sched), x_T, solver="tab3",
        nfe=10)

    nnx_model = _NNXGaussian(2)
    nnx_model.mean[...] = mean
    nnx_model.log_std[...] = jnp.log(jnp.float32(std))
    graphdef, state = nnx.split(nnx_model)

    def nnx_apply(state, x, t):  # pure function of the NNX state, like Linen's apply
        return nnx.merge(graphdef, state)(x, t)

    got_nnx = deis_jax.sample(deis_jax.as_model(nnx_apply, sched, params=state), x_T,
                              solver="tab3", nfe=10)
    got_nnx_direct = deis_jax.sample(deis_jax.as_model(nnx_model, sched), x_T, solver="ddim",
                                     nfe=10)
    want_ddim = deis_jax.sample(exact, x_T, solver="ddim", nfe=10)
    np.testing.assert_allclose(got_linen, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_partial, got_linen)
    np.testing.assert_allclose(got_nnx, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_nnx_direct, want_ddim, rtol=1e-5, atol=1e-5)
    # And the samples are right: mean and std of N(mean, std^2) (64 samples: loose).
    np.testing.assert_allclose(np.mean(got_nnx, 0), mean, atol=4 * std / 8)
