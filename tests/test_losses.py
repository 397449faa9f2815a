"""Losses against exact answers.

* One Gaussian: the minimum of every loss has a closed form (the posterior variance of the
  noise), and the Monte-Carlo loss of the exact model matches it within its standard error.
* A Gaussian mixture: the exact eps is the minimiser, so the derivative of the loss along any
  perturbation of it vanishes in expectation (checked to a few standard errors), while the
  same derivative at a wrong model is many standard errors away from zero (the check has
  power), and a perturbed model has a larger loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, schedules, testing
from deis_jax.parameterization import edm_precondition
from deis_jax.training import losses

N_CHUNKS, CHUNK = 16, 8192


def _single_gaussian(mean, std, dim=2):
    return testing.GaussianMixture(jnp.ones((1,)), jnp.full((1, dim), mean),
                                   jnp.full((1, dim), std))


def _chunks(loss_fn, data):
    """Mean and standard error of a loss estimator ``loss_fn(x0, key)`` over chunks of data."""
    fn = jax.jit(loss_fn)
    vals = np.array([float(fn(data[i * CHUNK:(i + 1) * CHUNK], jax.random.key(i)))
                     for i in range(N_CHUNKS)])
    return vals.mean(), vals.std(ddof=1) / np.sqrt(N_CHUNKS)


def _posterior_noise_var(schedule, t, std):
    a2, s2 = schedule.alpha(t) ** 2, schedule.sigma(t) ** 2
    return a2 * std**2 / (a2 * std**2 + s2)


def _gl(schedule, fn, n=400):
    """Gauss-Legendre average of ``fn(t)`` over ``U[t_min, t_max]`` (float64 numpy)."""
    x, w = np.polynomial.legendre.leggauss(n)
    lo, hi = schedule.t_min, schedule.t_max
    t = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
    return 0.5 * float(np.sum(w * np.asarray(fn(jnp.asarray(t)), np.float64)))


@pytest.mark.parametrize("weighting", ["simple", "likelihood"])
@pytest.mark.parametrize("make_schedule", [schedules.vp_linear, schedules.ve])
def test_dsm_minimum_closed_form(weighting, make_schedule):
    sched = make_schedule()
    std = 0.7
    gmm = _single_gaussian(0.3, std)
    data = np.asarray(gmm.sample(jax.random.key(99), N_CHUNKS * CHUNK)[0])

    def weight(t):
        return 1.0 if weighting == "simple" else sched.g2(t) / sched.sigma(t) ** 2

    expected = _gl(sched, lambda t: weight(t) * _posterior_noise_var(sched, t, std), n=2000)
    mean, se = _chunks(lambda x0, k: losses.dsm_loss(gmm.eps_fn(sched), sched, x0, k,
                                                     weighting=weighting), data)
    assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, se, expected)


@pytest.mark.parametrize("data_std", [0.5, 1.0])
def test_edm_loss_minimum_closed_form(data_std):
    # Exact denoiser of N(mu, s^2): per-dim error s^2 rho^2/(s^2+rho^2); with s = sigma_data
    # the EDM weighting makes the integrand exactly 1.
    sched = schedules.edm()
    gmm = _single_gaussian(-0.2, data_std)
    data = np.asarray(gmm.sample(jax.random.key(5), N_CHUNKS * CHUNK)[0])
    x0_fn = as_model(gmm.eps_fn(sched), sched).x0
    z, w = np.polynomial.hermite_e.hermegauss(80)
    rho = np.exp(-1.2 + 1.2 * z)
    lam = (rho**2 + 0.25) / (rho * 0.5) ** 2
    expected = float(np.sum(w * lam * data_std**2 * rho**2 / (data_std**2 + rho**2))
                     / np.sqrt(2 * np.pi))
    if data_std == 0.5:
        np.testing.assert_allclose(expected, 1.0, rtol=1e-12)
    mean, se = _chunks(lambda x0, k: losses.edm_loss(x0_fn, x0, k), data)
    assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, se, expected)


def test_ddpm_loss_minimum_closed_form():
    betas = np.linspace(1e-4, 0.02, 200)
    sched = schedules.vp_discrete(betas=betas)
    std = 0.6
    gmm = _single_gaussian(0.5, std)
    data = np.asarray(gmm.sample(jax.random.key(3), N_CHUNKS * CHUNK)[0])
    n_train = betas.shape[0]

    def model(x, n):  # entry n of the table sits at t = (n + 1) / N
        return gmm.eps(x, (n + 1.0) / n_train, sched)

    abar = np.cumprod(1 - betas)
    expected = float(np.mean(abar * std**2 / (abar * std**2 + 1 - abar)))
    mean, se = _chunks(lambda x0, k: losses.ddpm_loss(model, sched, x0, k), data)
    assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, se, expected)


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_minimum_closed_form(time_sampling, shift):
    """For data N(mu, s^2) the exact velocity leaves the per-dimension error
    Var[alpha' x0 + sigma' eps | x_t] = (alpha' sigma - sigma' alpha)^2 s^2 / (alpha^2 s^2 +
    sigma^2), averaged over the time distribution by quadrature."""
    sched = schedules.flow(shift)
    std = 0.7
    gmm = _single_gaussian(0.3, std)
    data = np.asarray(gmm.sample(jax.random.key(4), N_CHUNKS * CHUNK)[0])

    def floor(t):
        a, s, da, ds = sched.alpha(t), sched.sigma(t), sched.d_alpha(t), sched.d_sigma(t)
        return (da * s - ds * a) ** 2 * std**2 / (a**2 * std**2 + s**2)

    if time_sampling == "uniform":
        expected = _gl(sched, floor, n=200)
    else:  # t = t_min + (t_max - t_min) sigmoid(z), z ~ N(0, 1)
        z, w = np.polynomial.hermite_e.hermegauss(120)
        t = sched.t_min + (sched.t_max - sched.t_min) / (1 + np.exp(-z))
        expected = float(np.sum(w * np.asarray(floor(jnp.asarray(t)), np.float64))
                         / np.sqrt(2 * np.pi))
    mean, se = _chunks(lambda x0, k: losses.flow_matching_loss(
        gmm.velocity_fn(sched), sched, x0, k, time_sampling=time_sampling), data)
    assert abs(mean - expected) < 4 * se + 1e-3 * expected, (mean, se, expected)


def test_flow_matching_is_dsm_with_the_native_velocity_weighting(x64):
    """Uniform times: the velocity MSE equals the eps-MSE weighted by (D / alpha)^2."""
    sched = schedules.flow(3.0)
    gmm = testing.gaussian_mixture(dim=2, n_modes=3, std=0.3, seed=1)
    x0 = gmm.sample(jax.random.key(0), 512)[0]
    model = lambda x, t: jnp.tanh(x) * t[:, None] - x  # noqa: E731 -- any velocity model
    key = jax.random.key(5)
    fm = losses.flow_matching_loss(model, sched, x0, key)
    dsm = losses.dsm_loss(model, sched, x0, key, prediction="velocity", weighting="native")
    np.testing.assert_allclose(fm, dsm, rtol=1e-9)


def test_logit_normal_times():
    """``logit((t - t_min)/(t_max - t_min))`` is N(m, s): a KS test accepts the right law and
    rejects the standard normal."""
    from scipy import stats

    t = losses.sample_times(jax.random.key(0), 20_000, jnp.float32, 0.01, 0.9, "logit_normal",
                            logit_mean=0.5, logit_std=0.8)
    u = (np.asarray(t, np.float64) - 0.01) / 0.89
    z = np.log(u / (1 - u))
    assert np.all((np.asarray(t) >= 0.01) & (np.asarray(t) <= 0.9))
    assert stats.kstest(z, stats.norm(0.5, 0.8).cdf).pvalue > 1e-3
    assert stats.kstest(z, stats.norm(0.0, 1.0).cdf).pvalue < 1e-6


@pytest.mark.parametrize("call, match", [
    (lambda m, s, x, k: losses.flow_matching_loss(m, s, x, k, time_sampling="lognormal"),
     r"unknown time_sampling='lognormal'; valid choices: \['logit_normal', 'uniform'\]"),
    (lambda m, s, x, k: losses.flow_matching_loss(m, s, x, k, time_sampling="logit_normal",
                                                  logit_std=0.0),
     r"logit_std must be in \(0.0, inf\), got logit_std=0.0"),
    (lambda m, s, x, k: losses.make_loss("flow_matching", s, prediction="eps"),
     r"prediction='eps' applies to loss='dsm' only; loss='flow_matching' .*'velocity'"),
    (lambda m, s, x, k: losses.make_loss("dsm", s, time_sampling="logit_normal"),
     r"time_sampling='logit_normal' applies to loss='flow_matching' only"),
])
def test_flow_matching_bad_input(call, match):
    sched = schedules.flow()
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=match):
        call(lambda x, t: x, sched, x0, jax.random.key(0))


def _perturbation(x, t):
    t = jnp.reshape(t, t.shape + (1,) * (x.ndim - 1))
    return jnp.tanh(x) * (1.0 + t) + 0.3


def _loss_factories():
    """(name, loss(theta, key, x0, exact)) for each loss family; exact=False uses a wrong model."""
    vp = schedules.vp_linear()
    edm = schedules.edm()
    flow = schedules.flow(3.0)
    disc = schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 100))
    gmm = testing.gaussian_mixture(dim=2, n_modes=3, std=0.3, seed=1)
    wrong = testing.gaussian_mixture(dim=2, n_modes=3, std=0.3, seed=2)

    models = {exact: as_model((gmm if exact else wrong).eps_fn(vp), vp)
              for exact in (True, False)}
    edm_models = {exact: as_model((gmm if exact else wrong).eps_fn(edm), edm)
                  for exact in (True, False)}

    def dsm(weighting, prediction):
        def f(theta, key, x0, exact):
            base = models[exact].eps if prediction == "eps" else models[exact].x0
            model = lambda x, t: base(x, t) + theta * _perturbation(x, t)  # noqa: E731
            return losses.dsm_loss(model, vp, x0, key, prediction=prediction,
                                   weighting=weighting)
        return f

    def flow_matching(time_sampling):
        def f(theta, key, x0, exact):
            base = (gmm if exact else wrong).velocity_fn(flow)
            model = lambda x, t: base(x, t) + theta * _perturbation(x, t)  # noqa: E731
            return losses.flow_matching_loss(model, flow, x0, key, time_sampling=time_sampling)
        return f

    def edm_f(theta, key, x0, exact):
        x0_fn = edm_models[exact].x0
        return losses.edm_loss(lambda y, r: x0_fn(y, r) + theta * _perturbation(y, r), x0, key)

    def ddpm_f(theta, key, x0, exact):
        g = gmm if exact else wrong
        def model(x, n):
            return g.eps(x, (n + 1.0) / 100, disc) + theta * _perturbation(x, n)
        return losses.ddpm_loss(model, disc, x0, key)

    return gmm, {
        "dsm_simple": dsm("simple", "eps"),
        "dsm_likelihood": dsm("likelihood", "eps"),
        "dsm_x0_native": dsm("native", "x0"),
        "edm": edm_f,
        "ddpm": ddpm_f,
        "flow_matching_uniform": flow_matching("uniform"),
        "flow_matching_logit_normal": flow_matching("logit_normal"),
    }


_GMM, _LOSSES = _loss_factories()


@pytest.mark.parametrize("name", list(_LOSSES))
def test_exact_model_is_stationary_and_minimal(name):
    loss = _LOSSES[name]
    grad = jax.jit(jax.grad(loss), static_argnums=3)
    data = np.asarray(_GMM.sample(jax.random.key(7), N_CHUNKS * CHUNK)[0])

    def stats(exact):
        vals = np.array([float(grad(0.0, jax.random.key(i), data[i * CHUNK:(i + 1) * CHUNK],
                                    exact)) for i in range(N_CHUNKS)])
        return vals.mean(), vals.std(ddof=1) / np.sqrt(N_CHUNKS)

    g_exact, se_exact = stats(True)
    g_wrong, se_wrong = stats(False)
    assert abs(g_exact) < 4 * se_exact, (g_exact, se_exact)
    assert abs(g_wrong) > 8 * se_wrong, (g_wrong, se_wrong)  # the check can fail
    # Common random numbers: the perturbed model is worse by theta^2 E[w |h|^2]/d > 0.
    key, x0 = jax.random.key(123), data[:CHUNK]
    assert float(loss(0.2, key, x0, True)) > float(loss(0.0, key, x0, True))
    assert float(loss(-0.2, key, x0, True)) > float(loss(0.0, key, x0, True))


def test_make_loss_dispatch_and_errors():
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(dim=2, n_modes=2, seed=0)
    x0 = gmm.sample(jax.random.key(0), 64)[0]
    key = jax.random.key(1)
    direct = losses.dsm_loss(gmm.eps_fn(sched), sched, x0, key, weighting="likelihood")
    made = losses.make_loss("dsm", sched, weighting="likelihood")(gmm.eps_fn(sched), x0, key)
    np.testing.assert_allclose(made, direct, rtol=1e-6)
    net = lambda x, c: x * c[:, None]  # noqa: E731
    np.testing.assert_allclose(
        losses.make_loss("edm", schedules.edm())(net, x0, key),
        losses.edm_loss(edm_precondition(net), x0, key), rtol=1e-6)
    assert jnp.isfinite(jax.jit(losses.make_loss("dsm", sched), static_argnums=0)(
        gmm.eps_fn(sched), x0, key))
    with pytest.raises(ValueError, match="weighting"):
        losses.make_loss("dsm", sched, weighting="snr")
    with pytest.raises(ValueError, match="loss"):
        losses.make_loss("l1", sched)
    with pytest.raises(ValueError, match="vp_discrete"):
        losses.ddpm_loss(gmm.eps_fn(sched), sched, x0, key)
