"""Datasets without downloads: procedural 2-d toy sets, scikit-learn's 8x8 digits, or any
user array; stateless, seed-and-step-indexed mini-batches (so a resumed run sees the same
batches as an uninterrupted one)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from deis_jax._checks import check_choice, check_int, check_type

__all__ = [
    "DATASETS",
    "TOY_2D",
    "Dataset",
    "array_dataset",
    "batch_indices",
    "check_dataset",
    "digit_labels",
    "get_batch",
    "load_dataset",
    "toy_2d",
]


class Dataset(NamedTuple):
    """A train/test split of float32 arrays with a leading sample axis.

    Attributes:
      name: dataset name (recorded in checkpoints).
      train: ``(n_train, *shape)`` training data.
      test: ``(n_test, *shape)`` held-out data (evaluation, quality metrics).
      kind: ``"points"`` (vectors: scatter plots, energy distance) or ``"images"`` (NHWC in
        ``[-1, 1]``: image grids, Frechet distance).
      train_labels, test_labels: integer class labels ``(n_train,)`` and ``(n_test,)`` in
        ``[0, n_classes)`` (conditional training), or None for unlabelled data.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    kind: str
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def n_classes(self) -> int | None:
        """Number of classes (``1 +`` the largest label), None for unlabelled data."""
        if self.train_labels is None:
            return None
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.train.shape[1:])


def _checkerboard(rng, n):
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + (np.floor(x1) % 2)
    return np.stack([x1, x2], axis=1)


def _swiss_roll(rng, n):
    theta = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))
    pts = np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=1) / 5.0
    return pts + 0.1 * rng.standard_normal((n, 2))


def _two_moons(rng, n):
    upper = rng.integers(0, 2, n).astype(bool)
    angle = np.pi * rng.uniform(0, 1, n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) * 1.5
    return pts + 0.08 * rng.standard_normal((n, 2))


def _eight_gaussians(rng, n):
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centers + 0.15 * rng.standard_normal((n, 2))


def _pinwheel(rng, n, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    arm = rng.integers(0, arms, n)
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    angle = 2 * np.pi * arm / arms + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], axis=1)
    return 2.0 * np.einsum("ni,nij->nj", feats, rot.reshape(n, 2, 2))


TOY_2D: dict[str, Callable] = {
    "checkerboard": _checkerboard,
    "swiss_roll": _swiss_roll,
    "two_moons": _two_moons,
    "eight_gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
}
DATASETS = (*TOY_2D, "digits")


def toy_2d(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 points of a procedural 2-d distribution, deterministic in ``seed``.

    All sets have a spread of about 1-2 per axis (no further normalisation).
    """
    check_choice("dataset", name, TOY_2D)
    n = check_int("n", n, minimum=1)
    return TOY_2D[name](np.random.default_rng(seed), n).astype(np.float32)


def _digits(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)  # (1797, 8, 8) in [0, 16]
    images = images[..., None] / 8.0 - 1.0
    perm = np.random.default_rng(seed).permutation(images.shape[0])
    n_test = int(round(test_fraction * images.shape[0]))
    return images[perm[n_test:]], images[perm[:n_test]]


def digit_labels(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class labels ``(train, test)`` matching ``load_dataset("digits")``'s split."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    perm = np.random.default_rng(seed).permutation(target.shape[0])
    n_test = int(round(test_fraction * target.shape[0]))
    return target[perm[n_test:]], target[perm[:n_test]]


def load_dataset(name: str, *, n_train: int = 50_000, n_test: int = 5_000,
                 test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name (no downloads).

    Args:
      name: one of :data:`DATASETS`: a 2-d toy set (unlabelled) or ``"digits"``
        (scikit-learn's 1,797 8x8 digit images scaled to ``[-1, 1]``, NHWC with one channel,
        with their labels 0-9).
      n_train, n_test: sizes of the toy sets (ignored for digits).
      test_fraction: held-out fraction of the digits.
      seed: generation / split seed.
    """
    check_choice("dataset", name, DATASETS)
    if name == "digits":
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction=}")
        train, test = _digits(test_fraction, seed)
        y_train, y_test = digit_labels(test_fraction, seed)
        return Dataset(name, train, test, "images", y_train.astype(np.int32),
                       y_test.astype(np.int32))
    train = toy_2d(name, n_train, seed)
    test = toy_2d(name, n_test, seed + 1)
    return Dataset(name, train, test, "points")


def array_dataset(train, test=None, *, labels=None, test_labels=None, name: str = "custom",
                  test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Wrap a user's array ``(n, *shape)`` (vectors, or NHWC images in ``[-1, 1]``).

    Without ``test`` a random ``test_fraction`` is held out (with its ``labels``). Arrays of
    rank 4 are treated as images, anything else as points. ``labels`` (integers ``(n,)``,
    one per row of ``train``; and ``test_labels`` with an explicit ``test``) make the data
    usable for class-conditional training.
    """
    train = _as_float32("train", train)
    if train.ndim < 2 or train.shape[0] < 2:
        raise ValueError(f"train must have shape (n >= 2, ...), got shape {train.shape}")
    if (test is None) and test_labels is not None:
        raise ValueError("test_labels needs test: without it the held-out labels are split "
                         "from labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != train.shape[:1]:
            raise ValueError(f"labels must have shape ({train.shape[0]},), one per row of "
                             f"train, got shape {labels.shape}")
        if test is not None and test_labels is None:
            raise ValueError("labels with an explicit test need test_labels too")
    if test is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction=}")
        perm = np.random.default_rng(seed).permutation(train.shape[0])
        n_test = max(1, int(round(test_fraction * train.shape[0])))
        train, test = train[perm[n_test:]], train[perm[:n_test]]
        if labels is not None:
            labels, test_labels = labels[perm[n_test:]], labels[perm[:n_test]]
    test = _as_float32("test", test)
    if test.shape[1:] != train.shape[1:]:
        raise ValueError(f"test samples have shape {test.shape[1:]}, train {train.shape[1:]}")
    data = Dataset(name, train, test, "images" if train.ndim == 4 else "points", labels,
                   None if test_labels is None else np.asarray(test_labels))
    _check_labels(data)
    return data


def _as_float32(name: str, values) -> np.ndarray:
    try:
        return np.asarray(values, np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers: {err}") from None


def batch_indices(n: int, step: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """Rows of mini-batch number ``step`` out of ``n``: ``batch_size`` indices drawn with
    replacement by a generator seeded with ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n, batch_size)


def get_batch(data: np.ndarray, step: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """Mini-batch number ``step``: the rows :func:`batch_indices` draws, so batches do not
    depend on what ran before (exact resume)."""
    return data[batch_indices(data.shape[0], step, batch_size, seed)]


def _check_labels(data: Dataset) -> None:
    """Both label arrays or neither; integers ``(n,)`` matching their split, non-negative."""
    if (data.train_labels is None) != (data.test_labels is None):
        raise ValueError("data needs both train_labels and test_labels, or neither")
    if data.train_labels is None:
        return
    for part in ("train", "test"):
        y = getattr(data, f"{part}_labels")
        check_type(f"data.{part}_labels", y, np.ndarray, "a numpy array of integers")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"data.{part}_labels must hold integers, got dtype {y.dtype}")
        n = getattr(data, part).shape[0]
        if y.shape != (n,):
            raise ValueError(f"data.{part}_labels must have shape ({n},), one label per "
                             f"row of data.{part}, got shape {y.shape}")
        if y.size and int(y.min()) < 0:
            raise ValueError(f"data.{part}_labels must be >= 0, got {int(y.min())} at row "
                             f"{int(np.argmin(y))}")


def check_dataset(data: Dataset, shape=None) -> None:
    """Refuse a dataset a run cannot use, naming the first bad row: ``train`` and ``test``
    must be floating-point arrays ``(n >= 1, *shape)`` of the same sample shape, every entry
    finite, and the sample shape equal to ``shape`` when given (the one a spec records);
    labels, if any, non-negative integers, one per row, for both splits.

    A non-finite row would make the loss NaN at the first step that draws it; found here, it
    costs no training.
    """
    check_type("data", data, Dataset, "a Dataset (load_dataset or array_dataset)")
    for part in ("train", "test"):
        x = getattr(data, part)
        check_type(f"data.{part}", x, np.ndarray, "a numpy array")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"data.{part} must be floating point, got dtype {x.dtype} "
                            "(array_dataset converts to float32)")
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"data.{part} must have shape (n >= 1, ...), got shape {x.shape}")
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(f"data.{part} has non-finite values (NaN/inf) in {bad.size} "
                             f"row(s); the first is row {int(bad[0])}: "
                             f"{np.array2string(x[bad[0]], threshold=8)}")
    if data.test.shape[1:] != data.train.shape[1:]:
        raise ValueError(f"data.test samples have shape {data.test.shape[1:]}, data.train "
                         f"samples {data.train.shape[1:]}")
    _check_labels(data)
    if shape is not None and tuple(shape) != data.shape:
        raise ValueError(f"the data's sample shape {data.shape} is not the shape "
                         f"{tuple(shape)} the spec records (spec.data['shape'])")
