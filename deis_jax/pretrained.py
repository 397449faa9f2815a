"""Pretrained models shipped inside the package: ``load("digits")`` and sample at once.

Each asset is the EMA parameters of one ``deis-jax train`` run (``<name>.msgpack``) and a
record (``<name>.json``): the model spec, the training step and config, the exact
``deis-jax train`` arguments (:data:`RECIPES`), the training and total wall time on the
machine that built it, the date and the library versions.
``recipes/build_pretrained.py`` regenerates every asset from :data:`RECIPES`; a test parses
each recipe as ``deis-jax train`` would and checks the recorded spec and config against it.

Example:
  >>> from deis_jax import pretrained
  >>> "digits" in pretrained.available()
  True
"""

from __future__ import annotations

import datetime
import json
import os
import platform

import flax
import jax
import jax.numpy as jnp
from flax import serialization

from deis_jax._files import atomic_write
from deis_jax.model import Model
from deis_jax.training import DiffusionSpec, load_model

__all__ = ["ASSET_DIR", "RECIPES", "available", "export", "load", "record"]

ASSET_DIR = os.path.join(os.path.dirname(__file__), "assets", "pretrained")

RECIPES: dict[str, tuple[str, ...]] = {
    "digits": ("--data", "digits", "--size", "base", "--steps", "6000", "--seed", "0"),
    "digits_conditional": ("--data", "digits", "--size", "base", "--steps", "6000",
                           "--seed", "0", "--conditional"),
    "checkerboard": ("--data", "checkerboard", "--size", "base", "--steps", "40000",
                     "--seed", "0"),
    **{toy: ("--data", toy, "--steps", "12000", "--seed", "0")
       for toy in ("swiss_roll", "two_moons", "eight_gaussians", "pinwheel")},
}
"""Each asset's ``deis-jax train`` arguments (without ``--out``): its whole recipe."""


def available() -> tuple[str, ...]:
    """The names of the shipped models (those of :data:`RECIPES` whose asset exists)."""
    return tuple(n for n in RECIPES if os.path.exists(_path(n, ".msgpack")))


def _path(name: str, ext: str, directory: str = ASSET_DIR) -> str:
    return os.path.join(directory, name + ext)


def _check_name(name: str, directory: str) -> None:
    if not isinstance(name, str) or not os.path.exists(_path(name, ".msgpack", directory)):
        names = [n for n in RECIPES if os.path.exists(_path(n, ".msgpack", directory))]
        raise ValueError(f"no pretrained model named {name!r}; available: {names}")


def record(name: str, *, directory: str = ASSET_DIR) -> dict:
    """The JSON record of asset ``name`` (see the module docstring)."""
    _check_name(name, directory)
    with open(_path(name, ".json", directory)) as f:
        return json.load(f)


def load(name: str, *, directory: str = ASSET_DIR) -> Model:
    """The shipped model ``name`` as a :class:`deis_jax.Model`, as
    :func:`~deis_jax.training.load_model` returns a checkpoint: (EMA) parameters as data,
    ``model.info`` = ``{"spec", "step", "meta"}`` (``meta``: the asset's record).

    Example::

        model = pretrained.load("digits")
        x_T = model.schedule.prior_sample(jax.random.key(0), (16, 8, 8, 1))
        x0 = deis_jax.sample(model, x_T, solver="tab3", nfe=10)

    Raises:
      ValueError: unknown ``name`` (the message lists the available ones).
    """
    meta = record(name, directory=directory)
    path = _path(name, ".msgpack", directory)
    with open(path, "rb") as f:
        try:
            params = jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))
        except Exception as err:  # noqa: BLE001 -- msgpack's errors name no file
            raise ValueError(f"{path} is not a readable parameter file ({type(err).__name__}: "
                             f"{err}); it may be truncated: rebuild the asset with "
                             "python recipes/build_pretrained.py") from None
    spec = DiffusionSpec.from_dict(meta["spec"])
    _check_params(path, spec, params)
    return spec.as_model(params, step=int(meta["step"]), meta=meta)


def _check_params(path, spec: DiffusionSpec, params) -> None:
    """The parameters must have the structure and shapes of the spec's network."""
    shape = tuple(spec.data["shape"])
    want = jax.eval_shape(spec.build_model().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *shape), jnp.float32),
                          jax.ShapeDtypeStruct((1,), jnp.float32))
    got_leaves = jax.tree_util.tree_leaves_with_path(params)
    want_leaves = jax.tree_util.tree_leaves_with_path(want)
    got = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in got_leaves}
    need = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in want_leaves}
    if got != need:
        diff = sorted(set(got.items()) ^ set(need.items()))
        where, _ = diff[0]
        raise ValueError(
            f"{path} holds parameters of another network than its record's spec "
            f"({spec.model}): {where} is {got.get(where, 'missing')} in the file and "
            f"{need.get(where, 'absent')} in the spec's network ({len(diff)} differences)")


def export(ckpt_dir, name: str, *, recipe: tuple[str, ...], wall_seconds: float,
           directory: str = ASSET_DIR) -> dict:
    """Write the newest step of checkpoint ``ckpt_dir`` (trained by ``deis-jax train
    *recipe``) as asset ``name``: EMA parameters and the record; returns the record.

    Args:
      ckpt_dir: a ``deis-jax train`` checkpoint directory.
      name: the asset's name.
      recipe: the ``deis-jax train`` arguments that produced it (without ``--out``).
      wall_seconds: the run's wall time, compilation and evaluation included.
      directory: where to write (default: the package's assets).
    """
    model = load_model(ckpt_dir)
    os.makedirs(directory, exist_ok=True)
    with atomic_write(_path(name, ".msgpack", directory), "wb") as f:
        f.write(serialization.to_bytes(jax.device_get(model.params)))
    meta = model.info["meta"]
    rec = {
        "name": name,
        "recipe": list(recipe),
        "command": "deis-jax train " + " ".join(recipe) + " --out <dir>",
        "spec": model.info["spec"].to_dict(),
        "step": model.info["step"],
        "config": meta["config"],
        "train_seconds": round(float(meta["train_seconds"]), 1),
        "wall_seconds": round(float(wall_seconds), 1),
        "n_params": int(sum(x.size for x in jax.tree.leaves(model.params))),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}",
        "versions": {"jax": jax.__version__, "flax": flax.__version__},
    }
    with atomic_write(_path(name, ".json", directory)) as f:
        json.dump(rec, f, indent=1)
    return rec

