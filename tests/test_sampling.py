"""The driver: jit, vmap, retracing, NFE accounting, trajectories, hooks, encoding,
gradients, float32 accuracy and bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import (as_model, get_solver, sample, schedules, solver_names, solvers, testing,
                      timesteps)
from deis_jax.sampling import _run
from schedule_cases import ALL_SCHEDULES

# Flow is left out here to keep CI short: every deterministic solver's convergence order is
# measured on it (test_solver_orders.py::test_convergence_order_on_flow).
SCHEDULES = {k: v for k, v in ALL_SCHEDULES.items() if k != "flow"}

FOUNDATION = ["euler", "ddim", "tab1", "tab2", "tab3", "rhoab1", "rhoab2", "rhoab3",
              "rho_midpoint", "rho_heun", "rho_kutta3", "rho_rk4", "ipndm"]
GMM = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
VP = schedules.vp_linear()
MODEL = as_model(GMM.eps_fn(VP), VP)  # the float32 mixture under VP-linear, built once


def _deterministic_solvers():
    return [n for n in solver_names() if not get_solver(n).stochastic]


@pytest.mark.parametrize("sched_name", sorted(SCHEDULES))
def test_every_solver_works_with_every_schedule(x64, sched_name):
    sched = SCHEDULES[sched_name]()
    x_T = sched.prior_sample(jax.random.key(0), (16, 2))
    gt, _ = testing.ode_ground_truth(GMM, sched, x_T, sched.t_max, sched.t_min)
    model = as_model(GMM.eps_fn(sched), sched)
    for name in FOUNDATION:
        x = sample(model, x_T, solver=name, nfe=96, grid="log_snr")
        err = float(testing.rmse(x, gt))
        # Euler in t is the slow baseline; the exponential integrators are far tighter.
        assert err < (0.2 if name == "euler" else 2e-2), (sched_name, name, err)


def test_jit_and_no_retrace():
    sched = VP
    ts = timesteps(sched, 10, "quadratic")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(model, x_T):
        return sample(model, x_T, solver="tab3", ts=ts)

    for seed in range(3):
        x_T = sched.prior_sample(jax.random.key(seed), (8, 2))
        eager = sample(MODEL, x_T, solver="tab3", ts=ts)
        # a Model rebuilt from the same network each time: the same trace
        model = as_model(MODEL.network, sched)
        np.testing.assert_allclose(run(model, x_T), eager, rtol=1e-5, atol=1e-5)


def test_eager_calls_compile_once_per_solver_and_shape():
    ts = timesteps(VP, 7, "log_snr")
    sample(MODEL, jnp.ones((4, 2)), solver="tab2", ts=ts)
    before = _run._cache_size()
    for seed in range(3):
        x_T = jax.random.normal(jax.random.key(seed), (4, 2))
        sample(MODEL, x_T, solver="tab2", ts=ts)
    assert _run._cache_size() == before


def test_vmap_over_seeds_matches_loop():
    sched = schedules.ve()
    model = as_model(GMM.eps_fn(sched), sched)
    keys = jax.random.split(jax.random.key(0), 3)

    def one(key):
        return sample(model, sched.prior_sample(key, (4, 2)), solver="tab3", nfe=8)

    batched = jax.jit(jax.vmap(one))(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], one(keys[i]), rtol=1e-5, atol=1e-5)


def test_vmap_over_grid_exponent_compiles_once():
    sched = schedules.edm()
    model = as_model(GMM.eps_fn(sched), sched)
    x_T = sched.prior_sample(jax.random.key(0), (4, 2))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(exponents):
        def one(p):
            ts = timesteps(sched, 6, "edm", rho=p)
            return sample(model, x_T, solver="tab3", ts=ts)

        return jax.vmap(one)(exponents)

    out = sweep(jnp.array([3.0, 7.0]))
    ref = sample(model, x_T, solver="tab3", ts=timesteps(sched, 6, "edm", rho=7.0))
    np.testing.assert_allclose(out[1], ref, rtol=1e-4, atol=1e-4)
    sweep(jnp.array([5.0, 9.0]))


def test_vmap_over_schedule_parameter():
    def one(beta_max):
        sched = schedules.vp_linear(0.1, beta_max)
        return sample(as_model(GMM.eps_fn(sched), sched), jnp.ones((4, 2)), solver="ddim",
                      nfe=5)

    out = jax.jit(jax.vmap(one))(jnp.array([10.0, 20.0]))
    np.testing.assert_allclose(out[1], one(20.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FOUNDATION)
def test_nfe_is_exact(name):
    sched = schedules.vp_linear()
    calls = []

    def counting(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return GMM.eps(x, t, sched)

    solver = get_solver(name)
    nfe = 4 * solver.nfe_per_step * 3
    out = sample(as_model(counting, sched), jnp.ones((3, 2)), solver=name, nfe=nfe,
                 full_output=True)
    jax.effects_barrier()
    assert out.nfe == nfe == len(calls)
    assert int(out.nonfinite_step) == -1


def test_trajectory_and_hook():
    ts = timesteps(VP, 5)
    seen = []

    def hook(x, t):
        jax.debug.callback(lambda t: seen.append(float(t)), t)
        return x.at[:, 0].set(0.0)

    out = sample(MODEL, jnp.ones((3, 2)), solver="tab2", ts=ts, hook=hook, full_output=True,
                 return_trajectory=True)
    jax.effects_barrier()
    assert out.trajectory.shape == (6, 3, 2)
    np.testing.assert_allclose(out.trajectory[0], 1.0)
    np.testing.assert_allclose(out.trajectory[1:, :, 0], 0.0)
    np.testing.assert_allclose(out.trajectory[-1], out.x)
    np.testing.assert_allclose(seen, np.asarray(ts[1:]), rtol=1e-6)


@pytest.mark.parametrize("name", ["tab3", "rho_rk4", "ipndm"])
def test_encode_then_decode_round_trips(x64, name):
    sched = schedules.vp_linear()
    x0, _ = GMM.sample(jax.random.key(0), 16)
    ts = timesteps(sched, 200, "log_snr")
    model = as_model(GMM.eps_fn(sched), sched)
    z = sample(model, x0, solver=name, ts=ts[::-1])
    back = sample(model, z, solver=name, ts=ts)
    assert float(testing.rmse(back, x0)) < 1e-4
    assert float(jnp.std(z)) > 0.5  # actually moved to the noise end


def test_gradients_through_the_sampler(x64):
    sched = schedules.vp_linear()
    x_T = sched.prior_sample(jax.random.key(0), (4, 2))
    model = as_model(GMM.eps_fn(sched), sched)

    def loss(power):
        ts = timesteps(sched, 8, "power", power=power)
        return jnp.sum(sample(model, x_T, solver="tab3", ts=ts) ** 2)

    g = jax.grad(loss)(2.0)
    fd = (loss(2.0 + 1e-5) - loss(2.0 - 1e-5)) / 2e-5
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-5)


def test_float32_matches_float64_accuracy():
    """tAB3 at NFE 10: the float32 RMSE is within 2% of the float64 RMSE (same ground truth)."""
    with jax.enable_x64(True):
        sched = schedules.vp_linear()
        gmm = testing.ring_mixture(8, std=0.05)
        x_T = sched.prior_sample(jax.random.key(0), (512, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
        x64_out = sample(as_model(gmm.eps_fn(sched), sched), x_T, solver="tab3", nfe=10)
        err64 = float(testing.rmse(x64_out, gt))
        gt, x_T = np.asarray(gt), np.asarray(x_T, np.float32)
    sched32 = schedules.vp_linear()
    gmm32 = testing.ring_mixture(8, std=0.05)
    x32 = sample(as_model(gmm32.eps_fn(sched32), sched32), jnp.asarray(x_T), solver="tab3",
                 nfe=10)
    assert x32.dtype == jnp.float32
    err32 = float(testing.rmse(np.asarray(x32, np.float64), gt))
    assert abs(err32 / err64 - 1) < 0.02, (err32, err64)


# ------------------------------------------------------------------ bad input


def _run_bad(**kwargs):
    """``sample(as_model(model_fn, schedule, prediction=...), x_T, **rest)``; the default
    model is :data:`MODEL` (built once)."""
    model_args = {k: kwargs.pop(k) for k in ("model_fn", "schedule", "prediction")
                  if k in kwargs}
    x_T = kwargs.pop("x_T", jnp.ones((4, 2)))
    model = MODEL
    if model_args:
        model = as_model(model_args.pop("model_fn", GMM.eps_fn(VP)),
                         model_args.pop("schedule", VP), **model_args)
    return sample(model, x_T, **kwargs)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"solver": "tab9"}, ValueError, "unknown solver='tab9'.*valid choices"),
        ({"solver": "tab3", "nfe": 0}, ValueError, "nfe must be >= 1"),
        ({"solver": "rho_rk4", "nfe": 10}, ValueError, r"4, 8, 12, 16, \.\.\. \(every 4\)"),
        ({"solver": "rho_rk4", "nfe": 2}, ValueError, "nfe"),
        ({"solver": "tab3"}, ValueError, "ts= .* or nfe="),
        ({"ts": jnp.array([1.0, 0.4, 0.6, 0.01])}, ValueError, "strictly monotone"),
        ({"ts": jnp.array([1.0, 0.5, 0.0])}, ValueError, r"\[t_min, t_max\]"),
        ({"ts": jnp.array([1.0, 0.5]), "nfe": 5}, ValueError, "only one"),
        ({"x_T": jnp.ones(())}, ValueError, "batch axis"),
        ({"x_T": jnp.ones((4, 2), jnp.int32), "nfe": 5}, TypeError, "floating"),
        ({"model_fn": lambda x, t: x[:, :1], "nfe": 5}, ValueError,
         r"the network must return an array of x's shape \(4, 2\).*returned \(4, 1\)"),
        ({"prediction": "noise", "nfe": 5}, ValueError, "prediction"),
        ({"nfe": 5, "grid": "cosine"}, ValueError, "grid='cosine'.*valid choices"),
        ({"nfe": 5, "return_trajectory": True}, ValueError, "full_output"),
        # Issue 10, category 4 (used to be silent or blamed on the model after the solve).
        ({"x_T": jnp.ones((4, 2)).at[1, 0].set(jnp.nan), "nfe": 5}, ValueError,
         r"x_T contains 1 non-finite value\(s\).*index \(1, 0\)"),
        ({"x_T": jnp.ones((4, 2)).at[3, 1].set(-jnp.inf), "nfe": 5}, ValueError,
         r"x_T\[3, 1\]=-inf"),
        ({"solver": "euler_maruyama", "key": jax.random.key(0),
          "ts": timesteps(schedules.vp_linear(), 5)[::-1]}, ValueError,
         "'euler_maruyama' is stochastic.*ts must be decreasing.*increasing"),
        ({"solver": "ddpm", "key": jax.random.key(0),
          "ts": timesteps(schedules.vp_linear(), 5)[::-1]}, ValueError, "ts must be decreasing"),
        ({"model_fn": lambda x, t: jnp.zeros(x.shape, jnp.int32), "nfe": 5}, TypeError,
         "the network must return floating-point values.*int32"),
        ({"model_fn": lambda x, t: jnp.zeros(x.shape, jnp.complex64), "nfe": 5}, TypeError,
         "the network must return floating-point.*complex64"),
        # Category 5 (used to be errors from inside JAX).
        ({"solver": "ddpm", "key": 0, "nfe": 5}, TypeError,
         r"key must be a PRNG key from jax.random.key\(seed\).*got key=0"),
        ({"solver": "ddpm", "key": jnp.ones((2,)), "nfe": 5}, TypeError, "float32"),
        ({"solver": "ddpm", "key": jax.random.split(jax.random.key(0), 3), "nfe": 5},
         ValueError, r"key must be a single PRNG key, got a key array of shape \(3,\)"),
        ({"schedule": "vp_linear", "nfe": 5}, TypeError,
         "schedule must be a deis_jax Schedule .*got schedule='vp_linear'"),
        ({"x_T": (jnp.ones((4, 2)), jnp.ones((4, 2))), "nfe": 5}, TypeError,
         r"x_T must be an array of shape \(batch, ...\).*a tuple"),
        ({"model_fn": 42, "nfe": 5}, TypeError,
         r"network must be callable as network\(x, t\).*got network=42"),
        ({"hook": 3, "nfe": 5}, TypeError, "hook must be callable"),
        ({"hook": lambda x: x, "nfe": 5}, ValueError,
         r"hook failed when called as hook\(x, t\).*TypeError"),
    ],
)
def test_bad_input_is_reported_before_tracing(kwargs, err, match):
    with pytest.raises(err, match=match):
        _run_bad(**kwargs)


@pytest.mark.parametrize("legacy", [{}, {"params": {"w": jnp.ones(2)}}, {"prediction": "x0"},
                                    {"model_dtype": "bf16"}],
                         ids=["schedule", "params", "prediction", "model_dtype"])
def test_the_old_call_form_says_to_use_as_model(legacy):
    """``sample(model_fn, schedule, x_T, params=..., prediction=..., model_dtype=...)`` is
    gone: the TypeError says to build the model with ``as_model``."""
    match = (r"sample\(model_fn, schedule, \.\.\., params=\.\.\., prediction=\.\.\.\) is "
             r"gone.*deis_jax.as_model")
    if not legacy:
        with pytest.raises(TypeError, match=match):
            sample(GMM.eps_fn(VP), VP, jnp.ones((4, 2)), solver="ddim", nfe=5)
    else:
        with pytest.raises(TypeError, match=match):
            sample(MODEL, jnp.ones((4, 2)), solver="ddim", nfe=5, **legacy)


def test_a_bare_function_is_not_a_model():
    with pytest.raises(TypeError, match=r"model must be a deis_jax.Model, got function.*as_model"):
        sample(GMM.eps_fn(VP), jnp.ones((4, 2)), solver="ddim", nfe=5)


def test_register_solver_checks_the_factory_where_it_is_registered():
    from deis_jax import register_solver

    with pytest.raises(TypeError, match=r"factory must be callable as factory\(\) -> Solver"):
        register_solver("hostile_a", 42)
    with pytest.raises(TypeError, match="factory of solver 'hostile_b' must return a Solver.*42"):
        register_solver("hostile_b", lambda: 42)
    with pytest.raises(ValueError, match="factory of solver 'hostile_c' raised "
                                         "ZeroDivisionError"):
        register_solver("hostile_c", lambda: 1 / 0)
    with pytest.raises(TypeError, match="name must be a solver name"):
        register_solver(3, lambda: get_solver("ddim"))
    assert not {"hostile_a", "hostile_b", "hostile_c"} & set(solver_names())


class _Unhashable:
    """A model object that cannot be hashed: no ``__hash__``, or one that raises."""

    def __init__(self, broken_hash):
        self.broken_hash = broken_hash

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        if self.broken_hash:
            raise RuntimeError("no hash")
        raise TypeError("unhashable")

    def __call__(self, x, t):
        return GMM.eps(x, t, schedules.vp_linear())


@pytest.mark.parametrize("broken_hash", [False, True])
def test_unhashable_models_are_static_by_identity(broken_hash):
    x = _run_bad(model_fn=_Unhashable(broken_hash), nfe=5)
    assert x.shape == (4, 2) and bool(jnp.all(jnp.isfinite(x)))


def test_first_step_failure_names_x_T():
    """A finite but absurd x_T overflows the model: the error says so at step 0."""
    with pytest.raises(FloatingPointError, match=r"step 0 .*\|x_T\| = 1e\+30 where the "
                       r"prior's std is 1"):
        _run_bad(x_T=jnp.full((4, 2), 1e30), nfe=5)


def test_checks_do_not_change_jit_or_vmap():
    """The eager checks pass tracers through: inside jit (traced x_T, key, grid) nothing is
    checked that would need a value, and the result equals the eager one."""
    ts = timesteps(VP, 6)

    @jax.jit
    def run(x_T, key, ts):
        return sample(MODEL, x_T, solver="ddim_eta", ts=ts, key=key)

    x_T = jnp.ones((4, 2))
    np.testing.assert_allclose(run(x_T, jax.random.key(0), ts),
                               sample(MODEL, x_T, solver="ddim_eta", ts=ts,
                                      key=jax.random.key(0)), rtol=1e-5, atol=1e-6)
    keys = jax.random.split(jax.random.key(1), 3)
    assert jax.vmap(lambda k: run(x_T, k, ts))(keys).shape == (3, 4, 2)


def test_nan_from_the_model_is_reported():
    sched = schedules.vp_linear()

    def broken(x, t):
        return jnp.where(t[:, None] < 0.3, jnp.nan, GMM.eps(x, t, sched))

    model = as_model(broken, sched)
    with pytest.raises(FloatingPointError, match="non-finite values .* at step"):
        sample(model, jnp.ones((4, 2)), solver="tab3", nfe=10)
    out = jax.jit(functools.partial(sample, model, solver="tab3", nfe=10,
                                    full_output=True))(jnp.ones((4, 2)))
    assert int(out.nonfinite_step) >= 0


def test_x_T_of_the_wrong_shape_for_the_model_is_reported():
    sched = schedules.vp_linear()
    w = jnp.ones((2, 2))
    with pytest.raises(ValueError, match=r"the network failed: .* with x of shape \(4, 3\)"):
        sample(as_model(lambda x, t: x @ w, sched), jnp.ones((4, 3)), solver="ddim", nfe=5)


# ------------------------------------------------------------------ parameters are data


def _mlp_params(key, d=2, width=16):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d + 1, width)) / 3, "w2": jax.random.normal(k2, (width, d)) / 4}


def _mlp(params, x, t):
    h = jnp.tanh(jnp.concatenate([x, t[:, None]], axis=-1) @ params["w1"])
    return h @ params["w2"]


def test_new_params_partials_and_rebuilt_solvers_do_not_recompile():
    """Zero new compilations for new parameters (``model.replace(params=...)`` and a model
    built anew with ``as_model(..., params=...)``), a new functools.partial over new
    parameters, and a rebuilt stochastic solver with equal or new hyper-parameters."""
    sched = schedules.vp_linear()
    x_T = jnp.ones((4, 2))
    p0, p1 = _mlp_params(jax.random.key(0)), _mlp_params(jax.random.key(1))
    model = as_model(_mlp, sched, params=p0)
    a = sample(model, x_T, solver="tab3", nfe=6)
    sample(as_model(functools.partial(_mlp, p0), sched), x_T, solver="tab3", nfe=6)
    sample(model, x_T, solver=solvers.stochastic_ddim(0.5), nfe=6, key=jax.random.key(0))
    before = _run._cache_size()
    new = model.replace(params=p1)
    b = sample(new, x_T, solver="tab3", nfe=6)
    c = sample(as_model(functools.partial(_mlp, p1), sched), x_T, solver="tab3", nfe=6)
    d = sample(as_model(_mlp, sched, params=p1), x_T, solver="tab3", nfe=6)
    for eta in (0.5, 0.7):
        sample(new, x_T, solver=solvers.stochastic_ddim(eta), nfe=6, key=jax.random.key(0))
    assert _run._cache_size() == before
    np.testing.assert_allclose(b, c, rtol=1e-6)
    np.testing.assert_array_equal(b, d)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # the new parameters were used


def test_sample_inside_a_user_jit_traces_once():
    sched = schedules.vp_linear()
    x_T = jnp.ones((4, 2))
    model = as_model(_mlp, sched, params=_mlp_params(jax.random.key(0)))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, x):
        return sample(model.replace(params=params), x, solver="dpmpp_3m", nfe=8)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run_model(model, x):  # the Model itself as the argument
        return sample(model, x, solver="dpmpp_3m", nfe=8)

    for seed in range(3):
        params = _mlp_params(jax.random.key(seed))
        out = run(params, x_T)
        ref = sample(model.replace(params=params), x_T, solver="dpmpp_3m", nfe=8)
        np.testing.assert_allclose(run_model(as_model(_mlp, sched, params=params), x_T), ref,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_flax_apply_with_params_and_a_rebuilt_module():
    """A Flax Linen module (or its model.apply) enters as_model unchanged with params=; an
    equal module rebuilt (as a checkpoint loader does) reuses the compiled sampler."""
    from deis_jax.models import MLPScore

    sched = schedules.vp_linear()
    x_T = jnp.ones((4, 2))
    module = MLPScore(hidden=16, depth=2)
    params = module.init(jax.random.key(0), x_T, jnp.ones((4,)))
    first = sample(as_model(module, sched, params=params), x_T, solver="unipc3", nfe=6)
    before = _run._cache_size()
    again = sample(as_model(MLPScore(hidden=16, depth=2).apply, sched, params=params), x_T,
                   solver="unipc3", nfe=6)
    assert _run._cache_size() == before
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("with_params", [True, False])
def test_wrong_call_form_names_both_forms(with_params):
    sched = schedules.vp_linear()
    params = _mlp_params(jax.random.key(0))
    if with_params:  # params given to a network that takes (x, t)
        network, kwargs = GMM.eps_fn(sched), {"params": params}
        match = (r"called as network\(params, x, t\).*a network without parameters takes no "
                 r"params=")
    else:  # params omitted for a network that needs them
        network, kwargs = _mlp, {}
        match = r"called as network\(x, t\).*a network with parameters needs params="
    with pytest.raises(ValueError, match=match):
        sample(as_model(network, sched, **kwargs), jnp.ones((4, 2)), solver="ddim", nfe=4)


@pytest.mark.parametrize("hook", [lambda x, t: x[:, :1], lambda x, t: x.astype(jnp.float16)],
                         ids=["shape", "dtype"])
def test_hook_changing_shape_or_dtype_is_reported(hook):
    with pytest.raises(ValueError, match=r"hook\(x, t\) must return x's shape \(4, 2\)"):
        sample(MODEL, jnp.ones((4, 2)), solver="ddim", nfe=4, hook=hook)


@pytest.mark.parametrize("name", ["rho_rk4", "edm_heun", "dpm_fast", "unipc3", "edm_sde"])
def test_hook_runs_once_per_step_at_the_step_end(name):
    """Every solver, multistage or not: one hook call per step, at ts[1], ..., ts[N], and
    the hook's edit is the state the next step starts from."""
    solver = get_solver(name)
    ts = timesteps(VP, 4, "log_snr")
    seen = []

    def hook(x, t):
        jax.debug.callback(lambda t: seen.append(float(t)), t)
        return x.at[:, 0].set(0.0)

    plan = solver.for_nfe(solver, 10) if solver.for_nfe else solver
    out = sample(MODEL, jnp.ones((3, 2)), solver=plan, ts=ts, hook=hook, full_output=True,
                 return_trajectory=True, key=jax.random.key(0))
    jax.effects_barrier()  # (unordered callbacks: compare the sorted times)
    np.testing.assert_allclose(np.sort(seen)[::-1], np.asarray(ts[1:]), rtol=1e-6)
    assert out.trajectory.shape == (5, 3, 2)
    np.testing.assert_allclose(out.trajectory[1:, :, 0], 0.0)
