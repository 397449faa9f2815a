r"""Dynamic thresholding of the data prediction (Saharia et al. 2022, Imagen, Sec. 2.3; used
by DPM-Solver++, Lu et al. 2022b, Sec. 5).

Per sample, ``s`` is the ``percentile`` quantile of ``|x0|`` over all non-batch entries,
raised to at least ``max_value`` (the data range); ``x0`` is clipped to ``[-s, s]`` and
rescaled back into ``[-max_value, max_value]``:

.. math::
   s = \max\big(\mathrm{quantile}_p(|\hat x_0|),\ M\big),\qquad
   \hat x_0 \leftarrow \mathrm{clip}(\hat x_0, -s, s)\cdot M / s .

With ``M = 1`` this is exactly Imagen's rule; samples whose quantile is already within
``[-M, M]`` are only clipped to it. The quantile uses linear interpolation
(``numpy.quantile``'s default).

Use it with any solver that consumes the data prediction (``Solver.model == "x0"``:
``dpmpp_*``, ``unipc*``): wrap the model with :func:`dynamic_thresholding` and pass
``prediction="x0"`` to :func:`deis_jax.sample`::

    model = dynamic_thresholding(eps_model, schedule, prediction="eps", percentile=0.995)
    x = sample(model, schedule, x_T, solver="dpmpp_2m", nfe=20, prediction="x0")
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp

from deis_jax._checks import check_scalar
from deis_jax.parameterization import as_x0_fn
from deis_jax.schedules import Schedule

__all__ = ["threshold", "thresholded_x0_fn", "dynamic_thresholding"]


def _check(percentile, max_value):
    check_scalar("percentile", percentile, lower=0.0, upper=1.0, lower_open=True)
    check_scalar("max_value", max_value, lower=0.0, lower_open=True)


def threshold(x0, percentile: float = 0.995, max_value: float = 1.0):
    """Dynamically threshold a batch of data predictions ``x0`` of shape ``(batch, ...)``.

    Args:
      x0: data prediction, leading batch axis.
      percentile: quantile ``p`` in ``(0, 1]`` of ``|x0|`` per sample.
      max_value: data range ``M > 0``; ``s`` is at least ``M``.

    Returns:
      The thresholded prediction, same shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from deis_jax.thresholding import threshold
      >>> threshold(jnp.array([[1.5, -3.0]]), percentile=1.0).tolist()
      [[0.5, -1.0]]
    """
    _check(percentile, max_value)
    x0 = jnp.asarray(x0)
    flat = jnp.abs(jnp.reshape(x0, (x0.shape[0], -1)))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), max_value)
    s = jnp.reshape(s, (-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) * (max_value / s)


def thresholded_x0_fn(x0_fn: Callable, percentile: float = 0.995,
                      max_value: float = 1.0) -> Callable:
    """Wrap a data-prediction model ``x0_fn(x, t)`` so its output is dynamically thresholded."""
    _check(percentile, max_value)

    def fn(x, t):
        return threshold(x0_fn(x, t), percentile, max_value)

    return fn


def _thresholded(model_fn, schedule, prediction, percentile, max_value, *args):
    """``args`` is ``(x, t)`` or ``(params, x, t)``: the wrapped model's call form."""
    *params, x, t = args
    inner = functools.partial(model_fn, *params)
    return threshold(as_x0_fn(inner, schedule, prediction)(x, t), percentile, max_value)


def dynamic_thresholding(model_fn: Callable, schedule: Schedule, *, prediction: str = "eps",
                         percentile: float = 0.995, max_value: float = 1.0) -> Callable:
    """A thresholded *data-prediction* model from a model in any parameterisation.

    Pass the result to :func:`deis_jax.sample` with ``prediction="x0"``; with an x0-model
    solver (DPM-Solver++, UniPC) every model output is thresholded. The wrapper keeps the
    model's call form: ``model_fn(x, t)``, or ``model_fn(params, x, t)`` with ``params=``
    given to ``sample``; it is a ``functools.partial``, so the schedule's arrays stay data
    (rebuilding the wrapper does not recompile).

    Args:
      model_fn: the model predicting ``prediction``.
      schedule: its noise schedule.
      prediction: what ``model_fn`` predicts (see :data:`deis_jax.parameterization.PREDICTIONS`).
      percentile, max_value: see :func:`threshold`.
    """
    as_x0_fn(model_fn, schedule, prediction)  # validates prediction eagerly
    _check(percentile, max_value)
    return functools.partial(_thresholded, model_fn, schedule, prediction, float(percentile),
                             float(max_value))
