"""Trainer: optimizer schedule, EMA recursion, single compilation, convergence to the exact
minimum on Gaussian data, progress output, config validation."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import schedules
from deis_jax.models import MLPScore
from deis_jax.training import (
    Dataset, DiffusionSpec, TrainConfig, array_dataset, batch_indices, fit, init_state,
    latest_step, load_model, make_loss, make_optimizer, make_train_step, restore_checkpoint,
    schedule_to_dict)
from deis_jax.training.trainer import learning_rate

SMALL = {"name": "mlp", "hidden": 32, "depth": 1}


def _gaussian_data(n=4096, std=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return array_dataset(np.array([1.0, -0.5]) + std * rng.standard_normal((n, 2)),
                         test_fraction=0.25)


def _setup(config):
    model = MLPScore(hidden=16, depth=1)
    sched = schedules.vp_linear()
    opt = make_optimizer(config)
    state = init_state(model, opt, jnp.zeros((1, 2)), jax.random.key(0))
    step = make_train_step(model, make_loss("dsm", sched), opt, ema_decay=config.ema_decay)
    return state, step


def test_warmup_starts_at_zero_lr_and_ema_recursion():
    config = TrainConfig(steps=50, warmup_steps=10, lr=1e-2, ema_decay=0.9)
    state, step = _setup(config)
    batch = jnp.asarray(_gaussian_data().train[:32])
    params = [state.params]
    ema = state.params
    for k in range(6):
        state, metrics = step(state, batch)
        params.append(state.params)
        decay = min(0.9, (2.0 + k) / (11.0 + k))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, state.params)
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    # Step 1 runs at lr = 0 (warm-up from zero; AdamW's decay is scaled by lr too).
    jax.tree.map(np.testing.assert_array_equal, params[1], params[0])
    assert any(float(jnp.max(jnp.abs(a - b))) > 0
               for a, b in zip(jax.tree.leaves(params[2]), jax.tree.leaves(params[1])))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 state.ema_params, ema)
    assert int(state.step) == 6 and state.step.dtype == jnp.int32
    assert step._cache_size() == 1  # traced once


def test_learning_rate_schedule_shape():
    lr = learning_rate(TrainConfig(steps=110, warmup_steps=10, lr=1.0))
    np.testing.assert_allclose(float(lr(0)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(lr(5)), 0.5, rtol=1e-5)   # half-way through warm-up
    np.testing.assert_allclose(float(lr(10)), 1.0, rtol=1e-5)  # peak
    np.testing.assert_allclose(float(lr(60)), 0.01 + 0.99 * 0.5, rtol=1e-4)  # half the cosine
    np.testing.assert_allclose(float(lr(110)), 0.01, rtol=1e-4)


def test_fit_reaches_the_closed_form_minimum():
    # Data N(m, 0.5^2 I): the simple DSM loss is >= E_t[a^2 s^2 / (a^2 s^2 + sigma^2)].
    data = _gaussian_data(std=0.5)
    sched = schedules.vp_linear()
    spec = DiffusionSpec(model=SMALL, schedule=schedule_to_dict(sched))
    config = TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup_steps=20, log_every=400)
    out = io.StringIO()
    result = fit(spec, data, config, progress="auto", stream=out)
    x, w = np.polynomial.legendre.leggauss(400)
    t = 0.5 * (1 - 1e-3) * x + 0.5 * (1 + 1e-3)
    a2, s2 = np.asarray(sched.alpha(t)) ** 2, np.asarray(sched.sigma(t)) ** 2
    minimum = 0.5 * np.sum(w * a2 * 0.25 / (a2 * 0.25 + s2))
    initial = float(np.mean(1.0 - 0 * t))  # a zero-output model has loss E|eps|^2/d = 1
    final = result.history[-1]["test_loss"]
    assert final > minimum - 0.02  # cannot beat the Bayes optimum (up to MC noise)
    assert final - minimum < 0.1 * (initial - minimum), (final, minimum)
    # Not a TTY: plain log lines with loss and throughput.
    text = out.getvalue()
    assert "step 400/400 loss=" in text and "steps/s=" in text and "test_loss=" in text
    assert result.steps_per_s > 0 and int(result.state.step) == 400


def test_progress_modes():
    data = _gaussian_data(n=256)
    spec = DiffusionSpec(model=SMALL, schedule=schedule_to_dict(schedules.vp_linear()))
    config = TrainConfig(steps=4, batch_size=8, log_every=2)
    bar = io.StringIO()
    fit(spec, data, config, progress="bar", stream=bar)
    assert "4/4" in bar.getvalue() and "loss=" in bar.getvalue()
    quiet = io.StringIO()
    early = fit(spec, data, TrainConfig(steps=1000, batch_size=8), progress="none",
                max_seconds=0.0, stream=quiet)
    assert int(early.state.step) == 1 and quiet.getvalue() == ""
    assert [h["step"] for h in early.history] == [1, 1]  # the log line and the final eval
    with pytest.raises(ValueError, match="progress"):
        fit(spec, data, config, progress="fancy")
    with pytest.raises(ValueError, match="until"):
        fit(spec, data, config, until=5)


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"batch_size": 2.5}, "batch_size"), ({"clip_norm": -1.0}, "clip_norm"),
    # Issue 10: non-finite values used to pass (lr=inf passes lr > 0) and turn the run NaN;
    # strings and None used to fail with Python's comparison error, not naming the field.
    ({"lr": float("inf")}, r"lr must be in \(0.0, inf\), got lr=inf"),
    ({"weight_decay": float("nan")}, "weight_decay.*got weight_decay=nan"),
    ({"weight_decay": -1.0}, "weight_decay.*got weight_decay=-1.0"),
    ({"lr": "0.1"}, "lr must be a real number, got lr='0.1'"),
    ({"ema_decay": None}, "ema_decay must be a real number"),
])
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


def test_config_is_stored_as_python_numbers():
    config = TrainConfig(lr=np.float32(1e-3), clip_norm=float("inf"), steps=np.int64(10))
    assert type(config.lr) is float and type(config.steps) is int
    assert config.clip_norm == float("inf")  # no clipping


def _blob(n=512, poison=None):
    rng = np.random.default_rng(0)
    train = (rng.standard_normal((n, 2)) * 0.5 + 1.0).astype(np.float32)
    if poison is not None:
        train[poison[0]] = poison[1]
    return Dataset("blob", train, train[:64].copy(), "points")


BLOB_SPEC = DiffusionSpec(model={"name": "mlp", "hidden": 16, "depth": 1},
                          schedule=schedule_to_dict(schedules.vp_linear()),
                          data={"name": "blob", "shape": [2], "kind": "points"})


def test_nonfinite_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path):
    """Issue 10, category 1 (fault injection): a finite row so large that the loss
    overflows, first drawn by batch k. Training stops at step k + 1 naming it and the row,
    the state of step k is saved, and no non-finite checkpoint rotates the finite ones out
    (keep=2, a checkpoint every 4 steps)."""
    first = {}
    for step in range(20):
        for row in batch_indices(512, step, 16, 0).tolist():
            first.setdefault(row, step)
    row, k = min(((r, s) for r, s in first.items() if 9 <= s < 12), key=lambda rs: rs[1])
    config = TrainConfig(steps=20, batch_size=16, warmup_steps=2, ckpt_every=4, keep=2)
    data = _blob(poison=(row, 1e30))
    with pytest.raises(FloatingPointError,
                       match=rf"non-finite .* at step {k + 1}, the update with batch {k} .*"
                             rf"1e\+30, is in row {row}\). The parameters of step {k} are the "
                             rf"last finite ones; they are saved as step {k}"):
        fit(BLOB_SPEC, data, config, ckpt_dir=tmp_path, progress="none")
    assert latest_step(tmp_path) == k
    model = load_model(tmp_path)
    assert model.info["step"] == k and all(np.isfinite(v).all()
                                           for v in jax.tree.leaves(model.params))
    state, _ = restore_checkpoint(tmp_path, step=8)  # the older finite checkpoint survives
    assert int(state["step"]) == 8
    # Deterministic: resuming stops at the same step, without writing anything new.
    with pytest.raises(FloatingPointError, match=f"at step {k + 1},"):
        fit(BLOB_SPEC, data, config, ckpt_dir=tmp_path, progress="none")
    assert latest_step(tmp_path) == k


def test_a_nonfinite_step_leaves_the_state_unchanged():
    config = TrainConfig(steps=10, warmup_steps=0, lr=1e-2)
    state, step = _setup(config)
    batch = jnp.asarray(_gaussian_data().train[:32])
    new, metrics = step(state, batch.at[3, 0].set(jnp.nan))
    assert not bool(metrics["finite"]) and int(new.step) == 0
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
    new, metrics = step(state, batch)
    assert bool(metrics["finite"]) and int(new.step) == 1


@pytest.mark.parametrize("data, err, match", [
    (_blob(poison=(7, np.nan)), ValueError,
     r"data.train has non-finite values \(NaN/inf\) in 1 row\(s\); the first is row 7"),
    (_blob()._replace(test=np.full((4, 2), np.inf, np.float32)), ValueError,
     "data.test has non-finite values"),
    (Dataset("blob", np.ones((64, 3), np.float32), np.ones((8, 3), np.float32), "points"),
     ValueError, r"sample shape \(3,\) is not the shape \(2,\) the spec records"),
    (Dataset("blob", np.ones((64, 2), np.int64), np.ones((8, 2), np.int64), "points"),
     TypeError, "data.train must be floating point, got dtype int64"),
    (Dataset("blob", np.ones((64, 2), np.float32), np.ones((8, 3), np.float32), "points"),
     ValueError, r"data.test samples have shape \(3,\)"),
])
def test_data_is_checked_before_the_first_step(tmp_path, data, err, match):
    """Issue 10: bad data is refused before any training (it used to train and fail in Flax
    at sampling time, or turn the loss NaN when the row was drawn)."""
    with pytest.raises(err, match=match):
        fit(BLOB_SPEC, data, TrainConfig(steps=3, batch_size=8), ckpt_dir=tmp_path,
            progress="none")
    assert latest_step(tmp_path) is None
