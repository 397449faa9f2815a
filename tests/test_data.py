"""Datasets: procedural toy sets (deterministic, with their defining geometry), the digits
split, user arrays, and stateless mini-batches."""

import numpy as np
import pytest

from deis_jax.training import array_dataset, get_batch, load_dataset, toy_2d
from deis_jax.training.data import TOY_2D, digit_labels


@pytest.mark.parametrize("name", list(TOY_2D))
def test_toy_sets_are_deterministic_and_finite(name):
    a, b, c = toy_2d(name, 500, seed=1), toy_2d(name, 500, seed=1), toy_2d(name, 500, seed=2)
    assert a.shape == (500, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert 0.3 < a.std() < 3.0


def test_toy_geometry():
    cb = toy_2d("checkerboard", 4000)
    assert np.all(np.abs(cb) <= 2)
    assert np.all((np.floor(cb[:, 0]) + np.floor(cb[:, 1])) % 2 == 0)  # only "black" squares
    g8 = toy_2d("eight_gaussians", 4000)
    angles = 2 * np.pi * np.arange(8) / 8
    centers = 2 * np.stack([np.cos(angles), np.sin(angles)], 1)
    dist = np.linalg.norm(g8[:, None] - centers[None], axis=-1)
    assert np.all(dist.min(1) < 0.15 * 5)
    counts = np.bincount(dist.argmin(1), minlength=8)
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500
    moons = toy_2d("two_moons", 4000)
    assert abs(np.mean(moons[:, 0])) < 0.1


def test_digits_split():
    d = load_dataset("digits")
    assert d.kind == "images" and d.shape == (8, 8, 1)
    assert d.train.shape[0] + d.test.shape[0] == 1797 and d.test.shape[0] == 359
    assert d.train.min() == -1.0 and d.train.max() == 1.0
    # Disjoint split (no held-out image is a training image, up to exact duplicates in sklearn).
    train = {x.tobytes() for x in d.train}
    assert np.mean([x.tobytes() in train for x in d.test]) < 0.02
    y_train, y_test = digit_labels()
    assert y_train.shape[0] == d.train.shape[0] and set(np.unique(y_test)) == set(range(10))
    np.testing.assert_array_equal(load_dataset("digits").test, d.test)


def test_array_dataset_and_batches():
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    d = array_dataset(x, test_fraction=0.2)
    assert d.train.shape == (80, 2) and d.test.shape == (20, 2) and d.kind == "points"
    assert sorted(np.r_[d.train[:, 0], d.test[:, 0]]) == sorted(x[:, 0])
    b1 = get_batch(d.train, 7, 16, seed=3)
    np.testing.assert_array_equal(b1, get_batch(d.train, 7, 16, seed=3))  # stateless
    assert not np.array_equal(b1, get_batch(d.train, 8, 16, seed=3))
    assert array_dataset(np.zeros((10, 8, 8, 1)), np.zeros((2, 8, 8, 1))).kind == "images"
    with pytest.raises(ValueError, match="train"):
        array_dataset(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="test"):
        array_dataset(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("mnist")
