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
    DiffusionSpec, TrainConfig, array_dataset, fit, init_state, make_loss, make_optimizer,
    make_train_step, schedule_to_dict)
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
])
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)
