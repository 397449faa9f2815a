"""Predictor-corrector and EDM churn under VE (sigma_max = 50): finite, correctly distributed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from deis_jax import as_model, sample, schedules, testing, timesteps
from deis_jax.solvers.edm_sde import edm_sde
from deis_jax.solvers.pc import pc
from test_stochastic import GMM, check_mixture_samples

BATCH = 4096
VE = schedules.ve(sigma_max=50.0)
MODEL = as_model(GMM.eps_fn(VE), VE)  # built once


def _ve():
    return VE, VE.prior_sample(jax.random.key(0), (BATCH, 2))


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama", "ancestral"])
def test_pc_with_annealed_langevin(predictor):
    sched, x_T = _ve()
    solver = pc(predictor, "ald", snr=0.16)
    x = sample(MODEL, x_T, solver=solver, ts=timesteps(sched, 300, "log_snr"),
               key=jax.random.key(1))
    check_mixture_samples(GMM, sched, x)


def test_edm_churn():
    sched, x_T = _ve()
    x = sample(MODEL, x_T, solver=edm_sde(S_churn=40.0), nfe=199, grid="edm",
               key=jax.random.key(1))
    check_mixture_samples(GMM, sched, x)


def test_langevin_corrector_per_sample_step():
    """Score-SDE's corrector, step ``2 (r |z| / |score|)^2`` per sample, in 16-d.

    The step depends on the sample through ``|score(x)|``, which makes the corrector's
    stationary law wider than ``p_t`` by a relative amount of order ``1/d`` (negligible for
    images, ~25% in variance here; very large in 2-d, hence the ALD tests above). Mode
    weights and means stay exact; variances are checked against that known inflation.
    """
    d = 16
    rng = np.random.default_rng(0)
    means = 3.0 * rng.standard_normal((3, d))
    gmm = testing.GaussianMixture(GMM.weights, jnp.asarray(means, jnp.float32),
                                  jnp.full((3, d), 0.3))
    sched = schedules.ve(sigma_max=50.0)
    x_T = sched.prior_sample(jax.random.key(0), (BATCH, d))
    x = sample(as_model(gmm.eps_fn(sched), sched), x_T, solver=pc(snr=0.16),
               ts=timesteps(sched, 200, "log_snr"), key=jax.random.key(1))
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    comp = np.asarray(gmm.component(jnp.asarray(x, jnp.float32)))
    counts = np.bincount(comp, minlength=3)
    w = np.asarray(gmm.weights, np.float64)
    assert stats.chisquare(counts, w / w.sum() * BATCH).pvalue > 0.01
    for j in range(3):
        xj = x[comp == j]
        var = 0.09 + float(sched.sigma(sched.t_min)) ** 2
        z = (xj.mean(0) - means[j]) / np.sqrt(xj.var(0, ddof=1) / len(xj))
        assert np.all(np.abs(z) < 3.5), z  # 16 coordinates per mode
        ratio = xj.var(0, ddof=1).mean() / var
        assert 1.0 < ratio < 1.4, ratio


@pytest.mark.parametrize("corrector, n_corr, per_step", [("langevin", 2, 3), ("ald", 1, 2),
                                                         ("none", 3, 1)])
def test_pc_nfe(corrector, n_corr, per_step):
    sched, _ = _ve()
    calls = [0]
    eps_fn = GMM.eps_fn(sched)

    def bump():
        calls[0] += 1

    def model(x, t):
        jax.debug.callback(bump)
        return eps_fn(x, t)

    solver = pc("reverse_diffusion", corrector, n_corrector_steps=n_corr)
    out = sample(as_model(model, sched), jnp.ones((4, 2)), solver=solver, nfe=4 * per_step,
                 key=jax.random.key(1), full_output=True)
    jax.effects_barrier()
    assert out.nfe == calls[0] == 4 * per_step


def test_traced_snr_sweep_compiles_once():
    sched, x_T = _ve()
    traces = [0]
    eps_fn = GMM.eps_fn(sched)

    def model(x, t):
        traces[0] += 1
        return eps_fn(x, t)

    ts = timesteps(sched, 5, "log_snr")
    counted = as_model(model, sched)
    sweep = jax.jit(jax.vmap(lambda snr: sample(counted, x_T[:8], solver=pc(snr=snr), ts=ts,
                                                key=jax.random.key(1))))
    out = sweep(jnp.array([0.05, 0.16]))
    n = traces[0]
    assert n > 0
    sweep(jnp.array([0.1, 0.2]))
    assert traces[0] == n
    ref = sample(MODEL, x_T[:8], solver=pc(snr=0.16), ts=ts, key=jax.random.key(1))
    np.testing.assert_allclose(out[1], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(snr=0.0), "snr"),
    (dict(snr=-0.1), "snr"),
    (dict(n_corrector_steps=-1), "n_corrector_steps"),
    (dict(predictor="heun"), "predictor"),
    (dict(corrector="hmc"), "corrector"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pc(**kwargs)
