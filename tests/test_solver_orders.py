"""Convergence orders of every registered deterministic solver, driven by the registry, and
exact equivalences between solvers.

``ORDERS`` holds one entry per deterministic solver name: the claimed order (which must be
``get_solver(name).order``), the grid it is measured on (a name of ``sweep_helpers.GRIDS``)
and NFEs in the asymptotic range. A solver registered without an entry fails
``test_every_deterministic_solver_has_an_order_entry``. Measured on the session's smooth 2-d
mixture under VP-linear against its float64 ground truth (``conftest.problem``), with the
one helper ``sweep_helpers.measured_order``; a slope within 0.3 of the claim passes.

iPNDM's fixed Adams--Bashforth weights assume equal steps in ``rho``, so it is measured on
the grid uniform in ``rho`` (``"uniform_rho"``: the EDM grid with exponent 1, from t = 0.4);
on log-SNR grids it measures 2 (README). Its warm-up (orders 1, 2, ... on the first steps,
as in the reference implementation) starts with an Euler step whose local error is
``O(h^2)``: iPNDM-3/4 measure 3.3-3.7 on every range and problem tried (VP from t = 0.3,
0.4, 0.6; EDM with sigma_max 5, 10, 20) and fall towards 2 as the error shrinks, so for them
the check is a measured band (``BANDS``), not the claim +- 0.3.

``FLOW_ORDERS`` measures every solver again under the rectified-flow schedule
(``schedules.flow()``, ``conftest.flow_problem``): the same table except iPNDM, which starts
at the same rho (2, at t = 2/3: ``"uniform_rho_flow"``), and tAB3/rhoAB3, which reach the
asymptotic range later there (3.66 over NFE 50-400, 3.77 over 100-400).
"""

import jax
import numpy as np
import pytest

from deis_jax import (as_model, get_solver, sample, schedules, solver_names, solvers, testing,
                      timesteps)
from sweep_helpers import measured_order

_FAR = (48, 96, 192)
_LATE = (128, 192, 256)  # order 4: the asymptotic range starts later
# UniPC lowers its last two intervals while the last step is longer than 0.05 in lambda
# (solvers/unipc.py): on VP's log-SNR grid that is below ~190 steps.
_UNIPC = (256, 384, 512)
ORDERS = {  # name -> (claimed order, grid, NFEs)
    "euler": (1, "log_snr", (50, 100, 200, 400)),
    "ddim": (1, "log_snr", (50, 100, 200, 400)),
    "tab0": (1, "log_snr", _FAR),
    "rhoab0": (1, "log_snr", _FAR),
    "dpm1": (1, "log_snr", _FAR),
    "edm_euler": (1, "log_snr", _FAR),
    "tab1": (2, "log_snr", (50, 100, 200, 400)),
    "tab2": (3, "log_snr", (50, 100, 200, 400)),
    "tab3": (4, "log_snr", (50, 100, 200, 400)),
    "rhoab1": (2, "log_snr", (50, 100, 200, 400)),
    "rhoab2": (3, "log_snr", (50, 100, 200, 400)),
    "rhoab3": (4, "log_snr", (50, 100, 200, 400)),
    "logrho1": (2, "log_snr", _FAR),
    "logrho2": (3, "log_snr", _FAR),
    "logrho3": (4, "log_snr", _LATE),
    "ipndm": (4, "uniform_rho", _FAR),
    "ipndm1": (1, "uniform_rho", _FAR),
    "ipndm2": (2, "uniform_rho", _FAR),
    "ipndm3": (3, "uniform_rho", _FAR),
    "ipndm4": (4, "uniform_rho", _FAR),
    "rho_midpoint": (2, "log_snr", (32, 64, 128, 256)),
    "rho_heun": (2, "log_snr", (32, 64, 128, 256)),
    "rho_kutta3": (3, "log_snr", (48, 96, 192, 384)),
    "rho_rk4": (4, "log_snr", (64, 128, 256, 512)),
    "edm_heun": (2, "edm", (47, 95, 191)),
    "heun": (2, "log_snr", (47, 95, 191)),
    "dpm2": (2, "log_snr", _FAR),
    "dpm3": (3, "log_snr", _FAR),
    "dpm_fast": (3, "log_snr", (47, 95, 191)),  # nfe % 3 = 2: order-2 last step
    "dpmpp_2s": (2, "log_snr", _FAR),
    "dpmpp_2m": (2, "log_snr", _FAR),
    "dpmpp_3m": (3, "log_snr", _FAR),
    "dpmpp_3m_reference": (2, "log_snr", _FAR),  # the reference's half curvature weight
    "unipc1": (2, "log_snr", _UNIPC),
    "unipc2": (3, "log_snr", _UNIPC),
    "unipc3": (4, "log_snr", _UNIPC),
    "unipc1_bh1": (2, "log_snr", _UNIPC),
    "unipc2_bh1": (3, "log_snr", _UNIPC),
    "unipc3_bh1": (4, "log_snr", _UNIPC),
    "unipc1_eps": (2, "log_snr", _UNIPC),
    "unipc2_eps": (3, "log_snr", _UNIPC),
    "unipc3_eps": (4, "log_snr", _UNIPC),
}


BANDS = {"ipndm3": (2.7, 3.8), "ipndm4": (3.4, 4.3), "ipndm": (3.4, 4.3)}  # see docstring

FLOW_ORDERS = {
    **ORDERS,
    **{n: (ORDERS[n][0], "uniform_rho_flow", _FAR)
       for n in ("ipndm", "ipndm1", "ipndm2", "ipndm3", "ipndm4")},
    "tab3": (4, "log_snr", (100, 200, 400)),
    "rhoab3": (4, "log_snr", (100, 200, 400)),
}


def _deterministic():
    return sorted(n for n in solver_names() if not get_solver(n).stochastic)


def test_every_deterministic_solver_has_an_order_entry():
    assert sorted(ORDERS) == _deterministic()
    assert sorted(FLOW_ORDERS) == _deterministic()


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_claimed_order_is_the_solver_order(name):
    assert get_solver(name).order == ORDERS[name][0]


def _check_order(name, problem, table):
    order, grid, nfes = table[name]
    slope, err = measured_order(name, problem, nfes, grid)
    lo, hi = BANDS.get(name, (order - 0.3, order + 0.3))
    assert lo <= slope <= hi, (name, grid, slope, err)


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_convergence_order(x64, problem, name):
    _check_order(name, problem, ORDERS)


@pytest.mark.parametrize("name", sorted(FLOW_ORDERS))
def test_convergence_order_on_flow(x64, flow_problem, name):
    _check_order(name, flow_problem, FLOW_ORDERS)


def test_ddim_equals_tab0_equals_closed_form(x64, problem):
    sched, gmm, x_T, _ = problem
    x_T = x_T[:32]
    ts = timesteps(sched, 10, "quadratic")
    model = as_model(gmm.eps_fn(sched), sched)
    a = sample(model, x_T, solver="ddim", ts=ts)
    b = sample(model, x_T, solver="tab0", ts=ts)
    c = sample(model, x_T, solver="rhoab0", ts=ts)
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
    model = as_model(gmm.eps_fn(sched), sched)
    for k in (1, 2, 3):
        a = sample(model, x_T, solver=f"tab{k}", ts=ts)
        b = sample(model, x_T, solver=f"rhoab{k}", ts=ts)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "factory, value, name",
    [(solvers.tab_deis, 4, "degree"), (solvers.tab_deis, -1, "degree"),
     (solvers.rhoab_deis, 7, "degree"), (solvers.logrho_deis, 5, "degree"),
     (solvers.ipndm, 0, "order"), (solvers.ipndm, 5, "order"),
     (solvers.tab_deis, 2.0, "degree"), (solvers.unipc, 4, "predictor_order")],
)
def test_degree_or_order_out_of_range(factory, value, name):
    with pytest.raises(ValueError, match=rf"{name} must be one of .*{name}={value!r}"):
        factory(value)


def test_order_always_means_the_convergence_order():
    """Factory arguments: ``degree`` is a polynomial degree, ``order`` a convergence order."""
    assert solvers.tab_deis(degree=3).order == 4
    assert solvers.logrho_deis(degree=2).order == 3
    assert solvers.ipndm(order=3).order == 3
    assert solvers.dpm_solver(order=2).order == 2
    assert solvers.unipc(predictor_order=3).order == 4
    for name in solver_names():
        assert get_solver(name).name == name


def test_unknown_rk_method():
    with pytest.raises(ValueError, match="method"):
        solvers.rho_rk("rk5")
