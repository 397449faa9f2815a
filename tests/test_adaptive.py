"""Adaptive probability-flow ODE solves (deis_jax.adaptive) against float64 ground truth."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, schedules, testing
from deis_jax.adaptive import solve_ode

GMM_ARGS = dict(dim=2, n_modes=3, std=0.3, seed=0)


@functools.lru_cache(maxsize=None)
def _problem(sched_name):
    """Schedule, mixture, float64 ``x_T`` and its float64 ground-truth sample (cached)."""
    with jax.enable_x64(True):
        sched = getattr(schedules, sched_name)()
        gmm = testing.gaussian_mixture(**GMM_ARGS)
        x_T = sched.prior_sample(jax.random.key(0), (16, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
        return sched, gmm, np.asarray(x_T), np.asarray(gt)


def _counted(fn):
    """``fn`` plus a host-side counter of executed calls (a debug callback per call)."""
    calls = [0]

    def bump():
        calls[0] += 1

    def model(x, t):
        jax.debug.callback(bump)
        return fn(x, t)

    return model, calls


@pytest.mark.parametrize("sched_name, solver, per_sample", [
    ("vp_linear", "tsit5", False),
    ("vp_linear", "dopri5", True),
    ("ve", "tsit5", True),
    ("ve", "dopri5", False),
])
def test_matches_float64_ground_truth(x64, sched_name, solver, per_sample):
    _, gmm, x_T, gt = _problem(sched_name)
    sched = getattr(schedules, sched_name)()
    model = as_model(gmm.eps_fn(sched), sched)
    errs = []
    for tol in (1e-4, 1e-7):
        sol = solve_ode(model, x_T, solver=solver, rtol=tol, atol=tol, per_sample=per_sample)
        assert bool(jnp.all(sol.success))
        err = float(jnp.max(jnp.abs(sol.x - gt)))
        # Local tolerance -> global error: allow the accumulation over the adaptive steps.
        assert err < 100 * tol, (tol, err)
        errs.append(err)
    assert errs[1] < errs[0] / 100


@pytest.mark.parametrize("solver", ["tsit5", "dopri5"])
def test_reported_nfe_matches_model_calls(x64, solver):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(**GMM_ARGS)
    counted, calls = _counted(gmm.eps_fn(sched))
    model = as_model(counted, sched)
    x_T = sched.prior_sample(jax.random.key(1), (8, 2))
    for tol in (1e-3, 1e-6):
        calls[0] = 0
        sol = solve_ode(model, x_T, solver=solver, rtol=tol, atol=tol)
        jax.effects_barrier()
        assert int(sol.nfe) == calls[0] > 0
    if solver != "tsit5":
        return
    # Per-sample steps: each sample's NFE is that of solving it alone; the vmapped (batched)
    # model runs as often as the most expensive sample needs.
    calls[0] = 0
    sol = solve_ode(model, x_T, solver=solver, rtol=1e-6, atol=1e-6, per_sample=True)
    jax.effects_barrier()
    assert int(jnp.max(sol.nfe)) == calls[0]
    for b in (0, 5):
        alone = solve_ode(as_model(gmm.eps_fn(sched), sched), x_T[b:b + 1], solver=solver,
                          rtol=1e-6, atol=1e-6)
        assert int(alone.nfe) == int(sol.nfe[b])
        np.testing.assert_allclose(alone.x[0], sol.x[b], rtol=1e-12, atol=1e-12)


def test_new_tolerances_do_not_recompile():
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(**GMM_ARGS)
    traces = [0]
    eps_fn = gmm.eps_fn(sched)

    def network(x, t):
        traces[0] += 1  # runs at trace time only
        return eps_fn(x, t)

    model = as_model(network, sched)

    x_T = sched.prior_sample(jax.random.key(2), (8, 2))
    nfes = []
    for tol in (1e-2, 1e-3, 1e-4, 1e-5):
        nfes.append(int(solve_ode(model, x_T, rtol=tol, atol=tol).nfe))
        if tol == 1e-2:
            after_first = traces[0]
    assert traces[0] == after_first > 0
    assert nfes == sorted(nfes) and nfes[-1] > nfes[0]  # the tolerances did take effect


def test_new_params_do_not_recompile():
    """The model's params are traced data of the solve; the parameters do take effect."""
    sched = schedules.vp_linear()
    traces = [0]

    def network(params, x, t):
        traces[0] += 1  # runs at trace time only
        return params["scale"] * jnp.tanh(x + t[:, None])

    model = as_model(network, sched, params={"scale": jnp.float32(0.5)})
    x_T = sched.prior_sample(jax.random.key(2), (8, 2))
    a = solve_ode(model, x_T, rtol=1e-4, atol=1e-4)
    after_first = traces[0]
    b = solve_ode(model.replace(params={"scale": jnp.float32(0.7)}), x_T, rtol=1e-4,
                  atol=1e-4)
    assert traces[0] == after_first > 0
    assert float(jnp.max(jnp.abs(a.x - b.x))) > 1e-3
    with pytest.raises(ValueError, match=r"network\(x, t\).*needs params="):
        solve_ode(as_model(network, sched), x_T)


def test_encodes_data_into_noise(x64):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(**GMM_ARGS)
    x0, _ = gmm.sample(jax.random.key(3), 16)
    gt, _ = testing.ode_ground_truth(gmm, sched, x0, sched.t_min, sched.t_max)
    model = as_model(gmm.eps_fn(sched), sched)
    enc = solve_ode(model, x0, t_start=sched.t_min, t_end=sched.t_max, rtol=1e-8, atol=1e-8)
    scale = float(jnp.max(jnp.abs(gt)))
    assert float(jnp.max(jnp.abs(enc.x - gt))) < 1e-5 * scale
    dec = solve_ode(model, enc.x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(dec.x, x0, atol=1e-5)


def test_float32_default_and_jit():
    _, gmm, x_T, gt = _problem("vp_linear")
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(**GMM_ARGS)
    model = as_model(gmm.eps_fn(sched), sched)
    fn = jax.jit(lambda x, rtol: solve_ode(model, x, rtol=rtol, atol=1e-4).x)
    x = fn(jnp.asarray(x_T, jnp.float32), 1e-4)
    assert x.dtype == jnp.float32
    assert float(testing.rmse(x, jnp.asarray(gt, jnp.float32))) < 1e-3


def test_max_steps_exhausted_raises():
    sched = schedules.vp_linear()
    gmm = testing.ring_mixture()
    x_T = sched.prior_sample(jax.random.key(5), (4, 2))
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ode(as_model(gmm.eps_fn(sched), sched), x_T, rtol=1e-8, atol=1e-8, max_steps=3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), "rtol"),
    (dict(rtol=-1e-3), "rtol"),
    (dict(atol=0.0), "atol"),
    (dict(atol=float("nan")), "atol"),
    (dict(solver="rk45"), "solver"),
    (dict(max_steps=0), "max_steps"),
    (dict(t_start=0.5, t_end=0.5), "t_start"),
    # Issue 10, category 4: these used to return x_T (or integrate past 0) with success=True.
    (dict(t_start=float("nan")), "t_start must be in .*got t_start=nan"),
    (dict(t_start=2.0), r"t_start must lie in \[t_min, t_max\] = \[0.001, 1.0\].*t_start=2.0"),
    (dict(t_end=-0.5), r"t_end must lie in \[t_min, t_max\].*t_end=-0.5"),
    (dict(t_end=float("inf")), "t_end must be in .*got t_end=inf"),
    (dict(x_T=jnp.zeros((2, 2)).at[0, 1].set(jnp.nan)), r"x_T contains 1 non-finite"),
])
def test_bad_arguments(kwargs, match):
    sched = schedules.vp_linear()
    gmm = testing.ring_mixture()
    x_T = kwargs.pop("x_T", jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=match):
        solve_ode(as_model(gmm.eps_fn(sched), sched), x_T, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="vp_linear"), "schedule must be a deis_jax Schedule"),
    (dict(x_T=[[0.0, 0.0]]), r"x_T must be an array of shape \(batch, ...\)"),
    (dict(model_fn=lambda x, t: jnp.zeros(x.shape, jnp.int32)), "floating-point.*int32"),
])
def test_bad_types(kwargs, match):
    """Category 5: types that used to fail inside JAX, or (an int model) were cast."""
    sched = kwargs.pop("schedule", schedules.vp_linear())
    model = kwargs.pop("model_fn", testing.ring_mixture().eps_fn(schedules.vp_linear()))
    with pytest.raises(TypeError, match=match):
        solve_ode(as_model(model, sched), kwargs.pop("x_T", jnp.zeros((2, 2))))
