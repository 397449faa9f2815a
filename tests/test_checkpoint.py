"""Checkpoints: exact resume, keep-last-n, atomicity, the recorded spec, load-and-sample,
fallback past damaged steps, refusal of foreign directories and of mismatched resumes."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deis_jax
from deis_jax import schedules
from deis_jax.sampling import _run
from deis_jax.training import (
    DiffusionSpec, TrainConfig, array_dataset, fit, latest_step, load_model,
    restore_checkpoint, schedule_from_dict, schedule_to_dict)

SPEC = DiffusionSpec(model={"name": "mlp", "hidden": 16, "depth": 1},
                     schedule=schedule_to_dict(schedules.vp_linear()),
                     data={"name": "blob", "shape": [2], "kind": "points"})


def _data():
    rng = np.random.default_rng(0)
    return array_dataset(rng.standard_normal((512, 2)) * 0.5 + 1.0, test_fraction=0.25)


def _assert_same_state(a, b):
    """Bitwise equal parameters, EMA, optimizer moments and PRNG key."""
    for x, y in zip(jax.tree.leaves((a.params, a.ema_params, a.opt_state)),
                    jax.tree.leaves((b.params, b.ema_params, b.opt_state))):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))


def test_exact_resume(tmp_path):
    config = TrainConfig(steps=40, batch_size=32, warmup_steps=5, ckpt_every=10, keep=2,
                         ema_decay=0.9)
    data = _data()
    full = fit(SPEC, data, config, ckpt_dir=tmp_path / "full", progress="none")
    first = fit(SPEC, data, config, ckpt_dir=tmp_path / "split", until=20, progress="none")
    assert int(first.state.step) == 20 and latest_step(tmp_path / "split") == 20
    resumed = fit(SPEC, data, config, ckpt_dir=tmp_path / "split", progress="none")
    assert int(resumed.state.step) == 40
    _assert_same_state(full.state, resumed.state)
    # keep=2 with a checkpoint every 10 steps: only the last two remain.
    steps = sorted(int(d) for d in os.listdir(tmp_path / "full") if d.isdigit())
    assert steps == [30, 40]
    # The template restore gives back the same pytree types, at the requested step.
    state, meta = restore_checkpoint(tmp_path / "full", full.state, step=30)
    assert type(state) is type(full.state) and int(state.step) == 30
    assert meta["config"]["steps"] == 40 and meta["spec"] == SPEC


def test_incomplete_save_is_ignored(tmp_path):
    fit(SPEC, _data(), TrainConfig(steps=3, batch_size=8), ckpt_dir=tmp_path, progress="none")
    # A save interrupted mid-write leaves only orbax's temporary directory behind.
    os.makedirs(tmp_path / "7.orbax-checkpoint-tmp-1234" / "state")
    assert latest_step(tmp_path) == 3
    assert load_model(tmp_path).info["step"] == 3


def test_load_model_samples_from_the_path_alone(tmp_path):
    fit(SPEC, _data(), TrainConfig(steps=5, batch_size=8), ckpt_dir=tmp_path, progress="none")
    m = load_model(tmp_path)
    assert m.info["spec"] == SPEC and m.prediction == "eps" and m.info["step"] == 5
    np.testing.assert_allclose(m.schedule.alpha(0.3), schedules.vp_linear().alpha(0.3))
    x_T = m.schedule.prior_sample(jax.random.key(0), (8, 2))
    x = deis_jax.sample(m, x_T, solver="tab3", nfe=6)
    assert x.shape == (8, 2) and bool(jnp.all(jnp.isfinite(x)))
    raw = load_model(tmp_path, ema=False)
    assert any(float(jnp.max(jnp.abs(a - b))) > 0
               for a, b in zip(jax.tree.leaves(raw.params), jax.tree.leaves(m.params)))


@pytest.mark.parametrize("schedule", [
    schedules.vp_linear(0.2, 15.0), schedules.vp_cosine(), schedules.sub_vp(),
    schedules.ve(0.02, 30.0), schedules.edm(sigma_data=0.3),
    schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 50)),
], ids=lambda s: s.name)
def test_schedule_record_round_trip(schedule):
    back = schedule_from_dict(schedule_to_dict(schedule))
    assert back.name == schedule.name and back.t_min == schedule.t_min
    t = jnp.linspace(schedule.t_min, schedule.t_max, 7)
    np.testing.assert_allclose(back.alpha(t), schedule.alpha(t), rtol=1e-6)
    np.testing.assert_allclose(back.sigma(t), schedule.sigma(t), rtol=1e-6)


def _sampling_spec(loss: str) -> DiffusionSpec:
    sched = {"dsm": schedules.vp_linear(), "edm": schedules.edm(),
             "ddpm": schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 100))}[loss]
    return DiffusionSpec(model={"name": "mlp", "hidden": 8, "depth": 1},
                         schedule=schedule_to_dict(sched), loss=loss)


def _init(spec: DiffusionSpec, seed: int):
    params = spec.build_model().init(jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    # The output layer starts at zero; perturb every leaf so that the networks differ.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                              for p, k in zip(leaves, keys)])


@pytest.mark.parametrize("loss,prediction", [("edm", "edm"), ("ddpm", "eps")])
def test_spec_as_model_wraps_the_network(loss, prediction):
    spec = _sampling_spec(loss)
    params = _init(spec, 0)
    model = spec.as_model(params)
    assert model.prediction == prediction and model.info["spec"] == spec
    x = jnp.ones((3, 2))
    if loss == "ddpm":  # queried at the real-valued DDPM step n = N t - 1
        assert model.timestep == "index"
        np.testing.assert_allclose(model.output(x, jnp.full((3,), 0.5)),
                                   spec.build_model().apply(params, x, jnp.full((3,), 49.0)),
                                   rtol=1e-6)
    else:  # preconditioned: D(y, rho) -> y as rho -> 0 (alpha = 1 under EDM)
        t = model.schedule.t_from_rho(jnp.full((3,), 1e-4))
        np.testing.assert_allclose(model.output(x, t), x, rtol=1e-3)


def _assert_one_executable(draw, a, b):
    """``draw(a)`` compiles; ``draw(b)`` and ``draw(a)`` again add no executable to the
    sampler's cache, ``b`` gives other samples and ``a`` the same ones."""
    first = draw(a)
    compiled = _run._cache_size()
    second, again = draw(b), draw(a)
    assert _run._cache_size() == compiled
    assert float(jnp.max(jnp.abs(second - first))) > 0
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("loss", ["dsm", "edm", "ddpm"])
def test_rebuilt_model_with_new_parameters_reuses_the_sampler(loss):
    spec = _sampling_spec(loss)
    x_T = spec.build_schedule().prior_sample(jax.random.key(0), (8, 2))

    def draw(params):  # rebuilds the model and the schedule, as an evaluation does
        return deis_jax.sample(spec.as_model(params), x_T, solver="tab3", nfe=6)

    _assert_one_executable(draw, _init(spec, 0), _init(spec, 1))


def test_freshly_loaded_models_reuse_the_sampler(tmp_path):
    for seed in (0, 1):
        fit(SPEC, _data(), TrainConfig(steps=5, batch_size=8, seed=seed),
            ckpt_dir=tmp_path / str(seed), progress="none")
    x_T = schedules.vp_linear().prior_sample(jax.random.key(0), (8, 2))

    def draw(seed):
        return deis_jax.sample(load_model(tmp_path / str(seed)), x_T, solver="tab3", nfe=6)

    _assert_one_executable(draw, 0, 1)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_model(tmp_path)
    fit(SPEC, _data(), TrainConfig(steps=2, batch_size=8), ckpt_dir=tmp_path, progress="none")
    with pytest.raises(FileNotFoundError, match=r"step=5.*available: \[2\]"):
        load_model(tmp_path, step=5)
    with pytest.raises(ValueError, match="vp_discrete"):
        DiffusionSpec(model=SPEC.model, schedule=SPEC.schedule, loss="ddpm")
    with pytest.raises(ValueError, match="schedule"):
        schedule_from_dict({"name": "vp_quadratic", "params": {}, "t_min": 0.1, "t_max": 1})


# ------------------------------------------------------------ issue 10, category 2


def _damage(path, step, item=None):
    """Cut every array file of checkpoint ``step`` (of its ``item`` only, if given) in half."""
    root = path / str(step) / (item or "")
    for f in root.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_damaged_newest_step_falls_back_and_resumes_bitwise(tmp_path):
    """A truncated newest step: load_model warns and uses the previous step; resuming moves
    the damaged step aside, restarts from the previous one and reaches bitwise the
    parameters, optimizer state, EMA and key of an uninterrupted run."""
    config = TrainConfig(steps=20, batch_size=16, warmup_steps=2, ckpt_every=5, keep=3,
                         ema_decay=0.9)
    data = _data()
    full = fit(SPEC, data, config, ckpt_dir=tmp_path / "full", progress="none")
    split = tmp_path / "split"
    fit(SPEC, data, config, ckpt_dir=split, until=15, progress="none")
    _damage(split, 15)
    with pytest.warns(UserWarning, match=r"step 15 in ckpt=.* cannot be read \(.*\); using "
                                         "step 10"):
        assert load_model(split).info["step"] == 10
    with pytest.warns(UserWarning, match="moved the unreadable checkpoint step 15"):
        resumed = fit(SPEC, data, config, ckpt_dir=split, progress="none")
    assert (split / "15.damaged").is_dir() and latest_step(split) == 20
    _assert_same_state(full.state, resumed.state)


def test_load_model_reads_only_what_sampling_needs(tmp_path):
    """Damage confined to the optimizer state does not block sampling; resuming (which needs
    it) falls back to the previous step."""
    fit(SPEC, _data(), TrainConfig(steps=10, batch_size=8, ckpt_every=5), ckpt_dir=tmp_path,
        progress="none")
    _damage(tmp_path, 10, "train")
    assert load_model(tmp_path).info["step"] == 10
    with pytest.warns(UserWarning, match="step 10 .* cannot be read .* using step 5"):
        state, meta = restore_checkpoint(tmp_path)
    assert int(state["step"]) == 5 and meta["skipped"][0][0] == 10
    with pytest.raises(ValueError, match=r"step=10 in ckpt=.* cannot be read .*available "
                                         r"steps: \[5, 10\]"):
        restore_checkpoint(tmp_path, step=10)
    _damage(tmp_path, 5)
    with pytest.raises(ValueError, match="no intact checkpoint in ckpt=.*step 10: .*step 5: "):
        restore_checkpoint(tmp_path)


def test_directories_that_are_not_ours_are_refused(tmp_path):
    for s in ("1", "2"):
        (tmp_path / "other" / s).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"not a deis_jax checkpoint directory \(it has no "
                                         "deis_jax_checkpoint.json"):
        load_model(tmp_path / "other")
    with pytest.raises(ValueError, match="not a deis_jax checkpoint directory"):
        fit(SPEC, _data(), TrainConfig(steps=2, batch_size=8), ckpt_dir=tmp_path / "other",
            progress="none")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="ckpt_dir=.*is a file, not a directory"):
        fit(SPEC, _data(), TrainConfig(steps=2, batch_size=8), ckpt_dir=tmp_path / "file",
            progress="none")
    with pytest.raises(ValueError, match="cannot be created: .* is a file"):
        fit(SPEC, _data(), TrainConfig(steps=2, batch_size=8),
            ckpt_dir=tmp_path / "file" / "run", progress="none")


@pytest.fixture(scope="module")
def run10(tmp_path_factory):
    """A 10-step run (a checkpoint every 5 steps), copied by the tests that change it."""
    path = tmp_path_factory.mktemp("run10") / "ckpt"
    fit(SPEC, _data(), TrainConfig(steps=10, batch_size=8, warmup_steps=2, ckpt_every=5),
        ckpt_dir=path, progress="none")
    return path


@pytest.mark.parametrize("spec, config, match", [
    (dataclasses.replace(SPEC, model={**SPEC.model, "hidden": 32}), {},
     "different model/schedule/loss .*spec.model.hidden: 16 in the checkpoint, 32 now"),
    (SPEC, {"lr": 1e-3}, r"other settings \(lr: 0.002 in the checkpoint, 0.001 now\)"),
    (SPEC, {"batch_size": 16, "seed": 1},
     "batch_size: 8 in the checkpoint, 16 now; seed: 0 in the checkpoint, 1 now"),
    (SPEC, {"steps": 5}, "already holds step 10, beyond steps=5: nothing to train"),
])
def test_resume_compares_the_recorded_spec_and_config_first(run10, spec, config, match):
    """Another model used to fail in orbax with a shape error; another lr, batch size or seed
    was silently accepted; fewer steps than recorded claimed to have trained."""
    base = dict(steps=10, batch_size=8, warmup_steps=2, ckpt_every=5)
    with pytest.raises(ValueError, match=match):
        fit(spec, _data(), TrainConfig(**{**base, **config}), ckpt_dir=run10, progress="none")
    assert latest_step(run10) == 10


def test_resume_may_change_the_schedule_length_with_a_warning(run10, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(run10, path)
    same = fit(SPEC, _data(), TrainConfig(steps=10, batch_size=8, warmup_steps=2, ckpt_every=5,
                                          log_every=1, keep=1), ckpt_dir=path, progress="none")
    assert int(same.state.step) == 10  # already there: nothing trained, nothing refused
    with pytest.warns(UserWarning, match=r"schedule length \(steps: 10 -> 12\)"):
        longer = fit(SPEC, _data(), TrainConfig(steps=12, batch_size=8, warmup_steps=2,
                                                ckpt_every=5), ckpt_dir=path, progress="none")
    assert int(longer.state.step) == 12


def test_template_and_parameter_checks(run10):
    from deis_jax.models import MLPScore
    from deis_jax.training import checkpoint_manager, init_state, make_optimizer, save_checkpoint

    opt = make_optimizer(TrainConfig())
    other = init_state(MLPScore(hidden=8, depth=1), opt, jnp.zeros((1, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"template does not match checkpoint step 10 .*"
                                         r"ema_params.params.Dense_0.bias: \(8,\) in the "
                                         r"template, \(16,\) in the checkpoint"):
        restore_checkpoint(run10, other)
    bad = other._replace(params=jax.tree.map(lambda p: p * jnp.nan, other.params))
    manager = checkpoint_manager(run10)
    with pytest.raises(ValueError, match="refusing to save step 0: its parameters hold "
                                         "non-finite values"):
        save_checkpoint(manager, bad, SPEC)
    manager.close()
