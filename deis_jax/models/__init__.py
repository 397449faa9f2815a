"""Flax (Linen) score networks and a config-based constructor used by checkpoints.

A model is described by a JSON-able config ``{"name": "mlp" | "unet", **attributes}`` so a
checkpoint can rebuild it; a trained network enters the samplers through
``deis_jax.as_model(module, schedule, params=variables, prediction=...)`` and then
``sample(model, x_T, ...)`` (the parameters are data of the :class:`deis_jax.Model`: new
ones reuse the compiled sampler).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deis_jax._checks import check_choice, check_int
from deis_jax.models.embedding import SinusoidalEmbedding
from deis_jax.models.mlp import MLPScore
from deis_jax.models.unet import UNet
from deis_jax.precision import check_dtype

__all__ = ["MODELS", "MLPScore", "SinusoidalEmbedding", "UNet", "model_from_config"]

MODELS = {"mlp": MLPScore, "unet": UNet}


def model_from_config(config: dict[str, Any]):
    """Build a model from ``{"name": ..., **attributes}`` (e.g. read from a checkpoint).

    ``"num_classes"`` (an int) makes the network class-conditional (``apply(params, x, t,
    label)``); ``"dtype"`` and ``"param_dtype"`` are dtype names (``"bfloat16"``: mixed
    precision, see :mod:`deis_jax.precision`).

    Example:
      >>> model_from_config({"name": "mlp", "hidden": 64}).hidden
      64
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"model config must be a dict with a 'name' key, got {config!r}")
    check_choice("model name", config["name"], MODELS)
    cls = MODELS[config["name"]]
    valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(config) - valid - {"name"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the {config['name']!r} model config; "
                         f"valid keys: {sorted(valid)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()
              if k != "name"}
    if kwargs.get("num_classes") is not None:
        kwargs["num_classes"] = check_int("model config num_classes", kwargs["num_classes"],
                                          minimum=1)
    for key in ("dtype", "param_dtype"):
        if key in kwargs:
            kwargs[key] = check_dtype(f"model config {key}", kwargs[key])
    return cls(**kwargs)
