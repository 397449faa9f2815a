"""Mixed precision: time and solver state stay float32 whatever the model's dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, sample, schedules, testing, timesteps
from deis_jax.adaptive import solve_ode
from deis_jax.models import MLPScore, UNet, model_from_config
from deis_jax.precision import check_dtype, state_dtype
from deis_jax.training import default_spec, load_dataset

BF16 = jnp.bfloat16


@pytest.fixture(scope="module")
def setup():
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=0, dtype=jnp.float32)
    x_T = sched.prior_sample(jax.random.key(0), (32, 2)).astype(BF16)
    return sched, gmm, x_T


def recording_model(eps_fn, seen):
    """``eps_fn`` that records the ``t`` values and the ``x`` dtype it is called with."""

    def fn(x, t):
        seen["x_dtype"].append(x.dtype)
        jax.debug.callback(lambda t: seen["t"].append(np.asarray(t)), t)
        return eps_fn(x, t)

    return fn


@pytest.mark.parametrize("solver", ["ddim", "tab3", "dpmpp_3m", "edm_heun"])
def test_model_sees_the_float32_grid_bit_for_bit(setup, solver):
    sched, gmm, x_T = setup
    ts = timesteps(sched, 6, "log_snr")
    assert ts.dtype == jnp.float32
    seen = {x_dtype: {"t": [], "x_dtype": []} for x_dtype in ("bf16", "f32")}
    for name, start in (("bf16", x_T), ("f32", x_T.astype(jnp.float32))):
        sample(as_model(recording_model(gmm.eps_fn(sched), seen[name]), sched), start,
               solver=solver, ts=ts)
        jax.effects_barrier()
    for name in seen:
        ts_seen = np.stack([t[0] for t in seen[name]["t"]])
        assert ts_seen.dtype == np.float32
        if solver in ("ddim", "tab3", "dpmpp_3m"):  # one call per step, at the step's start
            np.testing.assert_array_equal(ts_seen, np.asarray(ts)[:-1])
    np.testing.assert_array_equal(np.stack([t for t in seen["bf16"]["t"]]),
                                  np.stack([t for t in seen["f32"]["t"]]))
    assert set(seen["bf16"]["x_dtype"]) == {jnp.dtype(BF16)}  # default: x_T's dtype
    assert set(seen["f32"]["x_dtype"]) == {jnp.dtype(jnp.float32)}


def test_state_is_float32_and_the_same_from_bf16_or_float32(setup):
    sched, gmm, x_T = setup

    eps_fn = gmm.eps_fn(sched)

    def bf16_eps(x, t):
        return eps_fn(x, t).astype(BF16)

    out_bf = sample(as_model(bf16_eps, sched), x_T, solver="tab3", nfe=8)
    out_32 = sample(as_model(bf16_eps, sched, dtype="bf16"), x_T.astype(jnp.float32),
                    solver="tab3", nfe=8)
    assert out_bf.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out_bf), np.asarray(out_32))
    # The float32 state is what makes the bf16 run accurate: against a float32 model the
    # difference is the model's rounding only (a few 2^-9), not a bf16 state's drift.
    ref = sample(as_model(eps_fn, sched), x_T.astype(jnp.float32), solver="tab3", nfe=8)
    diff = float(jnp.max(jnp.abs(out_bf - ref)))
    assert diff < 8 * 2.0 ** -9, diff


def test_bf16_model_adds_only_its_rounding(problem):
    """The exact model with its input and output rounded to bfloat16, sampled from the
    order-test problem's x_T: its samples differ from the float32 model's by the rounding's
    scale (RMS <= 1.5 * 2^-9 over samples that end in the same mode), for every solver. With
    the state and time in bfloat16 (before the policy) the difference was 3-6x larger
    (5.9e-3 to 9.4e-3 at NFE 20); the bf16 error against the float64 ground truth stays within
    1.25x the float32 error plus that difference."""
    sched, gmm64, x_T, gt = problem
    gmm = testing.GaussianMixture(*(jnp.asarray(a, jnp.float32) for a in gmm64))
    eps = gmm.eps_fn(sched)
    model32 = as_model(eps, sched)
    model_bf = as_model(lambda x, t: eps(x, t).astype(BF16), sched)
    x_T = jnp.asarray(x_T, jnp.float32).astype(BF16)
    with jax.enable_x64(True):  # the ground truth from the bf16-rounded x_T
        gt = np.asarray(testing.ode_ground_truth(gmm64, sched, np.asarray(x_T, np.float64),
                                                 sched.t_max, sched.t_min)[0])
    for solver in ("tab3", "dpmpp_3m", "unipc3"):
        for nfe in (10, 20):
            x32 = np.asarray(sample(model32, x_T.astype(jnp.float32), solver=solver,
                                    nfe=nfe), np.float64)
            xbf = np.asarray(sample(model_bf, x_T, solver=solver, nfe=nfe), np.float64)
            same = ~np.asarray(testing.mode_flips(gmm64, xbf, x32))
            assert same.mean() > 0.9
            diff = float(testing.rmse(xbf[same], x32[same]))
            assert diff <= 1.5 * 2.0 ** -9, (solver, nfe, diff)
            e32, ebf = (float(testing.rmse(x[same], gt[same])) for x in (x32, xbf))
            assert ebf <= 1.25 * e32 + diff, (solver, nfe, ebf, e32, diff)


def test_solve_ode_in_bf16_at_loose_tolerance(setup):
    sched, gmm, x_T = setup
    model = as_model(gmm.eps_fn(sched), sched)
    sol = solve_ode(model, x_T, rtol=1e-3, atol=1e-3)
    assert sol.x.dtype == jnp.float32 and bool(jnp.all(sol.success))
    same = solve_ode(model.replace(dtype=jnp.dtype(BF16).name), x_T.astype(jnp.float32),
                     rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(sol.x), np.asarray(same.x))
    same = solve_ode(as_model(gmm.eps_fn(sched), sched, dtype=BF16), x_T.astype(jnp.float32),
                     rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(sol.x), np.asarray(same.x))
    ref = solve_ode(model, x_T.astype(jnp.float32), rtol=1e-3, atol=1e-3)
    assert float(testing.rmse(sol.x, ref.x)) < 1e-2


@pytest.mark.parametrize("model, x", [(MLPScore(hidden=16, depth=1), jnp.ones((3, 2))),
                                      (UNet(channels=(8, 16)), jnp.ones((3, 8, 8, 1)))])
def test_networks_compute_in_bf16_with_float32_params(model, x):
    params = model.init(jax.random.key(0), x, jnp.zeros(3))
    # give the zero-initialised output layers weights, so the output depends on everything
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    bf = model.clone(dtype=BF16)
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    t = jnp.array([0.10377, 0.5, 0.9])
    out, out32 = bf.apply(params, x, t), model.apply(params, x, t)
    assert out.dtype == BF16 and out32.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out.astype(jnp.float32) - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel
    # the time embedding runs in float32: a change of t below bf16's resolution is seen
    t2 = t.at[0].set(0.10378)
    assert jnp.asarray(0.10377, BF16) == jnp.asarray(0.10378, BF16)
    assert not jnp.array_equal(bf.apply(params, x, t2)[0], out[0])


def test_bf16_training_config_and_step():
    data = load_dataset("checkerboard", n_train=256, n_test=64)
    spec = default_spec(data, precision="bf16")
    assert spec.model["dtype"] == "bfloat16"
    assert "dtype" not in default_spec(data).model
    model = spec.build_model()
    assert model.dtype == jnp.dtype(BF16)
    from deis_jax.training import TrainConfig, fit

    result = fit(spec, data, TrainConfig(steps=5, batch_size=64, log_every=5),
                 progress="none")
    leaves = jax.tree_util.tree_leaves((result.state.params, result.state.opt_state))
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses and np.isfinite(losses[-1])


def test_state_dtype():
    assert state_dtype(BF16) == jnp.float32
    assert state_dtype(jnp.float16) == jnp.float32
    assert state_dtype(jnp.float32) == jnp.float32


@pytest.mark.parametrize("value", ["int8", "fp8", "complex64", 3])
def test_bad_dtype_names_the_option(setup, value):
    sched, gmm, x_T = setup
    with pytest.raises(ValueError, match=r"unsupported dtype=.*valid choices"):
        as_model(gmm.eps_fn(sched), sched, dtype=value)
    with pytest.raises(TypeError, match="as_model.*dtype="):  # the old option of sample
        sample(as_model(gmm.eps_fn(sched), sched), x_T, nfe=5, model_dtype=value)
    with pytest.raises(ValueError, match="model config dtype"):
        model_from_config({"name": "mlp", "dtype": value})


def test_float64_policy_needs_x64(setup):
    sched, gmm, x_T = setup
    with pytest.raises(ValueError, match="dtype='float64' needs float64.*jax_enable_x64"):
        as_model(gmm.eps_fn(sched), sched, dtype="float64")
    with pytest.raises(ValueError, match="unknown precision"):
        default_spec(load_dataset("checkerboard", n_train=8, n_test=8), precision="fp8")
    assert check_dtype("d", "bf16") == jnp.dtype(BF16)
