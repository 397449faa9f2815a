"""Class-conditional networks and training: the label embedding, the null label, label
dropout, the spec and checkpoint records, the labelled data, and the guided sampling entry
point's checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import schedules
from deis_jax.evaluate import draw_samples, guided_model
from deis_jax.models import MLPScore, UNet, model_from_config
from deis_jax.training import (
    DiffusionSpec, TrainConfig, array_dataset, default_spec, fit, load_dataset,
    load_model, make_loss, schedule_to_dict)
from deis_jax.training.losses import drop_labels
from deis_jax.training.trainer import _check_resume, _objective


def _randomize(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("model,shape,width", [
    (MLPScore(hidden=32, depth=2, num_classes=3), (6, 2), 32),
    (UNet(channels=(8, 16), emb_dim=32, num_classes=3), (6, 8, 8, 1), 32),
])
def test_label_reaches_the_output_and_no_label_is_the_null_label(model, shape, width):
    x = jax.random.normal(jax.random.key(0), shape)
    t = jnp.full((shape[0],), 0.4)
    params = _randomize(model.init(jax.random.key(1), x[:1], t[:1]), jax.random.key(2))
    table = params["params"]["label_embedding"]["embedding"]
    assert table.shape == (3 + 1, width)  # C classes + the null label
    apply = jax.jit(model.apply)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    out = apply(params, x, t, labels)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    # Every label changes the output, per sample.
    other = apply(params, x, t, (labels + 1) % 3)
    assert float(jnp.min(jnp.max(jnp.abs(other - out).reshape(shape[0], -1), axis=1))) > 1e-4
    # The unconditional call is exactly the null label's.
    null = apply(params, x, t, jnp.full((shape[0],), 3))
    np.testing.assert_array_equal(apply(params, x, t), null)
    # A label acts only on its own sample.
    mixed = apply(params, x, t, labels.at[1:].set(3))
    np.testing.assert_array_equal(mixed[0], out[0])


def test_unconditional_networks_keep_their_parameters_and_refuse_labels():
    x, t = jnp.zeros((1, 2)), jnp.zeros((1,))
    plain = MLPScore(hidden=8, depth=1).init(jax.random.key(0), x, t)
    cond = MLPScore(hidden=8, depth=1, num_classes=4).init(jax.random.key(0), x, t)
    extra = set(cond["params"]) - set(plain["params"])
    assert extra == {"label_embedding"}  # the same layers otherwise (old checkpoints load)
    shapes = jax.tree.map(jnp.shape, plain["params"])
    assert shapes == jax.tree.map(jnp.shape, {k: v for k, v in cond["params"].items()
                                              if k != "label_embedding"})
    with pytest.raises(ValueError, match="unconditional .num_classes=None. and takes no label"):
        MLPScore(hidden=8, depth=1).apply(plain, x, t, jnp.zeros((1,), int))
    assert model_from_config({"name": "unet", "num_classes": 10}).num_classes == 10
    with pytest.raises(ValueError, match="num_classes"):
        model_from_config({"name": "unet", "num_classes": 0})


def test_drop_labels_rate_and_kept_labels():
    n, p = 200_000, 0.1
    labels = jnp.arange(n) % 10
    out = drop_labels(jax.random.key(0), labels, p, 10)
    dropped = np.asarray(out == 10)
    # Binomial(n, p): 4 standard deviations are 0.0027.
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(np.asarray(out)[~dropped], np.asarray(labels)[~dropped])
    np.testing.assert_array_equal(drop_labels(jax.random.key(0), labels, 0.0, 10), labels)


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_label_dropout_trains_the_null_label(p):
    """The null label's embedding row gets a gradient exactly when labels are dropped; the
    rows of the classes in the batch get one either way, the others none."""
    model = MLPScore(hidden=16, depth=1, num_classes=4)
    x0 = jax.random.normal(jax.random.key(0), (64, 2))
    labels = jnp.arange(64) % 2  # classes 0 and 1 only
    params = _randomize(model.init(jax.random.key(1), x0[:1], jnp.zeros((1,))),
                        jax.random.key(3))  # the zero output layer would stop every gradient
    objective = _objective(model, make_loss("dsm", schedules.vp_linear()), p)
    grads = jax.grad(objective)(params, (x0, labels), jax.random.key(2))
    row_norms = np.abs(np.asarray(grads["params"]["label_embedding"]["embedding"])).sum(1)
    assert row_norms[0] > 0 and row_norms[1] > 0
    np.testing.assert_array_equal(row_norms[2:4], 0.0)
    assert (row_norms[4] > 0) == (p > 0)


def _cond_spec(**kwargs):
    return DiffusionSpec(model={"name": "mlp", "hidden": 16, "depth": 1, "num_classes": 2},
                         schedule=schedule_to_dict(schedules.vp_linear()),
                         data={"name": "custom", "shape": [2], "kind": "points"}, **kwargs)


def test_spec_records_and_checks_label_dropout():
    spec = _cond_spec(label_dropout=0.2)
    assert spec.num_classes == 2 and spec.to_dict()["label_dropout"] == 0.2
    assert DiffusionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"label_dropout=0.1 needs a class-conditional"):
        DiffusionSpec(model={"name": "mlp"}, schedule=spec.schedule, label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        _cond_spec(label_dropout=1.0)
    # A record written before labels existed reads as an unconditional spec, and resuming
    # its run is not refused for the missing field.
    old = {k: v for k, v in dataclasses.asdict(spec).items() if k != "label_dropout"}
    old["model"] = {"name": "mlp", "hidden": 16, "depth": 1}
    loaded = DiffusionSpec.from_dict(old)
    assert loaded.label_dropout == 0.0 and loaded.num_classes is None
    _check_resume(loaded, TrainConfig(), "dir", {"spec": old})


def test_digits_carry_their_labels_and_unlabelled_data_is_refused():
    data = load_dataset("digits")
    assert data.n_classes == 10 and data.train_labels.shape == (len(data.train),)
    assert np.bincount(data.test_labels).min() > 20  # every class in the test split
    with pytest.raises(ValueError, match="dataset 'checkerboard' has no labels"):
        default_spec(load_dataset("checkerboard", n_train=8, n_test=8), conditional=True)
    points = array_dataset(np.zeros((16, 2)))
    with pytest.raises(ValueError, match="class-conditional .num_classes=2. but the dataset "
                                         "'custom' has no labels"):
        fit(_cond_spec(label_dropout=0.1), points, TrainConfig(steps=1), progress="none")
    bad = points._replace(train_labels=np.full(len(points.train), 2),
                          test_labels=np.zeros(len(points.test), int))
    with pytest.raises(ValueError, match=r"labels up to 2, outside the model's \[0, "
                                         r"num_classes\) = \[0, 2\)"):
        fit(_cond_spec(), bad, TrainConfig(steps=1), progress="none")
    with pytest.raises(ValueError, match=r"train_labels must have shape \(14,\)"):
        fit(_cond_spec(), bad._replace(train_labels=np.zeros(3, int)), TrainConfig(steps=1),
            progress="none")
    with pytest.raises(ValueError, match=r"labels must have shape \(16,\)"):
        array_dataset(np.zeros((16, 2)), labels=np.zeros(3, int))
    with pytest.raises(TypeError, match="test_labels must hold integers"):
        array_dataset(np.zeros((16, 2)), np.zeros((4, 2)), labels=np.zeros(16, int),
                      test_labels=np.zeros(4))


def _two_class_points(n=512):
    """Class 0 at (-2, 0), class 1 at (2, 0), small spread."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = np.stack([4.0 * y - 2.0, np.zeros(n)], 1) + 0.1 * rng.standard_normal((n, 2))
    data = array_dataset(x, labels=y, test_fraction=0.25)
    # The held-out rows keep their labels.
    np.testing.assert_array_equal(data.test_labels, (data.test[:, 0] > 0).astype(int))
    return data


def test_conditional_training_checkpoint_and_guided_sampling(tmp_path):
    data = _two_class_points()
    spec = _cond_spec(label_dropout=0.2)
    fit(spec, data, TrainConfig(steps=300, batch_size=128, lr=5e-3, log_every=300),
        ckpt_dir=tmp_path / "run", progress="none")
    model = load_model(tmp_path / "run")
    assert model.info["spec"] == spec
    # The label picks the class; unconditional samples cover both.
    for label in (0, 1):
        x = draw_samples(model, 200, solver="tab3", nfe=10, label=label, guidance=1.0)
        assert np.mean(np.sign(x[:, 0]) == (2 * label - 1)) > 0.95
    x = draw_samples(model, 400, solver="tab3", nfe=10)
    assert 0.2 < np.mean(x[:, 0] > 0) < 0.8


def test_guided_model_checks():
    cond = _cond_spec().as_model({})  # parameters are not needed to check the arguments
    plain = DiffusionSpec(model={"name": "mlp"}, schedule=_cond_spec().schedule).as_model({})
    assert guided_model(plain) is plain
    with pytest.raises(ValueError, match="model is unconditional"):
        guided_model(plain, 1)
    with pytest.raises(ValueError, match=r"label must lie in \[0, n_classes\) = \[0, 2\), "
                                         "got label=2"):
        guided_model(cond, 2, 1.0)
    with pytest.raises(ValueError, match="guidance"):
        guided_model(cond, 1, float("nan"))
    with pytest.raises(ValueError, match="guidance=2.0 needs a label"):
        guided_model(cond, None, 2.0)
