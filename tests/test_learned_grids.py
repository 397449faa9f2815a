"""Learned time grids: the parameterisation, gradients of the coefficient builders with respect
to the grid, the optimiser against an exact-score mixture, grid files and the CLI."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from deis_jax import as_model, get_solver, make_plan, sample, schedules, testing, timesteps
from deis_jax.cli import main
from deis_jax.grid_files import TimeGrid, load_grid, save_grid
from deis_jax.learned_grids import (
    grid_from_logits, logits_from_grid, optimize_timesteps, sweep_grid_family,
    teacher_samples)

SCHED = schedules.vp_linear()
RING = testing.ring_mixture(8, std=0.05)
EPS = RING.eps_fn(SCHED)
MODEL = as_model(EPS, SCHED)


@pytest.fixture(scope="module")
def noise():
    """Calibration, validation and held-out noises with their adaptive (tol 1e-7) teacher."""
    keys = jax.random.split(jax.random.key(0), 3)
    xs = [SCHED.prior_sample(k, (n, 2)) for k, n in zip(keys, (1024, 512, 1024))]
    return [(x, teacher_samples(MODEL, x, tol=1e-7)[0]) for x in xs]


@pytest.mark.parametrize("schedule", [schedules.vp_linear(), schedules.ve(),
                                      schedules.flow(3.0), schedules.edm()])
def test_every_logit_gives_a_grid_in_range_and_the_map_inverts(schedule):
    z = 3.0 * jax.random.normal(jax.random.key(1), (7,))
    ts = np.asarray(grid_from_logits(schedule, z), np.float64)
    assert ts[0] == np.float32(schedule.t_max) and ts[-1] == np.float32(schedule.t_min)
    assert np.all(np.diff(ts) < 0)
    # Logits of a grid reproduce it (the softmax ignores their common shift).
    ts0 = timesteps(schedule, 7, "log_snr" if schedule.name != "flow" else "shifted")
    back = grid_from_logits(schedule, logits_from_grid(schedule, ts0))
    np.testing.assert_allclose(back, ts0, rtol=2e-5)


@pytest.mark.parametrize("name", ["tab3", "dpmpp_3m", "unipc3", "logrho3", "dpm2"])
def test_coefficient_builders_have_correct_gradients_in_the_grid(x64, name):
    """The tables (final-step rules included: smooth weights, no branch) differentiate
    correctly with respect to every grid point: reverse mode against finite differences."""
    solver = get_solver(name)
    lam = jnp.linspace(-4.0, 6.0, 7) + jnp.array([0.0, 0.1, -0.2, 0.3, 0.0, -0.1, 0.0])
    ts = SCHED.t_from_log_snr(lam)
    flat = jax.jit(lambda t: jax.tree_util.tree_leaves(solver.table(SCHED, t)))
    # Central differences at eps = 1e-7 carry a relative error of ~1e-5 on the largest
    # entries (thousands, near t_min); a wrong derivative is off by O(1).
    check_grads(flat, (ts,), order=1, modes=("rev",), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_learned_grid_beats_the_fixed_grids_on_held_out_noise(noise):
    (xc, yc), (xv, yv), (xh, yh) = noise
    res = optimize_timesteps(MODEL, solver="tab3", nfe=5, x_T_calibration=xc,
                             x_T_validation=xv, teacher=(yc, yv), steps=150, progress="none")
    err = lambda ts: float(jnp.sqrt(jnp.mean(jnp.square(
        sample(MODEL, xh, solver="tab3", ts=ts) - yh))))
    fixed = min(err(timesteps(SCHED, 5, k)) for k in ("quadratic", "log_snr", "edm"))
    learned = err(res.ts)
    assert learned < 0.6 * fixed, (learned, fixed)
    assert res.validation_error < res.init_validation_error
    assert res.ts.metadata["solver"] == "tab3" and res.ts.metadata["nfe"] == 5
    assert res.history[0]["step"] == 0 and res.best_step > 0


def test_mean_error_loss_is_its_criterion_and_beats_the_fixed_grids(noise):
    """loss="mean_error": the reported errors are the mean per-sample RMS error, and the
    learned grid lowers it on held-out noise."""
    (xc, yc), (xv, yv), (xh, yh) = noise
    mean_error = lambda ts, x, y: float(jnp.mean(jnp.sqrt(jnp.mean(jnp.square(
        sample(MODEL, x, solver="tab3", ts=ts) - y), axis=-1))))
    res = optimize_timesteps(MODEL, solver="tab3", nfe=5, x_T_calibration=xc,
                             x_T_validation=xv, teacher=(yc, yv), loss="mean_error",
                             steps=100, progress="none")
    init = timesteps(SCHED, 5, "log_snr")
    np.testing.assert_allclose(res.init_validation_error, mean_error(init, xv, yv), rtol=1e-5)
    np.testing.assert_allclose(res.validation_error, mean_error(res.ts, xv, yv), rtol=1e-4)
    fixed = min(mean_error(timesteps(SCHED, 5, k), xh, yh)
                for k in ("quadratic", "log_snr", "edm"))
    assert mean_error(res.ts, xh, yh) < 0.7 * fixed
    assert res.ts.metadata["loss"] == "mean_error"


def test_params_reach_the_model_and_mini_batches(noise):
    """A model with parameters (passed as data to the jitted step) and mini-batches."""
    (xc, yc), (xv, yv), _ = noise
    model = as_model(lambda p, x, t: p["scale"] * EPS(x, t), SCHED,
                     params={"scale": jnp.float32(0.5)})
    res = optimize_timesteps(model, solver="ddim", nfe=4,
                             x_T_calibration=xc, x_T_validation=xv, teacher=(yc, yv), steps=6,
                             eval_every=3, batch_size=256, key=jax.random.key(2),
                             progress="none")
    init = sample(model, xv, solver="ddim", ts=timesteps(SCHED, 4, "log_snr"))
    np.testing.assert_allclose(res.init_validation_error,
                               jnp.sqrt(jnp.mean(jnp.square(init - yv))), rtol=1e-5)
    assert res.steps_run == 6 and [h["step"] for h in res.history] == [0, 3, 6]


def test_several_starts_return_the_best_single_run(noise):
    """A list of initial grids runs one optimisation from each (the same run as alone) and
    returns the one best on validation."""
    (xc, yc), (xv, yv), _ = noise
    common = dict(solver="tab3", nfe=5, x_T_calibration=xc, x_T_validation=xv,
                  teacher=(yc, yv), steps=10, eval_every=5, progress="none")
    array = np.asarray(timesteps(SCHED, 5, "edm"))
    alone = [optimize_timesteps(MODEL, init_grid=g, **common) for g in ("log_snr", array)]
    multi = optimize_timesteps(MODEL, init_grid=["log_snr", array], **common)
    starts = multi.ts.metadata["starts"]
    assert [s["init_grid"] for s in starts] == ["log_snr", "given array"]
    for s, a in zip(starts, alone):
        np.testing.assert_allclose(s["validation_error"], a.validation_error, rtol=1e-6)
    best = min(alone, key=lambda a: a.validation_error)
    np.testing.assert_allclose(np.asarray(multi.ts), np.asarray(best.ts), rtol=1e-6)
    assert multi.best_step == best.best_step and multi.history == best.history
    assert multi.init_validation_error == min(a.init_validation_error for a in alone)


def test_sweep_is_one_call_and_matches_single_grids(noise):
    (xc, yc), _, _ = noise
    sw = sweep_grid_family(MODEL, xc, yc, solver="tab3", nfe=6, family="power",
                           values=[1.0, 2.0, 3.0])
    for v, e in zip(sw.values, sw.rmse):
        ts = timesteps(SCHED, 6, "power", power=float(v))
        direct = jnp.sqrt(jnp.mean(jnp.square(sample(MODEL, xc, solver="tab3", ts=ts) - yc)))
        np.testing.assert_allclose(e, direct, rtol=1e-4)
    assert sw.best_value == sw.values[int(np.argmin(sw.rmse))]


def test_non_finite_gradient_names_the_step(noise):
    (xc, yc), (xv, yv), _ = noise

    def network(x, t):  # finite values; d sqrt(u)/du at u = 0 makes the gradient NaN
        return EPS(x, t) + jnp.sqrt(t - t)[:, None]

    with pytest.raises(FloatingPointError, match="non-finite at optimisation step 1"):
        optimize_timesteps(as_model(network, SCHED), solver="tab3", nfe=5, x_T_calibration=xc,
                           x_T_validation=xv, teacher=(yc, yv), steps=3, progress="none")


def test_bad_input(noise):
    (xc, yc), (xv, yv), _ = noise
    common = dict(x_T_calibration=xc, x_T_validation=xv, teacher=(yc, yv), progress="none")
    with pytest.raises(ValueError, match="stochastic"):
        optimize_timesteps(MODEL, solver="ddpm", nfe=5, **common)
    with pytest.raises(ValueError, match="x_T_validation"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5,
                           **dict(common, x_T_validation=xv[:, :1]))
    with pytest.raises(ValueError, match="teacher"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5,
                           **dict(common, teacher=(yc[:10], yv)))
    with pytest.raises(ValueError, match="init_grid must be 6 decreasing times"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, init_grid=np.linspace(1, .1, 6),
                           **common)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, batch_size=16, **common)
    with pytest.raises(ValueError, match="log-SNR"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, t_min=0.0, **common)
    x3 = jnp.zeros((8, 3))  # noise of the wrong shape for the 2-d model
    with pytest.raises(ValueError, match=r"the network failed.*x of shape \(8, 3\).*"
                                         "x must have the shape the network expects"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, x_T_calibration=x3,
                           x_T_validation=x3, teacher=(x3, x3), progress="none")
    with pytest.raises(ValueError, match="unknown init_grid"):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, init_grid="cubic", **common)
    with pytest.raises(ValueError, match="unknown loss=.l1."):
        optimize_timesteps(MODEL, solver="tab3", nfe=5, loss="l1", **common)
    with pytest.raises(ValueError, match="unknown init_grid"):  # checked before any start
        optimize_timesteps(MODEL, solver="tab3", nfe=5, init_grid=["log_snr", "cubic"],
                           **common)


def test_grid_file_round_trip_and_mismatches(tmp_path):
    ts = timesteps(SCHED, 5, "log_snr")
    path = tmp_path / "g.json"
    save_grid(path, ts, schedule=SCHED, solver="tab3", nfe=5, model={"step": 3})
    grid = load_grid(path)
    np.testing.assert_array_equal(np.asarray(grid, np.float32), np.asarray(ts))  # exact
    assert grid.metadata["model"] == {"step": 3} and "created" in grid.metadata
    x_T = SCHED.prior_sample(jax.random.key(0), (4, 2))
    want = sample(MODEL, x_T, solver="tab3", ts=ts)
    np.testing.assert_array_equal(sample(MODEL, x_T, solver="tab3", ts=grid), want)
    np.testing.assert_array_equal(sample(MODEL, x_T, ts=grid), want)  # the file's solver
    with pytest.raises(ValueError, match="solver 'tab3' \\(this call: 'ipndm'\\)"):
        sample(MODEL, x_T, solver="ipndm", ts=grid)
    with pytest.raises(ValueError, match="5 steps, NFE 5 \\(this call: 3 steps\\)"):
        sample(MODEL, x_T, solver="tab3", ts=TimeGrid(grid.ts[:4], grid.metadata))
    with pytest.raises(ValueError, match="schedule 'vp_linear' \\(this call: 've'\\)"):
        sample(as_model(EPS, schedules.ve()), x_T, solver="tab3", ts=grid)
    with pytest.raises(ValueError, match="beta_max=20.0 \\(this call: 10.0\\)"):
        sample(as_model(EPS, schedules.vp_linear(beta_max=10.0)), x_T, solver="tab3", ts=grid)
    with pytest.raises(ValueError, match="the grid file fixes the NFE"):
        sample(MODEL, x_T, ts=grid, nfe=5)
    sample(MODEL, x_T, solver="ipndm", ts=np.asarray(grid))  # a plain array: unchecked
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(ValueError, match="not a time-grid file"):
        load_grid(tmp_path / "other.json")
    with pytest.raises(ValueError, match="strictly decreasing"):
        save_grid(tmp_path / "up.json", ts[::-1], schedule=SCHED, solver="tab3", nfe=5)


def _counted_model():
    """MODEL's network plus a host-side counter of executed calls (a debug callback)."""
    calls = [0]

    def bump():
        calls[0] += 1

    def network(x, t):
        jax.debug.callback(bump)
        return EPS(x, t)

    return as_model(network, SCHED), calls


def test_dpm_fast_grid_file_runs_with_its_recorded_nfe(tmp_path, noise):
    """The issue's bug: a DPM-Solver-fast grid made for NFE 12 (5 steps: its order mix for 12
    calls) passed as ``ts=`` ran the 5-step mix of the bare solver, 14 model calls. Loaded
    from its file it must run exactly as tuned: 12 calls, the same sample as
    ``solver="dpm_fast", nfe=12`` on that grid."""
    model, calls = _counted_model()
    x_T = SCHED.prior_sample(jax.random.key(0), (8, 2))
    plan = make_plan(SCHED, "dpm_fast", nfe=12)
    assert plan.nfe == 12 and plan.n_steps == 5
    save_grid(tmp_path / "fast.json", np.asarray(plan.ts), schedule=SCHED, solver="dpm_fast",
              nfe=12)
    grid = load_grid(tmp_path / "fast.json")
    want = sample(model, x_T, solver="dpm_fast", nfe=12)
    for kwargs in (dict(ts=grid), dict(solver="dpm_fast", ts=grid)):
        jax.effects_barrier()
        calls[0] = 0
        out = sample(model, x_T, full_output=True, **kwargs)
        jax.effects_barrier()
        assert out.nfe == 12 and calls[0] == 12, (kwargs.keys(), out.nfe, calls[0])
        np.testing.assert_array_equal(out.x, want)

    # A grid tuned by optimize_timesteps for dpm_fast at NFE 12, saved and loaded: its own
    # (learned) times with the 12-call order mix.
    (xc, yc), (xv, yv), _ = noise
    res = optimize_timesteps(MODEL, solver="dpm_fast", nfe=12, x_T_calibration=xc[:256],
                             x_T_validation=xv[:256], teacher=(yc[:256], yv[:256]), steps=3,
                             eval_every=1, progress="none")
    assert res.ts.metadata["solver"] == "dpm_fast" and res.ts.metadata["nfe"] == 12
    assert len(res.ts) == 6
    save_grid(tmp_path / "learned.json", res.ts, schedule=SCHED)
    learned = load_grid(tmp_path / "learned.json")
    on_grid = dataclasses.replace(plan, ts=jnp.asarray(np.asarray(learned), plan.ts.dtype))
    want = sample(model, x_T, on_grid)
    assert not np.array_equal(want, sample(model, x_T, plan))  # the learned times differ
    for ts in (learned, res.ts):
        jax.effects_barrier()
        calls[0] = 0
        out = sample(model, x_T, ts=ts, full_output=True)
        jax.effects_barrier()
        assert out.nfe == 12 and calls[0] == 12, (out.nfe, calls[0])
        np.testing.assert_array_equal(out.x, want)


def test_cli_tune_grid_then_sample(tmp_path, capsys):
    run = tmp_path / "cb"
    assert main(["train", "--data", "checkerboard", "--steps", "5", "--out", str(run),
                 "--batch-size", "32", "--progress", "none"]) == 0
    grid = tmp_path / "grid.json"
    assert main(["tune-grid", "--ckpt", str(run), "--solver", "ddim", "--nfe", "3", "--out",
                 str(grid), "--steps", "2", "--n-calibration", "16", "--n-validation", "8",
                 "--teacher-tol", "1e-3", "--init", "log_snr", "quadratic", "--loss",
                 "mean_error", "--progress", "none"]) == 0
    assert "ddim at NFE 3: validation mean error" in capsys.readouterr().out
    meta = load_grid(grid).metadata
    assert meta["model"] == {"ckpt": os.path.abspath(run), "step": 5}
    assert [s["init_grid"] for s in meta["starts"]] == ["log_snr", "quadratic"]
    assert meta["loss"] == "mean_error"
    assert main(["sample", "--ckpt", str(run), "--grid", str(grid), "--n", "8", "--out",
                 str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert str(z["solver"]) == "ddim" and int(z["nfe"]) == 3
    assert main(["sample", "--ckpt", str(run), "--grid", str(grid), "--solver", "tab3",
                 "--out", str(tmp_path / "t.npz")]) == 2
    assert "made for solver 'ddim' (this call: 'tab3')" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--grid", "cubic", "--out",
                 str(tmp_path / "t.npz")]) == 2
    assert "--grid must be a grid kind" in capsys.readouterr().err
