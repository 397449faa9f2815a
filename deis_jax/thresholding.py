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
``dpmpp_*``, ``unipc*``): wrap the :class:`~deis_jax.Model` with :func:`dynamic_thresholding`::

    thresholded = dynamic_thresholding(model, percentile=0.995)
    x = sample(thresholded, x_T, solver="dpmpp_2m", nfe=20)
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from deis_jax._checks import check_scalar
from deis_jax.model import Model, takes_model

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


def _thresholded(params, x, t):
    """The base model's data prediction, thresholded."""
    return threshold(params["base"].x0(x, t), params["percentile"], params["max_value"])


@takes_model
def dynamic_thresholding(model: Model, *, percentile: float = 0.995,
                         max_value: float = 1.0) -> Model:
    """A thresholded *data-prediction* :class:`~deis_jax.Model` from a model in any
    parameterisation: with an x0-model solver (DPM-Solver++, UniPC) every model output is
    thresholded. The base model, ``percentile`` and ``max_value`` are data of the compiled
    sampler (new values do not recompile).

    Args:
      model: the base model.
      percentile, max_value: see :func:`threshold`.
    """
    _check(percentile, max_value)
    params = {"base": model, "percentile": jnp.asarray(percentile),
              "max_value": jnp.asarray(max_value)}
    return Model(_thresholded, params, model.schedule, "x0", "t", None, None)
