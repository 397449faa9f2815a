"""Rectified flow: the flow schedule's closed forms, the velocity prediction against autodiff of
the exact mixture density, the wrappers of flow-matching networks, Euler/Heun in t, bad input.
(Convergence orders on flow: test_solver_orders.py; EI weights: test_quadrature.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import parameterization as P
from deis_jax import as_model, sample, schedules, testing, timesteps

SHIFTS = (1.0, 3.0, 0.5)


@pytest.mark.parametrize("shift", SHIFTS)
def test_flow_closed_forms(x64, shift):
    s = schedules.flow(shift)
    t = np.geomspace(s.t_min, s.t_max, 33)
    den = 1 + (shift - 1) * t
    sigma, alpha = shift * t / den, (1 - t) / den
    np.testing.assert_allclose(s.sigma(t), sigma, rtol=1e-14)
    np.testing.assert_allclose(s.alpha(t), alpha, rtol=1e-13)
    np.testing.assert_allclose(s.log_snr(t), np.log((1 - t) / (shift * t)), rtol=1e-13)
    np.testing.assert_allclose(s.t_from_log_snr(np.log((1 - t) / (shift * t))), t, rtol=1e-13)
    # d sigma/dt = shift / den^2 = -d alpha/dt; f = d log alpha/dt; g^2 = -2 sigma^2 d lambda/dt.
    np.testing.assert_allclose(s.d_sigma(t), shift / den**2, rtol=1e-13)
    np.testing.assert_allclose(s.d_alpha(t), -shift / den**2, rtol=1e-13)
    np.testing.assert_allclose(s.f(t), -1 / (1 - t) - (shift - 1) / den, rtol=1e-12)
    np.testing.assert_allclose(s.g2(t), 2 * sigma**2 / (t * (1 - t)), rtol=1e-12)
    np.testing.assert_allclose(float(s.prior_std()), shift * s.t_max / (1 + (shift - 1) *
                                                                         s.t_max), rtol=1e-14)


def test_flow_defaults_and_registry():
    s = schedules.from_name("flow")
    assert s.family is schedules.FAMILIES["flow"]
    assert (s.t_min, s.t_max) == (1e-3, 1 - 1e-3)
    assert float(s.params["shift"]) == 1.0


def test_shift_is_data_and_vmaps_under_jit():
    shifts = jnp.array([1.0, 3.0, 6.0])
    traces = []

    def sigma_half(shift):
        traces.append(shift)
        return schedules.flow(shift).sigma(0.5)

    got = jax.jit(jax.vmap(sigma_half))(shifts)
    np.testing.assert_allclose(got, shifts * 0.5 / (1 + (shifts - 1) * 0.5), rtol=1e-6)
    assert len(traces) == 1
    # A sampler swept over the shift compiles once and returns one sample set per shift.
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = schedules.flow().prior_sample(jax.random.key(0), (8, 2))

    def run(shift):
        s = schedules.flow(shift)
        return sample(as_model(gmm.velocity_fn(s), s, prediction="velocity"), x_T,
                      solver="heun", nfe=9, check_finite=False)

    xs = jax.jit(jax.vmap(run))(shifts)
    for shift, x in zip(shifts, xs):
        np.testing.assert_allclose(x, run(float(shift)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"shift": 0.0}, r"shift must be in \(0.0, inf\), got shift=0.0"),
    ({"shift": -2.0}, r"shift must be in \(0.0, inf\), got shift=-2.0"),
    ({"shift": float("inf")}, r"shift must be in \(0.0, inf\), got shift=inf"),
    ({"shift": float("nan")}, r"shift must be in \(0.0, inf\), got shift=nan"),
    ({"shift": "3"}, "shift must be a real number"),
    ({"t_max": 1.0}, r"flow needs t_max < 1 .*got t_max=1.0"),
    ({"t_min": 0.0}, r"need 0 < t_min < t_max .*t_min=0.0"),
    # Below 1 as a Python float, but 1.0 once stored in float32: alpha(t_max) = 0.
    ({"t_max": 1 - 1e-9}, r"flow\(shift=1.0, t_min=0.001, t_max=0.999999999\) is not usable"),
])
def test_flow_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        schedules.flow(**kwargs)


def test_grid_reaching_the_singular_ends_is_refused():
    s = schedules.flow()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = s.prior_sample(jax.random.key(0), (4, 2))
    model = as_model(gmm.velocity_fn(s), s, prediction="velocity")
    for ts in ([1.0, 0.5, 0.001], [0.999, 0.5, 0.0]):
        with pytest.raises(ValueError, match=r"ts must lie in \[t_min, t_max\] = \[0.001, "
                                             r"0.999\] of the flow schedule"):
            sample(model, x_T, solver="euler", ts=jnp.asarray(ts))


@pytest.mark.parametrize("make", [schedules.flow, lambda: schedules.flow(3.0),
                                  schedules.vp_linear, schedules.ve])
def test_velocity_is_the_probability_flow_drift(x64, make):
    """The exact mixture velocity (posterior means) equals ``f x - g^2/2 grad log p_t``, with
    the score by autodiff of the exact mixture density, and the conversions to and from eps
    and x0 agree with the exact eps to 1e-12."""
    s = make()
    gmm = testing.gaussian_mixture(3, 5, std=[0.1, 0.2, 0.3, 0.4, 0.5], seed=4)
    x = 1.5 * jax.random.normal(jax.random.key(0), (16, 3))
    t = jnp.asarray(np.geomspace(s.t_min * 10, s.t_max * 0.95, 16))
    score = jax.vmap(jax.grad(lambda xi, ti: gmm.marginal_logp(xi[None], ti, s)[0]))(x, t)
    drift = s.f(t)[:, None] * x - 0.5 * s.g2(t)[:, None] * score
    u = gmm.velocity(x, t, s)
    scale = np.max(np.abs(drift))
    np.testing.assert_allclose(u, drift, rtol=1e-12, atol=1e-12 * scale)
    coeffs = (s.alpha(t), s.sigma(t), s.d_alpha(t), s.d_sigma(t))
    eps = -s.sigma(t)[:, None] * score
    x0 = P.x0_from_eps(x, eps, s.alpha(t), s.sigma(t))
    np.testing.assert_allclose(P.eps_from_velocity(x, u, *coeffs), eps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(P.x0_from_velocity(x, u, *coeffs), x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_model(gmm.eps_fn(s), s).velocity(x, t), u,
                               rtol=1e-11, atol=1e-12 * scale)


def test_velocity_is_eps_minus_x0_on_rectified_flow(x64):
    s = schedules.flow()
    gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=1)
    x = jax.random.normal(jax.random.key(3), (32, 2))
    t = jnp.linspace(0.01, 0.99, 32)
    eps = gmm.eps(x, t, s)
    x0 = (np.asarray(x) - np.asarray(t)[:, None] * eps) / (1 - np.asarray(t))[:, None]
    np.testing.assert_allclose(gmm.velocity(x, t, s), eps - x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("noise_at_zero", [False, True])
def test_flow_velocity_model_wraps_both_conventions(x64, shift, noise_at_zero):
    """A network conditioned on the noise level ``tau`` that predicts ``eps - x0`` (data at
    ``tau = 0``) or ``x0 - eps`` (noise at ``tau = 0``) becomes the velocity of ``flow(shift)``
    in its own time."""
    gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=1)
    plain = schedules.flow()  # its time is the noise level: u = eps - x0 at tau
    if noise_at_zero:
        def net(x, tau):
            return -gmm.velocity(x, 1.0 - tau, plain)
    else:
        def net(x, tau):
            return gmm.velocity(x, tau, plain)
    s = schedules.flow(shift)
    x = jax.random.normal(jax.random.key(3), (16, 2))
    t = jnp.linspace(0.02, 0.98, 16)
    u = jax.jit(P.flow_velocity_model(net, s, noise_at_zero=noise_at_zero))(x, t)
    np.testing.assert_allclose(u, gmm.velocity(x, t, s), rtol=1e-10, atol=1e-12)


def test_flow_velocity_model_needs_a_flow_schedule():
    with pytest.raises(ValueError, match="flow_velocity_model needs a flow schedule.*"
                                         "schedule='vp_linear'"):
        P.flow_velocity_model(lambda x, t: x, schedules.vp_linear())


def test_euler_is_the_flow_matching_euler_step(x64):
    """``euler`` on a velocity model is ``x <- x + (t_next - t) u(x, t)``, step for step."""
    s = schedules.flow()
    gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
    x_T = s.prior_sample(jax.random.key(0), (16, 2))
    ts = np.asarray(timesteps(s, 7, "shifted"))
    got = sample(as_model(gmm.velocity_fn(s), s, prediction="velocity"), x_T, solver="euler",
                 ts=jnp.asarray(ts))
    x = np.asarray(x_T)
    for i in range(7):
        x = x + (ts[i + 1] - ts[i]) * np.asarray(gmm.velocity(x, np.full(16, ts[i]), s))
    np.testing.assert_allclose(got, x, rtol=1e-13, atol=1e-13)


def test_heun_is_edm_heun_on_edm_and_euler_is_ddim(x64):
    """On EDM (alpha = 1, t = rho) Heun in t is EDM's Heun in rho and Euler in t is DDIM."""
    s = schedules.edm()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=3)
    x_T = s.prior_sample(jax.random.key(2), (16, 2))
    ts = timesteps(s, 8, "edm")
    model = as_model(gmm.eps_fn(s), s)
    for ours, theirs in (("heun", "edm_heun"), ("euler", "ddim")):
        a = sample(model, x_T, solver=ours, ts=ts)
        b = sample(model, x_T, solver=theirs, ts=ts)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver, nfe", [("heun", 9), ("dpmpp_3m", 10)])
def test_velocity_and_eps_models_sample_alike(x64, solver, nfe):
    s = schedules.flow(3.0)
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = s.prior_sample(jax.random.key(0), (8, 2))
    a = sample(as_model(gmm.velocity_fn(s), s, prediction="velocity"), x_T, solver=solver,
               nfe=nfe, grid="uniform")
    b = sample(as_model(gmm.eps_fn(s), s), x_T, solver=solver, nfe=nfe, grid="uniform")
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_shifted_grid_is_the_uniform_grid_of_the_shifted_schedule(x64):
    """``timesteps(flow(), n, "shifted", shift=s)`` = sigma of ``flow(s)``'s uniform grid."""
    shift, lo, hi = 3.0, 1e-3, 1 - 1e-3
    inv = [t / (shift - (shift - 1) * t) for t in (lo, hi)]
    shifted = schedules.flow(shift, t_min=inv[0], t_max=inv[1])
    want = shifted.sigma(timesteps(shifted, 6, "uniform"))
    np.testing.assert_allclose(timesteps(schedules.flow(), 6, "shifted", shift=shift), want,
                               rtol=1e-13)
    with pytest.raises(ValueError, match="kind='shifted' maps times in \\[0, 1\\].*t_max=80.0"):
        timesteps(schedules.edm(), 6, "shifted")
