"""The one door: every kind of network enters through ``as_model`` and samples without glue,
new parameters and conditions never retrace (a Python counter in each network's ``__call__``
counts traces), and bad models fail once, before tracing, naming the argument to change."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import deis_jax
from deis_jax import Model, as_model, guidance, sample, schedules, testing
from deis_jax.adaptive import solve_ode

VP = schedules.vp_linear()
DIM = 4


class _Counter:
    def __init__(self):
        self.n = 0


# ----------------------------------------------------------------------------- NNX


class NNXNet(nnx.Module):
    traces = _Counter()

    def __init__(self, rngs):
        self.lin1 = nnx.Linear(DIM + 1, 16, rngs=rngs)
        self.lin2 = nnx.Linear(16, DIM, rngs=rngs)

    def __call__(self, x, t):
        NNXNet.traces.n += 1
        h = jnp.concatenate([x, t[:, None]], axis=-1)
        return self.lin2(jnp.tanh(self.lin1(h)))


def test_nnx_module_trained_in_place_is_seen_without_retracing():
    net = NNXNet(nnx.Rngs(0))
    model = as_model(net, VP)
    x_T = VP.prior_sample(jax.random.key(1), (8, DIM))
    before = sample(model, x_T, solver="dpmpp_2m", nfe=6)
    traces = NNXNet.traces.n
    optimizer = nnx.Optimizer(net, optax.sgd(0.5), wrt=nnx.Param)
    x0 = jax.random.normal(jax.random.key(2), (64, DIM))

    def loss(m):
        t = jnp.full((64,), 0.5)
        return jnp.mean((m(x0, t) - x0) ** 2)

    for _ in range(3):  # an in-place optimizer update, as a training loop does
        grads = nnx.grad(loss)(net)
        optimizer.update(net, grads)
    traces_after_training = NNXNet.traces.n
    after = sample(model, x_T, solver="dpmpp_2m", nfe=6)  # the same Model value
    assert NNXNet.traces.n == traces_after_training, "new weights retraced the sampler"
    assert not np.allclose(after, before), "the sample did not see the in-place update"
    fresh = NNXNet(nnx.Rngs(7))  # another module, then given the trained weights
    nnx.update(fresh, nnx.state(net))
    np.testing.assert_array_equal(sample(as_model(fresh, VP), x_T, solver="dpmpp_2m", nfe=6),
                                  after)
    assert NNXNet.traces.n == traces_after_training
    assert traces > 0


# ----------------------------------------------------------------------------- equinox


class EqxNet(eqx.Module):
    w: jax.Array
    b: jax.Array
    scale: float = 0.5
    traces = _Counter()

    def __call__(self, x, t):
        EqxNet.traces.n += 1
        return self.scale * jnp.tanh(x @ self.w + self.b[None]) * t[:, None]


def _eqx(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return EqxNet(jax.random.normal(k1, (DIM, DIM)), jax.random.normal(k2, (DIM,)))


def test_equinox_module_with_new_weights_does_not_retrace():
    x_T = VP.prior_sample(jax.random.key(0), (8, DIM))
    a = sample(as_model(_eqx(0), VP), x_T, solver="tab3", nfe=5)
    traces = EqxNet.traces.n
    b = sample(as_model(_eqx(1), VP), x_T, solver="tab3", nfe=5)
    assert EqxNet.traces.n == traces
    assert not np.allclose(a, b)
    # and as params= of a function (the arrays are data, the float static)
    fn = lambda module, x, t: module(x, t)  # noqa: E731
    c = sample(as_model(fn, VP, params=_eqx(1)), x_T, solver="tab3", nfe=5)
    np.testing.assert_allclose(c, b, rtol=1e-6)


# ----------------------------------------------------------------------------- DDPM index nets

N_TRAIN = 1000
DDPM = schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, N_TRAIN))


class EmbedNet(nn.Module):
    """A diffusers-style eps network: an ``nn.Embed(1000, .)`` table of integer timesteps."""

    @nn.compact
    def __call__(self, x, n):
        emb = nn.Embed(N_TRAIN, 8)(n)
        return nn.Dense(DIM)(jnp.concatenate([x, emb], axis=-1))


class OneHotNet(nn.Module):
    """Its twin: the same table read by a one-hot product of float indices."""

    @nn.compact
    def __call__(self, x, n):
        table = self.param("table", nn.initializers.normal(1.0), (N_TRAIN, 8))
        emb = jax.nn.one_hot(n.astype(jnp.int32), N_TRAIN) @ table  # n: whole floats
        return nn.Dense(DIM)(jnp.concatenate([x, emb], axis=-1))


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc3", "tab3"])
def test_ddpm_embedding_network_samples_with_integer_timesteps(solver):
    x_T = DDPM.prior_sample(jax.random.key(0), (8, DIM))
    embed = EmbedNet()
    params = embed.init(jax.random.key(1), x_T, jnp.zeros(8, jnp.int32))
    twin_params = {"params": {"table": params["params"]["Embed_0"]["embedding"],
                              "Dense_0": params["params"]["Dense_0"]}}
    seen = []

    def rounded(t):  # the twin gets the integer steps as floats
        n = jnp.round(N_TRAIN * t - 1.0)
        seen.append(n)
        return n

    out = sample(as_model(embed, DDPM, params=params, timestep="discrete"), x_T, solver=solver,
                 nfe=10)
    twin = sample(as_model(OneHotNet(), DDPM, params=twin_params, timestep=rounded), x_T,
                  solver=solver, nfe=10)
    np.testing.assert_allclose(out, twin, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out))


def test_discrete_timestep_is_the_ddpm_index():
    model = as_model(lambda x, n: jnp.broadcast_to(n[:, None].astype(x.dtype), x.shape), DDPM,
                     timestep="discrete")
    t = (jnp.arange(1, 6) * 100.0) / N_TRAIN  # entry n sits at t = (n + 1) / N
    x = jnp.zeros((5, 1))
    np.testing.assert_array_equal(model.output(x, t)[:, 0], np.arange(1, 6) * 100 - 1)
    index = as_model(lambda x, n: jnp.broadcast_to(n[:, None], x.shape), DDPM, timestep="index")
    np.testing.assert_allclose(index.output(x, t + 0.25 / N_TRAIN)[:, 0],
                               np.arange(1, 6) * 100 - 0.75, rtol=1e-5)


# ----------------------------------------------------------------------------- conditions


class TextNet(nn.Module):
    """A text-conditioned eps network: cross-attention-like pooling of a (B, L, D) embedding."""

    traces = _Counter()

    @nn.compact
    def __call__(self, x, t, emb):
        TextNet.traces.n += 1
        pooled = jnp.mean(nn.Dense(8)(emb), axis=1)
        h = jnp.concatenate([x, pooled, t[:, None]], axis=-1)
        return x + 0.1 * jnp.tanh(nn.Dense(DIM)(jnp.tanh(nn.Dense(16)(h))))  # near N(0, I)


def _text_model(batch=4):
    k = jax.random.split(jax.random.key(3), 3)
    prompt = jax.random.normal(k[0], (batch, 8, 16))
    negative = jax.random.normal(k[1], (1, 8, 16))  # one negative prompt, shared
    net = TextNet()
    params = net.init(k[2], jnp.zeros((batch, DIM)), jnp.zeros(batch), prompt)
    return as_model(net, VP, params=params, cond=prompt), negative


def test_cfg_with_text_embeddings_vmaps_over_scales_and_never_retraces():
    model, negative = _text_model()
    x_T = VP.prior_sample(jax.random.key(0), (4, DIM))

    def run(scale):
        return sample(guidance.classifier_free(model, scale, null_cond=negative), x_T,
                      solver="dpmpp_2m", nfe=6)

    scales = jnp.linspace(0.0, 7.0, 8)
    swept = jax.jit(jax.vmap(run))(scales)
    assert swept.shape == (8, 4, DIM) and np.all(np.isfinite(swept))
    eager = run(2.0)
    traces = TextNet.traces.n
    again = run(5.0)  # a new scale: data, not a new executable
    assert TextNet.traces.n == traces
    np.testing.assert_allclose(swept[5], again, rtol=2e-4, atol=2e-5)  # scales[5] = 5
    assert not np.allclose(eager, again)
    # scale 0 is the conditional model, -1 the negative prompt's
    np.testing.assert_allclose(run(0.0), sample(model, x_T, solver="dpmpp_2m", nfe=6),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        run(-1.0), sample(model.replace(cond=negative), x_T, solver="dpmpp_2m", nfe=6),
        rtol=1e-4, atol=1e-5)


def test_rescale_zero_is_plain_cfg_and_rescale_matches_its_definition():
    model, negative = _text_model()
    x = jax.random.normal(jax.random.key(5), (4, DIM))
    t = jnp.full((4,), 0.4)
    w = 3.0
    c = model.output(x, t)
    u = model.replace(cond=negative).output(x, t)
    plain = c + w * (c - u)
    guided = guidance.classifier_free(model, w, null_cond=negative)
    np.testing.assert_allclose(guided.output(x, t), plain, rtol=1e-5, atol=1e-6)
    std = lambda v: jnp.std(v, axis=1, keepdims=True)  # noqa: E731
    phi = 0.7
    expected = phi * plain * std(c) / std(plain) + (1 - phi) * plain
    rescaled = guidance.classifier_free(model, w, null_cond=negative, rescale=phi)
    np.testing.assert_allclose(rescaled.output(x, t), expected, rtol=1e-5, atol=1e-6)


def test_cfg_on_labels_equals_the_hand_written_combination():
    gmm = testing.gaussian_mixture(dim=2, n_modes=2, seed=0)

    def net(x, t, label):  # class 0 / 1 / null (2): a different eps for each
        shift = jnp.array([0.0, 0.3, -0.2])[label][:, None]
        return gmm.eps_fn(VP)(x, t) + shift

    labels = jnp.array([0, 1, 1, 0])
    model = as_model(net, VP, cond=labels)
    guided = guidance.classifier_free(model, 1.5, null_cond=jnp.array([2]))
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    hand = as_model(lambda x, t: 2.5 * net(x, t, labels) - 1.5 * net(x, t, jnp.full(4, 2)), VP)
    np.testing.assert_allclose(sample(guided, x_T, solver="unipc3", nfe=8),
                               sample(hand, x_T, solver="unipc3", nfe=8), rtol=1e-5, atol=1e-6)


def test_per_sample_condition_in_an_adaptive_per_sample_solve():
    def net(x, t, c):
        return x * 0.1 + c[:, None]

    cond = jnp.array([0.0, 0.5, -0.5])
    model = as_model(net, VP, cond=cond)
    x_T = VP.prior_sample(jax.random.key(0), (3, 2))
    shared = solve_ode(model, x_T, rtol=1e-6, atol=1e-6).x
    each = solve_ode(model, x_T, rtol=1e-6, atol=1e-6, per_sample=True).x
    np.testing.assert_allclose(each, shared, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- Linen, functions


def test_linen_module_with_new_params_does_not_retrace():
    calls = _Counter()

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            calls.n += 1
            return nn.Dense(DIM)(jnp.concatenate([x, t[:, None]], -1))

    x_T = VP.prior_sample(jax.random.key(0), (8, DIM))
    p1 = Net().init(jax.random.key(1), x_T, jnp.zeros(8))
    p2 = Net().init(jax.random.key(2), x_T, jnp.zeros(8))
    a = sample(as_model(Net(), VP, params=p1), x_T, solver="ddim", nfe=4)
    traces = calls.n
    b = sample(as_model(Net(), VP, params=p2), x_T, solver="ddim", nfe=4)  # an equal module
    assert calls.n == traces and not np.allclose(a, b)


def test_model_is_a_pytree_and_as_model_of_a_model_is_itself():
    model = as_model(lambda p, x, t: p * x, VP, params=jnp.float32(0.5), prediction="epsilon")
    assert model.prediction == "eps"
    assert as_model(model) is model
    leaves = jax.tree_util.tree_leaves(model)
    assert any(leaf is model.params for leaf in leaves)
    doubled = jax.tree_util.tree_map(lambda v: v * 2, model)
    assert isinstance(doubled, Model) and float(doubled.params) == 1.0


def test_flow_prediction_is_eps_minus_x0():
    flow = schedules.flow(shift=3.0)
    gmm = testing.gaussian_mixture(dim=2, n_modes=3, seed=1)
    eps_model = as_model(gmm.eps_fn(flow), flow)
    u = lambda x, t: eps_model.eps(x, t) - eps_model.x0(x, t)  # noqa: E731
    flow_model = as_model(u, flow, prediction="flow")
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.linspace(0.1, 0.9, 6)
    np.testing.assert_allclose(flow_model.eps(x, t), eps_model.eps(x, t), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flow_model.velocity(x, t), eps_model.velocity(x, t), rtol=1e-4,
                               atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_old_call_form_raises_the_type_error():
    eps = testing.ring_mixture().eps_fn(VP)
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    with pytest.raises(TypeError, match="as_model"):
        sample(eps, VP, x_T, solver="tab3", nfe=5)
    with pytest.raises(TypeError, match="as_model"):
        sample(as_model(eps, VP), x_T, nfe=5, params={"w": 1.0})
    with pytest.raises(TypeError, match="must be a deis_jax.Model"):
        sample(eps, x_T, nfe=5)
    with pytest.raises(TypeError, match="must be a deis_jax.Model"):
        solve_ode(eps, x_T)


def test_a_failing_network_fails_once_before_tracing_naming_the_argument():
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    with pytest.raises(ValueError, match=r"network\(x, t\).*params="):
        sample(as_model(lambda p, x, t: x, VP), x_T, nfe=5)  # needs params
    with pytest.raises(ValueError, match=r"network\(x, t, cond\).*cond="):
        sample(as_model(lambda x, t: x, VP, cond=jnp.zeros(4)), x_T, nfe=5)
    with pytest.raises(ValueError, match="must return an array of x's shape"):
        sample(as_model(lambda x, t: x[:, :1], VP), x_T, nfe=5)
    with pytest.raises(ValueError, match=r"int32.*timestep='discrete'"):
        sample(as_model(lambda x, n: x * jax.lax.sin(n)[:, None], DDPM,  # lax: floats only
                        timestep="discrete"), x_T, nfe=5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prediction="noise"), r"unknown prediction='noise'.*epsilon"),
    (dict(timestep="seconds"), r"unknown timestep='seconds'"),
    (dict(timestep="discrete"), r"timestep='discrete'.*vp_discrete.*'vp_linear'"),
    (dict(dtype="int8"), r"dtype='int8'"),
    (dict(cond="label"), r"cond must be a pytree of arrays"),
])
def test_bad_as_model_options_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        as_model(lambda x, t: x, VP, **kwargs)


def test_unsupported_networks_and_conditions_are_named():
    with pytest.raises(TypeError, match="network must be callable"):
        as_model(3, VP)
    with pytest.raises(TypeError, match="needs the schedule"):
        as_model(lambda x, t: x)
    with pytest.raises(TypeError, match="Linen module.*params="):
        as_model(nn.Dense(2), VP)
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    bad = as_model(lambda x, t, c: x, VP, cond=jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"cond has a leaf of shape \(3, 5\).*1 .*or the batch"):
        sample(bad, x_T, nfe=5)
    model = as_model(lambda x, t, c: x, VP, cond={"text": jnp.zeros((4, 8))})
    with pytest.raises(ValueError, match="null_cond must have cond's structure"):
        guidance.classifier_free(model, 1.0, null_cond=jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match="null_cond must match cond leaf by leaf"):
        guidance.classifier_free(model, 1.0, null_cond={"text": jnp.zeros((1, 9))})
    with pytest.raises(ValueError, match="needs null_cond"):
        guidance.classifier_free(model, 1.0)


@pytest.mark.parametrize("call", [
    lambda eps, x: solve_ode(eps, VP, x),
    lambda eps, x: guidance.classifier_free(eps, 0, 1.0, n_classes=2),
    lambda eps, x: deis_jax.likelihood.log_likelihood(as_model(eps, VP), x, prediction="x0"),
    lambda eps, x: deis_jax.inversion.encode(eps, VP, x, nfe=5),
    lambda eps, x: deis_jax.learned_grids.teacher_samples(eps, VP, x),
], ids=["solve_ode", "classifier_free", "log_likelihood", "encode", "teacher_samples"])
def test_every_entry_point_refuses_the_old_form_naming_as_model(call):
    eps = testing.ring_mixture().eps_fn(VP)
    with pytest.raises(TypeError, match="as_model"):
        call(eps, VP.prior_sample(jax.random.key(0), (4, 2)))


def test_a_model_compiled_ahead_of_time_takes_the_model_again():
    model = as_model(lambda p, x, t: p["w"] * x, VP, params={"w": jnp.float32(0.5), "n": 3})
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    run = lambda m, x: sample(m, x, solver="ddim", nfe=4)  # noqa: E731
    compiled = jax.jit(run).lower(model, x_T).compile()
    np.testing.assert_allclose(compiled(model, x_T), run(model, x_T), rtol=1e-6)
