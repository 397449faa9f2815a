"""The pretrained models shipped in ``deis_jax/assets/pretrained``: each loads, samples well,
and its record matches its recipe in :data:`deis_jax.pretrained.RECIPES`."""

import jax
import numpy as np
import pytest

from deis_jax import cli, pretrained, sample
from deis_jax.evaluate import draw_samples
from deis_jax.training import (
    digit_classifier, energy_distance, in_squares, load_dataset, load_model, toy_2d)
from deis_jax.training.data import TOY_2D


@pytest.mark.parametrize("name", list(pretrained.RECIPES))
def test_record_matches_the_recipe(name):
    """The recorded spec and training config are exactly what ``deis-jax train *recipe``
    builds, and the parameters are those of its last step."""
    assert name in pretrained.available()
    rec = pretrained.record(name)
    recipe = pretrained.RECIPES[name]
    assert rec["recipe"] == list(recipe)
    args = cli.build_parser().parse_args(["train", *recipe, "--out", "unused"])
    _, spec, config = cli.train_plan(args)
    assert rec["spec"] == spec.to_dict()
    assert {k: rec["config"][k] for k in ("steps", "batch_size", "lr", "seed")} == {
        "steps": config.steps, "batch_size": config.batch_size, "lr": config.lr,
        "seed": config.seed}
    assert rec["step"] == config.steps
    assert 0 < rec["train_seconds"] <= rec["wall_seconds"]


@pytest.mark.parametrize("name", ["checkerboard", "swiss_roll", "two_moons", "eight_gaussians",
                                  "pinwheel"])
def test_each_2d_model_samples_its_distribution(name):
    """tAB3 at NFE 10 from the shipped parameters lands near held-out data: an energy distance
    within 4x that of a fresh draw of the data (the estimator's noise floor at 1,000 points;
    measured 1.0-3.4x), where the other toys' data score 5x or more; the checkerboard's
    samples fall in its squares."""
    model = pretrained.load(name)
    assert (model.info["spec"].data["name"] == name
            and model.info["step"] == pretrained.record(name)["step"])
    data = load_dataset(name, n_train=8, n_test=1000)
    floor = energy_distance(toy_2d(name, 1000, seed=7), data.test)
    x = draw_samples(model, 1000, solver="tab3", nfe=10, grid="log_snr")
    assert energy_distance(x, data.test) < 4 * floor
    for other in set(TOY_2D) - {name}:
        assert energy_distance(toy_2d(other, 1000, seed=7), data.test) > 5 * floor
    if name == "checkerboard":
        assert in_squares(x) > 0.9


def test_digit_models_sample_recognisable_digits():
    """The unconditional U-Net's digits are recognised by the shipped classifier, and the
    conditional one, asked for a 3, draws threes."""
    clf = digit_classifier()
    model = pretrained.load("digits")
    x = draw_samples(model, 128, solver="tab3", nfe=10, grid="log_snr")
    probs = np.asarray(clf.probs(x))
    assert np.mean((probs.argmax(-1) < 10) & (probs.max(-1) > 0.5)) > 0.8
    cond = pretrained.load("digits_conditional")
    assert cond.info["spec"].num_classes == 10
    x3 = draw_samples(cond, 128, solver="tab3", nfe=10, grid="log_snr", label=3, guidance=1.0)
    assert np.mean(np.asarray(clf.probs(x3)).argmax(-1) == 3) > 0.8


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError, match=r"no pretrained model named 'digit'; available: "
                       r"\['digits', 'digits_conditional', 'checkerboard'"):
        pretrained.load("digit")


def test_export_round_trip(tmp_path):
    """A checkpoint exported as an asset loads with the same EMA parameters, spec and
    samples."""
    ckpt, assets = tmp_path / "run", tmp_path / "assets"
    recipe = ("--data", "two_moons", "--steps", "3", "--seed", "1")
    assert cli.main(["train", *recipe, "--out", str(ckpt), "--progress", "none"]) == 0
    rec = pretrained.export(ckpt, "moons3", recipe=recipe, wall_seconds=9.0,
                            directory=str(assets))
    assert rec["step"] == 3 and rec["command"].startswith("deis-jax train --data two_moons")
    loaded, direct = pretrained.load("moons3", directory=str(assets)), load_model(ckpt)
    assert loaded.info["spec"] == direct.info["spec"]
    assert loaded.network.__self__ == direct.network.__self__  # equal Flax modules
    for a, b in zip(jax.tree.leaves(loaded.params),
                    jax.tree.leaves(direct.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x_T = loaded.schedule.prior_sample(jax.random.key(0), (8, 2))
    np.testing.assert_array_equal(
        np.asarray(sample(loaded, x_T, solver="tab3", nfe=5)),
        np.asarray(sample(direct, x_T, solver="tab3", nfe=5)))
