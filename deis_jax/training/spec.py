"""What a checkpoint must record to sample: model config, schedule, loss and parameterisation.

:class:`DiffusionSpec` is JSON-serialisable; ``spec.sampling_model(params)`` returns the
``(model_fn, prediction)`` pair :func:`deis_jax.sample` takes, so sampling needs nothing but
the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from deis_jax import schedules as _schedules
from deis_jax._checks import check_choice
from deis_jax.models import model_from_config
from deis_jax.parameterization import PREDICTIONS, discrete_time_model, edm_precondition
from deis_jax.schedules import Schedule
from deis_jax.training.losses import LOSSES, WEIGHTINGS

__all__ = ["DiffusionSpec", "SCHEDULES", "schedule_from_dict", "schedule_to_dict"]

# A default instance of every family; a saved schedule is rebuilt from its family.
_DEFAULTS = {
    "vp_linear": _schedules.vp_linear(),
    "vp_cosine": _schedules.vp_cosine(),
    "vp_discrete": _schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 10)),
    "ve": _schedules.ve(),
    "sub_vp": _schedules.sub_vp(),
    "edm": _schedules.edm(),
}
SCHEDULES = tuple(_DEFAULTS)


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """JSON-able record of a schedule: family name, parameters, default time range."""
    return {
        "name": schedule.name,
        "params": {k: np.asarray(v, np.float64).tolist() for k, v in schedule.params.items()},
        "t_min": schedule.t_min,
        "t_max": schedule.t_max,
    }


def schedule_from_dict(record: dict[str, Any]) -> Schedule:
    """Inverse of :func:`schedule_to_dict`."""
    check_choice("schedule", record.get("name"), SCHEDULES)
    family = _DEFAULTS[record["name"]].family
    params = {k: jnp.asarray(v, jnp.float32) for k, v in record["params"].items()}
    return Schedule(family, params, float(record["t_min"]), float(record["t_max"]))


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """Everything needed to rebuild a trained model as a sampler.

    Attributes:
      model: model config ``{"name": "mlp" | "unet", **attributes}``.
      schedule: :func:`schedule_to_dict` record.
      loss: ``"dsm"``, ``"edm"`` or ``"ddpm"`` (see :mod:`deis_jax.training.losses`).
      prediction: what the network predicts under ``"dsm"`` (eps, x0, score, v).
      weighting: the ``"dsm"`` weighting.
      sigma_data: EDM data standard deviation (``"edm"`` loss).
      data: dataset record ``{"name", "shape", "kind"}``.
    """

    model: dict
    schedule: dict
    loss: str = "dsm"
    prediction: str = "eps"
    weighting: str = "simple"
    sigma_data: float = 0.5
    data: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("loss", self.loss, LOSSES)
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.loss == "ddpm" and self.schedule.get("name") != "vp_discrete":
            raise ValueError(f"loss='ddpm' needs a vp_discrete schedule, got {self.schedule}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "DiffusionSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def build_model(self):
        return model_from_config(self.model)

    def build_schedule(self) -> Schedule:
        return schedule_from_dict(self.schedule)

    def sampling_model(self, params, model=None) -> tuple[Callable, str]:
        """``(model_fn, prediction)`` for :func:`deis_jax.sample` from trained ``params``."""
        model = self.build_model() if model is None else model
        net = functools.partial(model.apply, params)
        if self.loss == "edm":
            return edm_precondition(net, self.sigma_data), "edm"
        if self.loss == "ddpm":
            n_train = len(self.schedule["params"]["log_alpha"])
            return discrete_time_model(net, n_train), "eps"
        return net, self.prediction
