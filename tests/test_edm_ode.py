"""EDM Euler / Heun in rho-space for any schedule: closed form, orders, NFE, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from deis_jax import get_solver, sample, schedules, testing, timesteps
from sweep_helpers import sweep


@pytest.mark.parametrize("name,order,nfes,grid", [
    ("edm_euler", 1, (48, 96, 192), "log_snr"),
    ("edm_heun", 2, (47, 95, 191), "log_snr"),
    ("edm_heun", 2, (47, 95, 191), "edm"),
])
def test_convergence_order(x64, problem, name, order, nfes, grid):
    sched, gmm, x_T, gt = problem
    xs = sweep(name, gmm.eps_fn(sched), sched, x_T, [timesteps(sched, n, grid) for n in nfes])
    err = np.sqrt(np.mean((np.asarray(xs) - np.asarray(gt)[None]) ** 2, axis=(1, 2)))
    slope = -stats.linregress(np.log(nfes), np.log(err)).slope
    assert abs(slope - order) < 0.3, (name, grid, slope, err)


def test_euler_is_ddim(x64, problem):
    sched, gmm, x_T, _ = problem
    a = sample(gmm.eps_fn(sched), sched, x_T, solver="edm_euler", nfe=12, grid="edm")
    b = sample(gmm.eps_fn(sched), sched, x_T, solver="ddim", nfe=12, grid="edm")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched_fn", [schedules.vp_linear, schedules.ve])
def test_heun_matches_karras_algorithm(x64, sched_fn):
    """NFE 5: two Heun steps in y = x/alpha over (ts0, ts2), (ts2, ts4), then Euler to ts5
    (Karras et al. 2022, Alg. 1 with the schedule's alpha)."""
    sched = sched_fn()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=3)
    x_T = sched.prior_sample(jax.random.key(4), (16, 2))
    ts = np.asarray(timesteps(sched, 5, "edm"))
    out = sample(gmm.eps_fn(sched), sched, x_T, solver="edm_heun", ts=jnp.asarray(ts))
    alpha = np.asarray(sched.alpha(ts))
    rho = np.asarray(sched.rho(ts))

    def eps(y, i):
        x = jnp.asarray(alpha[i] * y)
        return np.asarray(gmm.eps(x, jnp.full((y.shape[0],), ts[i]), sched))

    y = np.asarray(x_T) / alpha[0]
    for i, j in ((0, 2), (2, 4)):
        d = eps(y, i)
        y_pred = y + (rho[j] - rho[i]) * d
        y = y + 0.5 * (rho[j] - rho[i]) * (d + eps(y_pred, j))
    y = y + (rho[5] - rho[4]) * eps(y, 4)
    np.testing.assert_allclose(np.asarray(out), alpha[5] * y, rtol=1e-11, atol=1e-12)


def test_nfe_rules():
    heun = get_solver("edm_heun")
    assert heun.steps_for_nfe(9) == 9 and heun.nfe_for_steps(9) == 9
    with pytest.raises(ValueError, match="odd.*nfe=8"):
        heun.steps_for_nfe(8)
    sched = schedules.edm()
    model = testing.gaussian_mixture(2, 2).eps_fn(sched)
    with pytest.raises(ValueError, match="nfe=10"):
        sample(model, sched, jnp.zeros((2, 2)), solver="edm_heun", nfe=10)


def test_edm_denoiser_and_jit():
    """EDM schedule with an EDM-style denoiser (x0 prediction), float32, under jit."""
    sched = schedules.edm()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=5)

    def denoiser(y, rho):  # D(y; rho) = E[x0 | x = y], exact for alpha = 1
        eps = gmm.eps(y, rho, sched)
        return y - rho[:, None] * eps

    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    run = jax.jit(lambda x: sample(denoiser, sched, x, solver="edm_heun", nfe=35,
                                   prediction="edm"))
    ref = jax.jit(lambda x: sample(gmm.eps_fn(sched), sched, x, solver="edm_heun", nfe=35))
    np.testing.assert_allclose(np.asarray(run(x_T)), np.asarray(ref(x_T)), atol=2e-3)
