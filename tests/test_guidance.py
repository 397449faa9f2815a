"""Guidance wrappers (deis_jax.guidance) on a class-conditional mixture whose classes are its
components: the conditional model, the unconditional one and the exact posterior classifier
are all known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import parameterization, sample, schedules, testing
from deis_jax.guidance import classifier_free, classifier_guidance

SCHED = schedules.vp_linear()
GMM = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
K = 4


def cond_model(x, t, label):
    return GMM.conditional_eps(x, t, label, SCHED)


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
    np.testing.assert_allclose(classifier_free(cond_model, label, 0.0, n_classes=K)(x, t), cond,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(classifier_free(cond_model, label, -1.0, n_classes=K)(x, t),
                               uncond, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(classifier_free(cond_model, label, 2.5, n_classes=K)(x, t),
                               3.5 * cond - 2.5 * uncond, rtol=1e-5, atol=1e-5)


def test_cfg_interval_in_t_and_log_snr():
    """Outside the interval the guided model is the conditional one."""
    x, t = _points()
    label = jnp.zeros(16, jnp.int32)
    cond = GMM.conditional_eps(x, t, label, SCHED)
    full = classifier_free(cond_model, label, 3.0, n_classes=K)(x, t)
    lam = SCHED.log_snr(t)
    for interval, kind, inside in [((0.3, 0.6), "t", (t >= 0.3) & (t <= 0.6)),
                                   ((-1.0, 1.0), "log_snr", (lam >= -1) & (lam <= 1))]:
        out = classifier_free(cond_model, label, 3.0, n_classes=K, interval=interval,
                              interval_in=kind, schedule=SCHED)(x, t)
        assert 0 < int(inside.sum()) < 16
        np.testing.assert_allclose(out, jnp.where(inside[:, None], full, cond), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_model(prediction):
    """grad log p_t(x) + grad log p_t(y|x) = grad log p_t(x|y): at scale 1 the guided
    unconditional model equals the exact component model, in every parameterisation."""
    x, t = _points()
    label = jnp.arange(16) % K
    eps_fn = GMM.eps_fn(SCHED)
    if prediction == "eps":
        model = eps_fn
    else:
        convert = {"x0": parameterization.x0_from_eps, "v": parameterization.v_from_eps}[
            prediction]

        def model(x, t):
            return convert(x, eps_fn(x, t), SCHED.alpha(t), SCHED.sigma(t))

    guided = classifier_guidance(model, classifier, label, 1.0, n_classes=K, schedule=SCHED,
                                 prediction=prediction)
    eps = parameterization.as_eps_fn(guided, SCHED, prediction)(x, t)
    np.testing.assert_allclose(eps, GMM.conditional_eps(x, t, label, SCHED), rtol=1e-4,
                               atol=1e-4)


def test_cfg_in_x0_space_equals_cfg_in_eps_space():
    """The weights sum to one, so guiding an x0-model's output is guiding eps."""
    x, t = _points()
    label = jnp.arange(16) % K

    def x0_model(x, t, label):
        return parameterization.x0_from_eps(x, cond_model(x, t, label), SCHED.alpha(t),
                                            SCHED.sigma(t))

    out = classifier_free(x0_model, label, 1.7, n_classes=K)(x, t)
    eps = parameterization.eps_from_x0(x, out, SCHED.alpha(t), SCHED.sigma(t))
    np.testing.assert_allclose(eps, classifier_free(cond_model, label, 1.7, n_classes=K)(x, t),
                               rtol=1e-4, atol=1e-4)


def test_vmap_over_eight_scales_traces_once():
    """One jitted vmap over 8 scales: the model is traced for one compilation only, new scales
    reuse it, and each row is the single-scale sample."""
    traces = [0]

    def model(params, x, t, label):
        traces[0] += 1  # at trace time only
        return params * GMM.conditional_eps(x, t, label, SCHED)

    x_T = SCHED.prior_sample(jax.random.key(1), (8, 2))

    def run(w):
        return sample(classifier_free(model, 2, w, n_classes=K), SCHED, x_T,
                      params=jnp.float32(1.0), solver="tab3", nfe=8)

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
    (dict(label=4), ValueError, r"label must lie in \[0, n_classes\) = \[0, 4\), got label=4"),
    (dict(label=jnp.array([0, -1])), ValueError, "got label=-1"),
    (dict(label=1.5), TypeError, "integer class index"),
    (dict(model_fn=lambda x, t: x), TypeError, "model_fn takes no label input"),
    (dict(interval=(0.5, 0.2)), ValueError, "low < high"),
    (dict(interval=(0.1, 0.5), interval_in="log_snr"), ValueError, "needs schedule="),
    (dict(interval_in="sigma"), ValueError, "unknown interval_in='sigma'"),
])
def test_cfg_bad_input(kwargs, error, match):
    args = dict(model_fn=cond_model, label=0, scale=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        classifier_free(args.pop("model_fn"), args.pop("label"), args.pop("scale"),
                        n_classes=K, **args)


def test_per_sample_labels_need_the_whole_batch():
    guided = classifier_free(cond_model, jnp.arange(8) % K, 1.0, n_classes=K)
    with pytest.raises(ValueError, match=r"label has shape \(8,\) .* a batch of 1"):
        guided(jnp.zeros((1, 2)), jnp.full((1,), 0.5))


def test_classifier_guidance_bad_input():
    with pytest.raises(ValueError, match="got label=7"):
        classifier_guidance(GMM.eps_fn(SCHED), classifier, 7, 1.0, n_classes=K, schedule=SCHED)
    with pytest.raises(ValueError, match="scale must be in"):
        classifier_guidance(GMM.eps_fn(SCHED), classifier, 0, jnp.nan, n_classes=K,
                            schedule=SCHED)
    with pytest.raises(ValueError, match="unknown prediction='edm'"):
        classifier_guidance(GMM.eps_fn(SCHED), classifier, 0, 1.0, n_classes=K,
                            schedule=SCHED, prediction="edm")
