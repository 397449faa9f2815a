"""Exponential-integrator weights against closed forms and scipy.integrate.quad (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from deis_jax import schedules, timesteps
from deis_jax.solvers.ei import ei_weights

# Independent closed forms of d rho / dt for each schedule (numpy, float64).


def _drho_vp_linear(t, b0=0.1, b1=20.0):
    log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    rho = np.sqrt(np.expm1(-2 * log_alpha))
    return (b0 + t * (b1 - b0)) / (2 * np.exp(2 * log_alpha) * rho)


def _drho_vp_cosine(t, s=0.008):
    theta = (t + s) / (1 + s) * np.pi / 2
    log_alpha = np.log(np.cos(theta)) - np.log(np.cos(s / (1 + s) * np.pi / 2))
    rho = np.sqrt(np.expm1(-2 * log_alpha))
    dlog_alpha = -np.tan(theta) * np.pi / (2 * (1 + s))
    return -dlog_alpha * np.exp(-2 * log_alpha) / rho


def _drho_ve(t, smin=0.01, smax=50.0):
    c = np.log(smax / smin)
    return c * smin * np.exp(c * t)


def _drho_edm(t):
    return np.ones_like(t)


def _drho_flow(t, shift=3.0):
    # rho = sigma/alpha = shift t / (1 - t).
    return shift / (1 - t) ** 2


CASES = {
    "vp_linear": (schedules.vp_linear, _drho_vp_linear),
    "vp_cosine": (schedules.vp_cosine, _drho_vp_cosine),
    "ve": (schedules.ve, _drho_ve),
    "edm": (schedules.edm, _drho_edm),
    "flow": (lambda: schedules.flow(3.0), _drho_flow),
}


def _lagrange(u, nodes, j):
    out = 1.0
    for m, um in enumerate(nodes):
        if m != j:
            out = out * (u - um) / (nodes[j] - um)
    return out


def _reference_weights(schedule, drho, ts, order, basis):
    """alpha_{i+1} * int_{t_i}^{t_{i+1}} rho'(tau) l_j(u(tau)) d tau by adaptive quadrature."""
    ts = np.asarray(ts, np.float64)
    u_of_t = {
        "t": lambda t: t,
        "rho": lambda t: float(schedule.rho(t)),
    }[basis]
    n = len(ts) - 1
    out = np.zeros((n, order + 1))
    for i in range(n):
        k = min(i, order)
        nodes = [u_of_t(ts[i - j]) for j in range(k + 1)]
        alpha_next = float(schedule.alpha(ts[i + 1]))
        for j in range(k + 1):
            val, _ = integrate.quad(
                lambda t: drho(t) * _lagrange(u_of_t(t), nodes, j),
                ts[i], ts[i + 1], epsabs=0.0, epsrel=1.5e-14, limit=500,
            )
            out[i, j] = alpha_next * val
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("grid", ["quadratic", "log_snr", "uniform"])
def test_tab_weights_match_scipy_quad(x64, name, grid):
    make, drho = CASES[name]
    sched = make()
    ts = timesteps(sched, 5, grid)
    got = np.asarray(ei_weights(sched, ts, 3, "t"))
    ref = _reference_weights(sched, drho, ts, 3, "t")
    nonzero = ref != 0
    assert np.array_equal(got != 0, nonzero)
    rel = np.abs(got[nonzero] - ref[nonzero]) / np.abs(ref[nonzero])
    assert rel.max() <= 1e-12, (name, grid, rel.max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_rhoab_weights_match_scipy_quad(x64, name):
    make, drho = CASES[name]
    sched = make()
    ts = timesteps(sched, 5, "edm")
    got = np.asarray(ei_weights(sched, ts, 3, "rho"))
    ref = _reference_weights(sched, drho, ts, 3, "rho")
    nonzero = ref != 0
    rel = np.abs(got[nonzero] - ref[nonzero]) / np.abs(ref[nonzero])
    assert rel.max() <= 1e-12, (name, rel.max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_order_zero_is_the_ddim_closed_form(x64, name):
    sched = CASES[name][0]()
    ts = timesteps(sched, 5, "quadratic")
    got = np.asarray(ei_weights(sched, ts, 0, "t"))[:, 0]
    t = np.asarray(ts)
    alpha = np.array([float(sched.alpha(x)) for x in t])
    sigma = np.array([float(sched.sigma(x)) for x in t])
    ddim = sigma[1:] - alpha[1:] * sigma[:-1] / alpha[:-1]
    np.testing.assert_allclose(got, ddim, rtol=1e-12, atol=0)


def test_polynomial_closed_form_on_edm(x64):
    """On EDM (rho = t) the weights are integrals of Lagrange polynomials: exact in numpy."""
    sched = schedules.edm()
    ts = np.asarray(timesteps(sched, 5, "edm"))
    tab = np.asarray(ei_weights(sched, ts, 3, "t"))
    rhoab = np.asarray(ei_weights(sched, ts, 3, "rho"))
    np.testing.assert_allclose(tab, rhoab, rtol=1e-12, atol=1e-300)
    for i in range(5):
        k = min(i, 3)
        nodes = ts[i - np.arange(k + 1)]
        for j in range(k + 1):
            others = np.delete(nodes, j)
            poly = np.poly1d(np.poly(others)) / np.prod(nodes[j] - others)
            exact = np.polyint(poly)(ts[i + 1]) - np.polyint(poly)(ts[i])
            np.testing.assert_allclose(tab[i, j], exact, rtol=1e-12)


def test_weights_are_differentiable_in_the_grid(x64):
    sched = schedules.vp_linear()

    def total(power):
        ts = timesteps(sched, 6, "power", power=power)
        return jnp.sum(ei_weights(sched, ts, 3, "t"))

    g = jax.grad(total)(2.0)
    eps = 1e-6
    fd = (total(2.0 + eps) - total(2.0 - eps)) / (2 * eps)
    assert np.isfinite(float(g))
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-6)


def test_unknown_basis_is_rejected():
    sched = schedules.vp_linear()
    with pytest.raises(ValueError, match="basis"):
        ei_weights(sched, timesteps(sched, 3), 1, "lambda")
