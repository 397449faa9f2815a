"""What a checkpoint must record to sample: model config, schedule, loss and parameterisation.

:class:`DiffusionSpec` is JSON-serialisable; ``spec.as_model(params)`` returns the
:class:`deis_jax.Model` every entry point takes, so sampling needs nothing but the
checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_scalar, check_type
from deis_jax.models import model_from_config
from deis_jax.model import Model, as_model
from deis_jax.parameterization import edm_precondition
from deis_jax.schedules import FAMILIES, Schedule, check_range
from deis_jax.training.losses import check_loss_options

__all__ = ["DiffusionSpec", "schedule_from_dict", "schedule_to_dict"]


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """JSON-able record of a schedule: family name, parameters, default time range."""
    return {
        "name": schedule.name,
        "params": {k: np.asarray(v, np.float64).tolist() for k, v in schedule.params.items()},
        "t_min": schedule.t_min,
        "t_max": schedule.t_max,
    }


_SCHEDULE_KEYS = ("name", "params", "t_min", "t_max")


def schedule_from_dict(record: dict[str, Any]) -> Schedule:
    """Inverse of :func:`schedule_to_dict` (the record is checked as a constructor would)."""
    check_type("schedule record", record, dict, f"a dict with keys {list(_SCHEDULE_KEYS)}")
    missing = [k for k in _SCHEDULE_KEYS if k not in record]
    if missing:
        raise ValueError(f"schedule record lacks {missing}; it needs keys "
                         f"{list(_SCHEDULE_KEYS)}, got {sorted(record)}")
    check_choice("schedule", record["name"], FAMILIES)
    family = FAMILIES[record["name"]]
    params = {k: jnp.asarray(v, jnp.float32) for k, v in record["params"].items()}
    schedule = Schedule(family, params, float(record["t_min"]), float(record["t_max"]))
    check_range(schedule, schedule.t_min, schedule.t_max, what=f"schedule record {record!r:.200}")
    return schedule


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """Everything needed to rebuild a trained model as a sampler.

    Attributes:
      model: model config ``{"name": "mlp" | "unet", **attributes}``.
      schedule: :func:`schedule_to_dict` record.
      loss: ``"dsm"``, ``"edm"``, ``"ddpm"`` or ``"flow_matching"`` (see
        :mod:`deis_jax.training.losses`).
      prediction: what the network predicts (eps, x0, score, v, velocity under ``"dsm"``;
        ``"velocity"`` under ``"flow_matching"``).
      weighting: the ``"dsm"`` weighting.
      time_sampling: how ``"flow_matching"`` draws its times (uniform, logit_normal).
      sigma_data: EDM data standard deviation (``"edm"`` loss).
      data: dataset record ``{"name", "shape", "kind"}``.
      label_dropout: probability ``p`` with which training replaces a label by the null label
        (classifier-free guidance's joint training, Ho & Salimans 2021, Alg. 1), so the one
        network gives the conditional and the unconditional prediction; in ``[0, 1)``, and
        0 for an unconditional model (no ``"num_classes"`` in ``model``).
    """

    model: dict
    schedule: dict
    loss: str = "dsm"
    prediction: str = "eps"
    weighting: str = "simple"
    sigma_data: float = 0.5
    data: dict = dataclasses.field(default_factory=dict)
    time_sampling: str = "uniform"
    label_dropout: float = 0.0

    def __post_init__(self):
        check_loss_options(self.loss, self.prediction, self.weighting, self.time_sampling)
        object.__setattr__(self, "label_dropout", float(check_scalar(
            "label_dropout", self.label_dropout, lower=0.0, upper=1.0, upper_open=True)))
        if self.label_dropout and self.num_classes is None:
            raise ValueError(f"label_dropout={self.label_dropout} needs a class-conditional "
                             "model (num_classes in the model config); an unconditional "
                             "model has no labels to drop")
        if self.loss == "ddpm" and self.schedule.get("name") != "vp_discrete":
            raise ValueError(f"loss='ddpm' needs a vp_discrete schedule, got {self.schedule}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "DiffusionSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @property
    def num_classes(self) -> int | None:
        """The model's number of classes (None: unconditional)."""
        return self.model.get("num_classes")

    def build_model(self):
        return model_from_config(self.model)

    def build_schedule(self) -> Schedule:
        return schedule_from_dict(self.schedule)

    def as_model(self, params, *, step: int = 0, meta: dict | None = None) -> Model:
        """The trained network with ``params`` as a :class:`deis_jax.Model`; ``model.info``
        holds ``{"spec": self, "step": step, "meta": meta}``.

        The network is the Flax module's ``apply`` (a bound method, which compares by the
        module's value), or a ``functools.partial`` of a module-level function with the module
        and the loss's constants (EDM preconditioning), so every model of the same spec -- a
        new :func:`~deis_jax.training.load_model`, every evaluation during training, new
        parameters -- reuses the compiled sampler. A class-conditional network takes its label
        as the condition (``model.replace(cond=labels)``); without one it gives the
        unconditional (null-label) prediction. A ``"ddpm"``-loss network takes the DDPM step
        ``N t - 1`` (``timestep="index"``).

        Example::

            model = spec.as_model(params)
            x0 = deis_jax.sample(model, x_T, solver="tab3", nfe=10)
        """
        module = self.build_model()
        meta = {"spec": self, "step": step} if meta is None else meta
        info = {"spec": self, "step": step, "meta": meta}
        schedule = self.build_schedule()
        if self.loss == "edm":
            network = edm_precondition(module.apply, self.sigma_data, with_params=True)
            return Model(network, params, schedule, "edm", "rho", None, None, info=info)
        timestep = "index" if self.loss == "ddpm" else "t"
        return as_model(module, schedule, params=params, prediction=self.prediction,
                        timestep=timestep).replace(info=info)
