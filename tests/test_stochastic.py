"""Stochastic samplers: exact distributions on Gaussian mixtures, eta = 0 limits, noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from deis_jax import as_model, get_solver, sample, schedules, solver_names, testing, timesteps
from deis_jax.solvers.edm_sde import edm_sde
from deis_jax.solvers.noise import per_sample_normal
from deis_jax.solvers.pc import pc
from deis_jax.solvers.sde import euler_maruyama, sde_ei1, sde_ei2
from deis_jax.solvers.stochastic_ddim import stochastic_ddim

STOCHASTIC = ("ddpm", "ve_ancestral", "ddim_eta", "euler_maruyama", "sde_ei1", "sde_ei2", "pc",
              "edm_sde")

# Well-separated modes (misclassification ~1e-6), unequal weights, anisotropic covariances.
GMM = testing.GaussianMixture(
    jnp.array([0.2, 0.3, 0.5]),
    jnp.array([[-2.5, 0.0], [2.5, 0.5], [0.0, 3.0]]),
    jnp.array([[0.3, 0.2], [0.25, 0.35], [0.4, 0.3]]),
)
VP = schedules.vp_linear()
MODEL = as_model(GMM.eps_fn(VP), VP)  # the mixture under VP-linear, built once


def check_mixture_samples(gmm, schedule, x, n_se=3.0, p_min=0.01):
    """Assert that ``x`` is distributed as the model's marginal at ``schedule.t_min``:
    components ``N(alpha mu_k, alpha^2 s_k^2 + sigma^2)`` with the mixture weights.

    Mode weights: chi-square test at level ``p_min``. Per mode: means, variances and the
    covariance within ``n_se`` standard errors (Gaussian sampling theory).
    """
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    t = schedule.t_min
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    comp = np.asarray(gmm.component(jnp.asarray(x, gmm.means.dtype)))
    k = gmm.means.shape[0]
    counts = np.bincount(comp, minlength=k)
    weights = np.asarray(gmm.weights, np.float64)
    p = stats.chisquare(counts, weights / weights.sum() * len(x)).pvalue
    assert p > p_min, f"mode weights {counts / len(x)} vs {weights} (chi-square p={p:.2g})"
    for j in range(k):
        xj, n = x[comp == j], counts[j]
        mean = alpha * np.asarray(gmm.means[j], np.float64)
        var = alpha**2 * np.asarray(gmm.stds[j], np.float64) ** 2 + sigma**2
        z_mean = (xj.mean(0) - mean) / np.sqrt(var / n)
        z_var = (xj.var(0, ddof=1) - var) / (var * np.sqrt(2.0 / (n - 1)))
        z_cov = np.cov(xj.T)[0, 1] / np.sqrt(var[0] * var[1] / n)
        for name, z in (("mean", z_mean), ("variance", z_var), ("covariance", z_cov)):
            assert np.all(np.abs(z) < n_se), f"mode {j}: {name} off by {z} standard errors"


def _solver(name):
    # The per-sample Langevin step of Score-SDE is biased in 2-d (see test_pc.py): use ALD.
    return pc(corrector="ald") if name == "pc" else get_solver(name)


def test_every_stochastic_solver_has_a_distribution_entry():
    """STOCHASTIC drives the distribution test below: a stochastic solver registered without
    an entry fails here."""
    assert sorted(STOCHASTIC) == sorted(n for n in solver_names() if get_solver(n).stochastic)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_large_nfe_samples_the_mixture(name):
    sched = VP
    solver = _solver(name)
    x_T = sched.prior_sample(jax.random.key(0), (20_000, 2))
    ts = timesteps(sched, 400, "quadratic")
    x = sample(MODEL, x_T, solver=solver, ts=ts, key=jax.random.key(1))
    check_mixture_samples(GMM, sched, x)


def test_energy_distance_falls_with_nfe():
    exact, _ = GMM.sample(jax.random.key(7), 1000)
    x_T = VP.prior_sample(jax.random.key(8), (1000, 2))
    dist = [float(testing.energy_distance(
        sample(MODEL, x_T, solver="sde_ei1", nfe=n, key=jax.random.key(9)),
        exact)) for n in (5, 10, 100)]
    assert dist[0] > dist[1] > dist[2]
    # Two exact samples of this size: energy distance ~ +-4e-3 (it has zero mean).
    assert dist[2] < 0.01 < dist[1]


# ------------------------------------------------------------------ eta = 0 limits


@pytest.mark.parametrize("stochastic, deterministic, sched_name", [
    (stochastic_ddim(0.0), "ddim", "vp_linear"),
    (euler_maruyama(0.0), "euler", "vp_linear"),
    (sde_ei1(0.0), "ddim", "ve"),
])
def test_eta_zero_is_the_deterministic_solver(x64, stochastic, deterministic, sched_name):
    sched = getattr(schedules, sched_name)()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = sched.prior_sample(jax.random.key(0), (64, 2))
    ts = timesteps(sched, 25, "log_snr")
    model = as_model(gmm.eps_fn(sched), sched)
    x = sample(model, x_T, solver=stochastic, ts=ts, key=jax.random.key(1))
    ref = sample(model, x_T, solver=deterministic, ts=ts)
    assert x.dtype == jnp.float64
    np.testing.assert_allclose(x, ref, rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(stochastic.table(sched, ts).noise))) == 0.0


def test_ve_ancestral_is_ddim_eta_one(x64):
    """Score-SDE's VE ancestral step and DDIM(eta=1) are the same Gaussian posterior draw."""
    sched = schedules.ve()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = sched.prior_sample(jax.random.key(0), (64, 2))
    kw = dict(ts=timesteps(sched, 25, "log_snr"), key=jax.random.key(1))
    model = as_model(gmm.eps_fn(sched), sched)
    x = sample(model, x_T, solver="ve_ancestral", **kw)
    y = sample(model, x_T, solver="ddim_eta", **kw)
    np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-10)


def test_sde_ei2_at_eta_zero_is_second_order(x64):
    """At eta = 0 the data-prediction multistep step is a deterministic 2nd-order ODE solver
    (both forms of the second-order correction)."""
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.5, seed=1)
    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    steps = np.array([20, 40, 80])
    model = as_model(gmm.eps_fn(sched), sched)
    for correction in ("exact", "midpoint"):
        solver = sde_ei2(0.0, correction)
        errs = [float(testing.rmse(sample(model, x_T, solver=solver,
                                          ts=timesteps(sched, int(n), "log_snr"),
                                          key=jax.random.key(1)), gt)) for n in steps]
        slope = stats.linregress(np.log(steps), np.log(errs)).slope
        assert -2.3 < slope < -1.7, (correction, errs, slope)


# ------------------------------------------------------------------ traced hyper-parameters


@pytest.mark.parametrize("factory", [stochastic_ddim, sde_ei2])
def test_vmap_over_eta_compiles_once(factory):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    traces = [0]
    eps_fn = gmm.eps_fn(sched)

    def model(x, t):
        traces[0] += 1  # runs at trace time only
        return eps_fn(x, t)

    x_T = sched.prior_sample(jax.random.key(0), (16, 2))
    ts = timesteps(sched, 10, "log_snr")
    counted = as_model(model, sched)
    sweep = jax.jit(jax.vmap(lambda eta: sample(counted, x_T, solver=factory(eta), ts=ts,
                                                key=jax.random.key(1))))
    out = sweep(jnp.array([0.0, 0.3, 1.0]))
    n_traces = traces[0]
    assert n_traces > 0
    out2 = sweep(jnp.array([0.2, 0.5, 0.9]))
    assert traces[0] == n_traces  # new eta values: no retrace
    plain = as_model(eps_fn, sched)
    for eta, x in ((0.3, out[1]), (0.9, out2[2])):
        ref = sample(plain, x_T, solver=factory(eta), ts=ts, key=jax.random.key(1))
        np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ noise


# One solver per noise code path: the noisy linear step, PC (predictor + Langevin), EDM churn.
@pytest.mark.parametrize("name", ["ddpm", "pc", "edm_sde"])
def test_same_seed_same_position_same_sample(name):
    sched = schedules.ve()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    solver = get_solver(name)
    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    nfe = solver.nfe_for_steps(8)
    model = as_model(gmm.eps_fn(sched), sched)
    x32 = sample(model, x_T, solver=solver, nfe=nfe, key=jax.random.key(5))
    x8 = sample(model, x_T[:8], solver=solver, nfe=nfe, key=jax.random.key(5))
    np.testing.assert_allclose(x8, x32[:8], rtol=1e-5, atol=1e-5)
    other = sample(model, x_T[:8], solver=solver, nfe=nfe, key=jax.random.key(6))
    assert float(jnp.min(jnp.abs(other - x8))) > 0  # the key matters


def test_per_sample_normal_is_independent_of_batch_size():
    z = per_sample_normal(jax.random.key(3), (1000, 4))
    np.testing.assert_array_equal(per_sample_normal(jax.random.key(3), (10, 4)), z[:10])
    # and it is standard normal
    assert abs(float(z.mean())) < 4 / np.sqrt(z.size)
    assert abs(float(z.var()) - 1) < 4 * np.sqrt(2 / z.size)


def test_edm_nfe_is_2n_minus_1():
    sched = schedules.ve()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    calls = [0]
    eps_fn = gmm.eps_fn(sched)

    def bump():
        calls[0] += 1

    def model(x, t):
        jax.debug.callback(bump)
        return eps_fn(x, t)

    x_T = sched.prior_sample(jax.random.key(0), (8, 2))
    solver = edm_sde(S_churn=5.0)
    counted = as_model(model, sched)
    for n_steps in (1, 6):
        calls[0] = 0
        out = sample(counted, x_T, solver=solver, nfe=solver.nfe_for_steps(n_steps),
                     key=jax.random.key(1), full_output=True)
        jax.effects_barrier()
        assert out.nfe == calls[0] == 2 * n_steps - 1


def test_edm_without_churn_is_heun_in_rho(x64):
    """S_churn = 0: EDM's deterministic sampler, i.e. Heun on dy/drho (rho_heun) with an
    Euler last step."""
    sched = schedules.ve()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = sched.prior_sample(jax.random.key(0), (16, 2))
    ts = timesteps(sched, 12, "edm")
    model = as_model(gmm.eps_fn(sched), sched)
    x = sample(model, x_T, solver=edm_sde(S_churn=0.0), ts=ts, key=jax.random.key(1))
    y = sample(model, x_T, solver="rho_heun", ts=ts[:-1])
    y = sample(model, y, solver="ddim", ts=ts[-2:])  # Euler in rho
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make, match", [
    (lambda: stochastic_ddim(-0.1), "eta"),
    (lambda: stochastic_ddim(1.5), "eta"),
    (lambda: stochastic_ddim(jnp.array([0.1, 0.2])), "eta"),
    (lambda: euler_maruyama(-1.0), "eta"),
    (lambda: euler_maruyama(float("inf")), "eta"),
    (lambda: sde_ei1(float("nan")), "eta"),
    (lambda: sde_ei2(-0.5), "eta"),
    (lambda: sde_ei2(correction="heun"), "correction"),
    (lambda: edm_sde(S_churn=-1.0), "S_churn"),
    (lambda: edm_sde(S_noise=0.0), "S_noise"),
    (lambda: edm_sde(S_min=2.0, S_max=1.0), "S_min"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", STOCHASTIC)
def test_missing_key(name):
    sched = schedules.vp_linear()
    gmm = testing.ring_mixture()
    solver = get_solver(name)
    with pytest.raises(ValueError, match="key"):
        sample(as_model(gmm.eps_fn(sched), sched), jnp.zeros((4, 2)), solver=solver,
               nfe=solver.nfe_for_steps(3))
    coeffs = jax.tree_util.tree_map(lambda c: c[0], solver.table(sched, timesteps(sched, 3)))
    with pytest.raises(ValueError, match="key"):
        solver.step(gmm.eps_fn(sched), solver.init(jnp.zeros((4, 2)), coeffs), coeffs, None)


def test_edm_nfe_must_be_odd():
    with pytest.raises(ValueError, match=r"1, 3, 5, 7, .*nfe=10"):
        get_solver("edm_sde").steps_for_nfe(10)
