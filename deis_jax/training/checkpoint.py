"""Checkpoints with orbax: save every ``k`` steps, keep the last ``n``, atomic writes, exact
resume, and a record of the schedule, parameterisation and model config so that sampling
needs only the checkpoint path.

Layout: ``DIR/<step>/state`` (the :class:`~deis_jax.training.trainer.TrainState` arrays) and
``DIR/<step>/meta`` (JSON: the :class:`~deis_jax.training.spec.DiffusionSpec` and any extra
record such as the training config). Orbax writes each step into a temporary directory and
renames it when complete, so an interrupted save never shadows the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp

from deis_jax._checks import check_int
from deis_jax.schedules import Schedule
from deis_jax.training.spec import DiffusionSpec

__all__ = [
    "LoadedModel",
    "checkpoint_manager",
    "latest_step",
    "load_model",
    "restore_checkpoint",
    "save_checkpoint",
]


def checkpoint_manager(directory, *, keep: int = 3) -> ocp.CheckpointManager:
    """An orbax manager writing to ``directory`` and keeping the newest ``keep`` steps (the
    caller decides when to save; :func:`~deis_jax.training.fit` saves every ``ckpt_every``
    steps and at the end)."""
    keep = check_int("keep", keep, minimum=1)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _to_saveable(state) -> dict[str, Any]:
    tree = dict(state._asdict())
    tree["key"] = jax.random.key_data(tree["key"])
    return tree


def save_checkpoint(manager: ocp.CheckpointManager, state, spec: DiffusionSpec, *,
                    extra: dict | None = None) -> None:
    """Save ``state`` and the metadata (``spec``, ``extra``) as step ``int(state.step)``."""
    step = int(state.step)
    meta = {"spec": spec.to_dict(), "step": step, **(extra or {})}
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def _existing(directory) -> str:
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint directory at ckpt='{directory}'")
    return path


def latest_step(directory) -> int | None:
    """The newest complete checkpoint step in ``directory`` (None if there is none)."""
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        return None
    return ocp.CheckpointManager(path).latest_step()


def restore_checkpoint(directory, template=None, *, step: int | None = None):
    """Restore ``(state, meta)`` from ``directory`` (the latest step unless ``step``).

    Args:
      directory: checkpoint directory.
      template: a ``TrainState`` of the right structure (e.g. a fresh ``init_state``); the
        restored state then has the same pytree types (exact resume). Without it the state is
        returned as a dict of arrays (enough for sampling).
      step: which step to restore.

    Returns:
      ``(state, meta)`` with ``meta["spec"]`` a :class:`DiffusionSpec`.
    """
    path = _existing(directory)
    manager = ocp.CheckpointManager(path)
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in ckpt='{directory}'")
    else:
        step = check_int("step", step, minimum=0)
        if step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step={step} in ckpt='{directory}'; available: "
                f"{sorted(manager.all_steps())}"
            )
    target = ocp.args.StandardRestore(None if template is None else _to_saveable(template))
    out = manager.restore(step, args=ocp.args.Composite(state=target,
                                                        meta=ocp.args.JsonRestore()))
    tree = dict(out["state"])
    tree["key"] = jax.random.wrap_key_data(tree["key"])
    state = tree if template is None else type(template)(**tree)
    meta = dict(out["meta"])
    meta["spec"] = DiffusionSpec.from_dict(meta["spec"])
    return state, meta


class LoadedModel(NamedTuple):
    """A trained model ready for :func:`deis_jax.sample` and
    :func:`deis_jax.adaptive.solve_ode` with ``params=``.

    Attributes:
      model_fn: ``model_fn(params, x, t)``, predicting ``prediction`` (see
        :meth:`DiffusionSpec.sampling_model`); equal for every model of the same spec, so new
        parameters reuse the compiled sampler.
      schedule: the training schedule.
      prediction: pass as ``sample(..., prediction=prediction)``.
      spec: the recorded :class:`DiffusionSpec`.
      params: the parameters (EMA by default); pass as ``sample(..., params=params)``.
      step: the training step of the parameters.
      meta: the full metadata record.

    :func:`load_model` has an example.
    """

    model_fn: Callable
    schedule: Schedule
    prediction: str
    spec: DiffusionSpec
    params: Any
    step: int
    meta: dict

    @classmethod
    def from_spec(cls, spec: DiffusionSpec, params, *, step: int = 0,
                  meta: dict | None = None) -> "LoadedModel":
        """The model of ``spec`` with ``params`` held in memory (e.g. during training)."""
        model_fn, prediction = spec.sampling_model()
        meta = {"spec": spec, "step": step} if meta is None else meta
        return cls(model_fn, spec.build_schedule(), prediction, spec, params, step, meta)


def load_model(directory, *, step: int | None = None, ema: bool = True) -> LoadedModel:
    """Load a checkpoint as a sampler (EMA parameters unless ``ema=False``).

    Example::

        m = load_model("runs/checkerboard")
        x_T = m.schedule.prior_sample(jax.random.key(0), (512, *m.spec.data["shape"]))
        x0 = deis_jax.sample(m.model_fn, m.schedule, x_T, params=m.params, solver="tab3",
                             nfe=10, prediction=m.prediction)
    """
    state, meta = restore_checkpoint(directory, step=step)
    params = state["ema_params"] if ema else state["params"]
    return LoadedModel.from_spec(meta["spec"], params, step=int(meta["step"]), meta=meta)
