"""Guidance wrappers (deis_jax.guidance) on a class-conditional mixture whose classes are its
components: the conditional model, the unconditional one and the exact posterior classifier
are all known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, parameterization, sample, schedules, testing
from deis_jax.guidance import classifier_free, classifier_guidance

SCHED = schedules.vp_linear()
GMM = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
K = 4


def cond_model(x, t, label):
    return GMM.conditional_eps(x, t, label, SCHED)


def cfg(network, label, scale, **kwargs):
    """Classifier-free guidance of ``network(x, t, label)`` at ``label`` (the Model's cond)
    with the null label ``K`` (``null_cond``)."""
    label = jnp.asarray(label)
    return classifier_free(as_model(network, SCHED, cond=label), scale,
                           null_cond=jnp.full_like(label, K), **kwargs)


def classifier(params, x, t):
    del params
    return GMM.component_logits(x, t, SCHED)


def _points(n=16):
    x = jax.random.normal(jax.random.key(0), (n, 2))
    t = jnp.linspace(0.05, 0.9, n)
    return x, t


def test_cfg_scales_are_the_conditional_and_unconditional_models():
    x, t = _points()
    label = jnp.arange(16) % K
    cond = GMM.conditional_eps(x, t, label, SCHED)
    uncond = GMM.eps(x, t, SCHED)
    np.testing.assert_allclose(cfg(cond_model, label, 0.0).output(x, t), cond,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cfg(cond_model, label, -1.0).output(x, t),
                               uncond, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cfg(cond_model, label, 2.5).output(x, t),
                               3.5 * cond - 2.5 * uncond, rtol=1e-5, atol=1e-5)


def test_cfg_cond_argument_and_shared_null_cond():
    """``cond=`` overrides the model's own condition; a null condition with leading axis 1
    (or a scalar) is shared by the batch."""
    x, t = _points()
    label = jnp.arange(16) % K
    want = cfg(cond_model, label, 2.5).output(x, t)
    other = as_model(cond_model, SCHED, cond=jnp.zeros(16, jnp.int32))
    for null in (jnp.full((1,), K, label.dtype), jnp.asarray(K, label.dtype)):
        got = classifier_free(other, 2.5, cond=label, null_cond=null).output(x, t)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cfg_interval_in_t_and_log_snr():
    """Outside the interval the guided model is the conditional one."""
    x, t = _points()
    label = jnp.zeros(16, jnp.int32)
    cond = GMM.conditional_eps(x, t, label, SCHED)
    full = cfg(cond_model, label, 3.0).output(x, t)
    lam = SCHED.log_snr(t)
    for interval, kind, inside in [((0.3, 0.6), "t", (t >= 0.3) & (t <= 0.6)),
                                   ((-1.0, 1.0), "log_snr", (lam >= -1) & (lam <= 1))]:
        # interval_in="log_snr" uses the model's own schedule
        out = cfg(cond_model, label, 3.0, interval=interval, interval_in=kind).output(x, t)
        assert 0 < int(inside.sum()) < 16
        np.testing.assert_allclose(out, jnp.where(inside[:, None], full, cond), rtol=1e-6,
                                   atol=1e-6)


def test_cfg_rescale():
    """``rescale=0`` is plain CFG exactly; ``rescale=1`` gives the guided output the
    conditional output's per-sample standard deviation; in between, the linear mix."""
    x, t = _points()
    label = jnp.arange(16) % K
    cond = GMM.conditional_eps(x, t, label, SCHED)
    plain = cfg(cond_model, label, 2.0).output(x, t)
    np.testing.assert_array_equal(cfg(cond_model, label, 2.0, rescale=0.0).output(x, t), plain)
    full = cfg(cond_model, label, 2.0, rescale=1.0).output(x, t)
    np.testing.assert_allclose(full, plain * jnp.std(cond, axis=1, keepdims=True)
                               / jnp.std(plain, axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    half = cfg(cond_model, label, 2.0, rescale=0.25).output(x, t)
    np.testing.assert_allclose(half, 0.25 * full + 0.75 * plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_model(prediction):
    """grad log p_t(x) + grad log p_t(y|x) = grad log p_t(x|y): at scale 1 the guided
    unconditional model equals the exact component model, in every parameterisation."""
    x, t = _points()
    label = jnp.arange(16) % K
    eps_fn = GMM.eps_fn(SCHED)
    if prediction == "eps":
        network = eps_fn
    else:
        convert = {"x0": parameterization.x0_from_eps, "v": parameterization.v_from_eps}[
            prediction]

        def network(x, t):
            return convert(x, eps_fn(x, t), SCHED.alpha(t), SCHED.sigma(t))

    model = as_model(network, SCHED, prediction=prediction)
    guided = classifier_guidance(model, classifier, 1.0, label=label)
    eps = guided.eps(x, t)
    np.testing.assert_allclose(eps, GMM.conditional_eps(x, t, label, SCHED), rtol=1e-4,
                               atol=1e-4)


def test_cfg_in_x0_space_equals_cfg_in_eps_space():
    """The weights sum to one, so guiding an x0-model's output is guiding eps."""
    x, t = _points()
    label = jnp.arange(16) % K

    def x0_model(x, t, label):
        return parameterization.x0_from_eps(x, cond_model(x, t, label), SCHED.alpha(t),
                                            SCHED.sigma(t))

    guided = classifier_free(as_model(x0_model, SCHED, prediction="x0", cond=label), 1.7,
                             null_cond=jnp.full_like(label, K))
    assert guided.prediction == "x0"
    out = guided.output(x, t)
    eps = parameterization.eps_from_x0(x, out, SCHED.alpha(t), SCHED.sigma(t))
    np.testing.assert_allclose(eps, cfg(cond_model, label, 1.7).output(x, t),
                               rtol=1e-4, atol=1e-4)


def test_vmap_over_eight_scales_traces_once():
    """One jitted vmap over 8 scales: the model is traced for one compilation only, new scales
    reuse it, and each row is the single-scale sample."""
    traces = [0]

    def network(params, x, t, label):
        traces[0] += 1  # at trace time only
        return params * GMM.conditional_eps(x, t, label, SCHED)

    x_T = SCHED.prior_sample(jax.random.key(1), (8, 2))
    label = jnp.asarray(2)
    model = as_model(network, SCHED, params=jnp.float32(1.0), cond=label)

    def run(w):
        return sample(classifier_free(model, w, null_cond=jnp.full_like(label, K)), x_T,
                      solver="tab3", nfe=8)

    batched = jax.jit(jax.vmap(run))
    ws = jnp.linspace(0.0, 7.0, 8)
    out = batched(ws)
    after = traces[0]
    out2 = batched(ws + 0.5)
    assert traces[0] == after > 0
    assert out.shape == (8, 8, 2) and not np.allclose(out, out2)
    np.testing.assert_allclose(out[3], run(ws[3]), rtol=1e-4, atol=1e-4)
    after = traces[0]
    np.testing.assert_allclose(out[4], run(ws[4]), rtol=1e-4, atol=1e-4)
    assert traces[0] == after  # eagerly too: a new scale is data of the cached sampler


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scale=jnp.inf), ValueError, "scale must be in"),
    (dict(scale=float("nan")), ValueError, "scale must be in"),
    (dict(rescale=1.5), ValueError, r"rescale must be in \[0.0, 1.0\]"),
    (dict(rescale=-0.1), ValueError, r"rescale must be in \[0.0, 1.0\]"),
    (dict(rescale=float("nan")), ValueError, "rescale must be in"),
    (dict(null_cond=None), ValueError, "needs null_cond="),
    (dict(null_cond=(jnp.array(K),)), ValueError, "null_cond must have cond's structure"),
    (dict(null_cond={"label": jnp.array(K)}), ValueError,
     "null_cond must have cond's structure"),
    (dict(null_cond=jnp.full((1, 2), K)), ValueError, r"null_cond must match cond.*\(1, 2\)"),
    (dict(cond=jnp.zeros((2, 3), jnp.int32), null_cond=jnp.zeros((2, 4), jnp.int32)),
     ValueError, r"null_cond must match cond.*\(2, 3\).*\(2, 4\)"),
    (dict(null_cond=jnp.array(4.0)), ValueError, "null_cond must match cond.*float32"),
    (dict(model=as_model(cond_model, SCHED)), ValueError, "needs a condition: pass cond="),
    (dict(model=cond_model), TypeError, "model must be a deis_jax.Model"),
    (dict(interval=(0.5, 0.2)), ValueError, "low < high"),
    (dict(interval=(0.1,)), TypeError, "interval must be a pair"),
    (dict(interval_in="sigma"), ValueError, "unknown interval_in='sigma'"),
])
def test_cfg_bad_input(kwargs, error, match):
    args = dict(model=as_model(cond_model, SCHED, cond=jnp.array(0)), scale=1.0,
                null_cond=jnp.array(K))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        classifier_free(args.pop("model"), args.pop("scale"), **args)


def test_cfg_of_a_network_without_a_condition_input_fails_clearly():
    """The base network must take the condition as its last argument: the guided model's
    first (abstract) call names the failure before anything is traced."""
    guided = cfg(lambda x, t: x, 0, 1.0)
    with pytest.raises(ValueError, match=r"the network failed.*takes 2 positional arguments"):
        sample(guided, jnp.zeros((2, 2)), solver="ddim", nfe=4)


def test_per_sample_labels_need_the_whole_batch():
    guided = cfg(cond_model, jnp.arange(8) % K, 1.0)
    with pytest.raises(ValueError, match=r"cond has a leaf of shape \(8,\).*batch of x \(1\)"):
        guided.output(jnp.zeros((1, 2)), jnp.full((1,), 0.5))
    with pytest.raises(ValueError, match=r"cond has a leaf of shape \(8,\).*\(1\)"):
        sample(guided, jnp.zeros((1, 2)), solver="ddim", nfe=4)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scale=jnp.nan), ValueError, "scale must be in"),
    (dict(label=1.5), TypeError, "integer class index"),
    (dict(label=jnp.zeros((2, 2), jnp.int32)), TypeError, r"integer class index.*\(2, 2\)"),
    (dict(classifier_fn=None), TypeError, "classifier_fn must be callable"),
    (dict(model=GMM.eps_fn(SCHED)), TypeError, "model must be a deis_jax.Model"),
])
def test_classifier_guidance_bad_input(kwargs, error, match):
    args = dict(model=as_model(GMM.eps_fn(SCHED), SCHED), classifier_fn=classifier, scale=1.0,
                label=0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        classifier_guidance(args.pop("model"), args.pop("classifier_fn"), args.pop("scale"),
                            **args)
