"""EDM Euler / Heun in rho-space for any schedule: closed form, one Heun, NFE, bad input
(convergence orders: ``test_solver_orders.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, get_solver, sample, schedules, testing, timesteps


def test_edm_heun_is_rho_heun_with_an_euler_last_step(x64, problem):
    """One Heun: EDM Heun's table equals rhoRK-Heun's on every step but the last, whose
    result row is Euler's; on a 1-step grid both reduce to one Euler / one Heun step."""
    sched = problem[0]
    ts = timesteps(sched, 6, "edm")
    edm, rho = get_solver("edm_heun").table(sched, ts), get_solver("rho_heun").table(sched, ts)
    for a, b in zip(edm, rho):
        if a is None:
            continue
        np.testing.assert_allclose(np.asarray(a)[:-1], np.asarray(b)[:-1], rtol=1e-14)
    c_last = np.asarray(edm.c)[-1, -1]
    np.testing.assert_allclose(c_last[1], 0.0)
    np.testing.assert_allclose(c_last[0], 2 * np.asarray(rho.c)[-1, -1, 0], rtol=1e-14)


def test_euler_is_ddim(x64, problem):
    sched, gmm, x_T, _ = problem
    model = as_model(gmm.eps_fn(sched), sched)
    a = sample(model, x_T, solver="edm_euler", nfe=12, grid="edm")
    b = sample(model, x_T, solver="ddim", nfe=12, grid="edm")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched_fn", [schedules.vp_linear, schedules.ve])
def test_heun_matches_karras_algorithm(x64, sched_fn):
    """NFE 5 = 3 steps: Heun steps in y = x/alpha over (ts0, ts1), (ts1, ts2), then Euler to
    ts3 (Karras et al. 2022, Alg. 1 with the schedule's alpha)."""
    sched = sched_fn()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=3)
    x_T = sched.prior_sample(jax.random.key(4), (16, 2))
    ts = np.asarray(timesteps(sched, 3, "edm"))
    out = sample(as_model(gmm.eps_fn(sched), sched), x_T, solver="edm_heun", ts=jnp.asarray(ts))
    alpha = np.asarray(sched.alpha(ts))
    rho = np.asarray(sched.rho(ts))

    def eps(y, i):
        x = jnp.asarray(alpha[i] * y)
        return np.asarray(gmm.eps(x, jnp.full((y.shape[0],), ts[i]), sched))

    y = np.asarray(x_T) / alpha[0]
    for i, j in ((0, 1), (1, 2)):
        d = eps(y, i)
        y_pred = y + (rho[j] - rho[i]) * d
        y = y + 0.5 * (rho[j] - rho[i]) * (d + eps(y_pred, j))
    y = y + (rho[3] - rho[2]) * eps(y, 2)
    np.testing.assert_allclose(np.asarray(out), alpha[3] * y, rtol=1e-11, atol=1e-12)


def test_nfe_rules():
    heun = get_solver("edm_heun")
    assert heun.steps_for_nfe(9) == 5 and heun.nfe_for_steps(5) == 9
    with pytest.raises(ValueError, match=r"1, 3, 5, 7, \.\.\. \(every 2\); got nfe=8"):
        heun.steps_for_nfe(8)
    sched = schedules.edm()
    model = as_model(testing.gaussian_mixture(2, 2).eps_fn(sched), sched)
    with pytest.raises(ValueError, match="nfe=10"):
        sample(model, jnp.zeros((2, 2)), solver="edm_heun", nfe=10)


def test_edm_denoiser_and_jit():
    """EDM schedule with an EDM-style denoiser (x0 prediction), float32, under jit."""
    sched = schedules.edm()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=5)

    def denoiser(y, rho):  # D(y; rho) = E[x0 | x = y], exact for alpha = 1
        eps = gmm.eps(y, rho, sched)
        return y - rho[:, None] * eps

    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    edm_model = as_model(denoiser, sched, prediction="edm")
    eps_model = as_model(gmm.eps_fn(sched), sched)
    run = jax.jit(lambda x: sample(edm_model, x, solver="edm_heun", nfe=35))
    ref = jax.jit(lambda x: sample(eps_model, x, solver="edm_heun", nfe=35))
    np.testing.assert_allclose(np.asarray(run(x_T)), np.asarray(ref(x_T)), atol=2e-3)
