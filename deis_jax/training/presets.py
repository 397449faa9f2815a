"""The built-in model for each dataset, as used by ``deis-jax train``, the demo and the
training benchmark: an MLP for 2-d points, a U-Net for 8x8 images."""

from __future__ import annotations

from deis_jax import schedules
from deis_jax._checks import check_choice
from deis_jax.training.data import Dataset
from deis_jax.training.losses import default_prediction
from deis_jax.training.spec import DiffusionSpec, schedule_to_dict

__all__ = ["PRECISIONS", "SIZES", "default_batch_size", "default_spec"]

SIZES = ("small", "base")
# Training precisions: network compute dtype; parameters, optimizer state and loss stay float32.
PRECISIONS = ("float32", "bfloat16")
_PRECISION_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16"}


def _default_loss(schedule_name: str) -> str:
    """``"edm"`` for the EDM schedule, ``"ddpm"`` for ``vp_discrete``, ``"flow_matching"``
    for ``flow``, else ``"dsm"``."""
    return {"edm": "edm", "vp_discrete": "ddpm", "flow": "flow_matching"}.get(schedule_name,
                                                                              "dsm")


def default_batch_size(data: Dataset) -> int:
    """Examples per training step: 128 for images, 512 for points."""
    return 128 if data.kind == "images" else 512


def default_spec(data: Dataset, schedule_name: str = "vp_linear", *, loss: str | None = None,
                 prediction: str | None = None, weighting: str = "simple",
                 time_sampling: str = "uniform", size: str = "small",
                 precision: str = "float32", conditional: bool = False,
                 label_dropout: float = 0.1) -> DiffusionSpec:
    """The built-in model for ``data`` with the default instance of a schedule family.

    Args:
      data: the dataset (its kind picks the network, its name and shape are recorded).
      schedule_name: a :data:`deis_jax.schedules.FAMILIES` name (see
        :func:`deis_jax.schedules.from_name`).
      loss: default ``"edm"`` for the EDM schedule, ``"ddpm"`` for ``vp_discrete``,
        ``"flow_matching"`` for ``flow``, else ``"dsm"``. The DDPM loss trains on integer
        steps, so its network embeds ``t`` unscaled; the others scale ``t`` by 1000.
      prediction: what the network predicts (default: ``"velocity"`` for
        ``"flow_matching"``, else ``"eps"``).
      weighting: the ``"dsm"`` weighting.
      time_sampling: the ``"flow_matching"`` time distribution (uniform, logit_normal).
      size: ``"small"`` (demo, tests) or ``"base"`` (benchmarks).
      precision: ``"float32"`` or ``"bfloat16"`` (alias ``"bf16"``): the network's compute
        dtype, recorded in the model config (``"dtype"``, only when not float32); parameters,
        optimizer state and the loss stay float32 (:mod:`deis_jax.precision`).
      conditional: a class-conditional network over the data's ``n_classes`` labels
        (``"num_classes"`` in the model config), trained with ``label_dropout``.
      label_dropout: probability of training on the null label instead (conditional only;
        Ho & Salimans 2021 found 0.1-0.2 best).

    Example:
      >>> from deis_jax.training import default_spec, load_dataset
      >>> default_spec(load_dataset("checkerboard", n_train=8, n_test=8)).model["name"]
      'mlp'
    """
    check_choice("size", size, SIZES)
    precision = _PRECISION_ALIASES.get(precision, precision)
    check_choice("precision", precision, PRECISIONS + tuple(_PRECISION_ALIASES))
    schedule = schedules.from_name(schedule_name)
    loss = _default_loss(schedule_name) if loss is None else loss
    prediction = default_prediction(loss) if prediction is None else prediction
    time_scale = 1.0 if loss == "ddpm" else 1000.0
    small = size == "small"
    if data.kind == "images":
        model = {"name": "unet", "channels": [16, 32] if small else [32, 64],
                 "time_scale": time_scale}
    else:
        model = {"name": "mlp", "hidden": 128 if small else 256, "depth": 3,
                 "time_scale": time_scale}
    if precision != "float32":
        model["dtype"] = precision
    if conditional:
        if data.n_classes is None:
            raise ValueError(f"conditional=True needs labelled data, and the dataset "
                             f"{data.name!r} has no labels (labelled: 'digits')")
        model["num_classes"] = data.n_classes
    return DiffusionSpec(
        model=model, schedule=schedule_to_dict(schedule), loss=loss, prediction=prediction,
        weighting=weighting, time_sampling=time_sampling,
        label_dropout=label_dropout if conditional else 0.0,
        data={"name": data.name, "shape": list(data.shape), "kind": data.kind},
    )
