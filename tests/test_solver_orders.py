"""Measured convergence orders (float64) and exact equivalences of the foundation solvers."""

import jax
import numpy as np
import pytest

from deis_jax import get_solver, sample, schedules, solvers, testing, timesteps

# name -> (theoretical order, step counts of the asymptotic range)
ORDERS = {
    "ddim": (1, (50, 100, 200, 400)),
    "euler": (1, (50, 100, 200, 400)),
    "tab1": (2, (50, 100, 200, 400)),
    "tab2": (3, (50, 100, 200, 400)),
    "tab3": (4, (50, 100, 200, 400)),
    "rhoab1": (2, (50, 100, 200, 400)),
    "rhoab2": (3, (50, 100, 200, 400)),
    "rhoab3": (4, (50, 100, 200, 400)),
    "rho_midpoint": (2, (16, 32, 64, 128)),
    "rho_heun": (2, (16, 32, 64, 128)),
    "rho_kutta3": (3, (16, 32, 64, 128)),
    "rho_rk4": (4, (16, 32, 64, 128)),
}


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        sched = schedules.vp_linear()
        gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
        x_T = sched.prior_sample(jax.random.key(0), (32, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min,
                                         rtol=1e-12, atol=1e-12)
    return sched, gmm, x_T, gt


def measured_order(name, problem, steps):
    sched, gmm, x_T, gt = problem
    errors = []
    for n in steps:
        ts = timesteps(sched, n, "log_snr")
        x = sample(gmm.eps_fn(sched), sched, x_T, solver=name, ts=ts)
        errors.append(float(testing.rmse(x, gt)))
    nfe = np.array(steps) * get_solver(name).nfe_per_step
    slope = -np.polyfit(np.log(nfe), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_convergence_order(x64, problem, name):
    order, steps = ORDERS[name]
    slope, errors = measured_order(name, problem, steps)
    assert min(errors) > 1e-9, "errors must stay well above the ground truth's own error"
    assert abs(slope - order) <= 0.3, (name, slope, errors)
    assert get_solver(name).order == order


def test_ddim_equals_tab0_equals_closed_form(x64, problem):
    sched, gmm, x_T, _ = problem
    ts = timesteps(sched, 10, "quadratic")
    a = sample(gmm.eps_fn(sched), sched, x_T, solver="ddim", ts=ts)
    b = sample(gmm.eps_fn(sched), sched, x_T, solver="tab0", ts=ts)
    c = sample(gmm.eps_fn(sched), sched, x_T, solver="rhoab0", ts=ts)
    # Closed-form DDIM written out with numpy.
    x = np.asarray(x_T)
    t = np.asarray(ts)
    for i in range(10):
        a_s, a_t = float(sched.alpha(t[i])), float(sched.alpha(t[i + 1]))
        s_s, s_t = float(sched.sigma(t[i])), float(sched.sigma(t[i + 1]))
        eps = np.asarray(gmm.eps(x, np.full(x.shape[0], t[i]), sched))
        x = a_t / a_s * x + a_t * (s_t / a_t - s_s / a_s) * eps
    np.testing.assert_allclose(a, x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, x, rtol=1e-12, atol=1e-12)


def test_tab_equals_rhoab_on_edm(x64):
    """On EDM, t = rho, so polynomials in t and in rho are the same method."""
    sched = schedules.edm()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=3)
    x_T = sched.prior_sample(jax.random.key(2), (16, 2))
    ts = timesteps(sched, 8, "edm")
    for k in (1, 2, 3):
        a = sample(gmm.eps_fn(sched), sched, x_T, solver=f"tab{k}", ts=ts)
        b = sample(gmm.eps_fn(sched), sched, x_T, solver=f"rhoab{k}", ts=ts)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "factory, order",
    [(solvers.tab_deis, 4), (solvers.tab_deis, -1), (solvers.rhoab_deis, 7),
     (solvers.ipndm, 0), (solvers.ipndm, 5), (solvers.tab_deis, 2.0)],
)
def test_order_out_of_range(factory, order):
    with pytest.raises(ValueError, match="order"):
        factory(order)


def test_unknown_rk_method():
    with pytest.raises(ValueError, match="method"):
        solvers.rho_rk("rk5")
