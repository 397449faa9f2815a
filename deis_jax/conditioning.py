r"""Controllable generation by replacement: inpainting and linear measurements (colorization).

Given a measurement ``y = A x_0`` of the data (known pixels; the grey level of a colour
image), every sampler step is followed by a *replacement* of the measured part of the state by
the forward-noised measurement (Song et al. 2021, App. I.2--I.3; Sohl-Dickstein et al. 2015):

.. math::
   x \leftarrow x + A^{+}\big(y_t - A x\big), \qquad y_t = \alpha_t\, y + \sigma_t\, A z,

with ``A^+ = A^T (A A^T)^{-1}`` the pseudo-inverse (``A^+ A`` projects onto the measured
subspace, so the unmeasured part of ``x`` is untouched and ``A x = y_t`` afterwards) and one
fixed noise draw ``z ~ N(0, I)``: the measured part then follows the forward-noising path of
``y``, which has the exact marginal ``q(A x_t | y)`` at every ``t`` and changes smoothly from
step to step (the history of a multistep solver stays consistent). For inpainting ``A`` is
the mask ``m`` (``A^+ = A = m`` for a 0/1 mask): ``x <- (1 - m) x + m y_t``. For colorization
``A`` acts on the channel axis, e.g. the row ``(1, 1, 1)/sqrt(3)`` measures the grey level,
so the other two orthogonal colour directions are generated.

The replacement runs as :func:`deis_jax.sample`'s ``hook`` -- for the deterministic solvers
(DDIM, DEIS, DPM-Solver++, ...) and the stochastic ones (Score-SDE predictor--corrector,
Euler--Maruyama, DDPM) alike; :func:`inpaint` and :func:`measure` run it and set the measured
part to ``y`` exactly at the end. When the measured and unmeasured coordinates are
independent under the data distribution the result is the exact conditional; otherwise
replacement is an approximation (the unmeasured part sees ``y_t``, not ``y``).

References: Y. Song et al., *Score-Based Generative Modeling through SDEs*, ICLR 2021,
App. I; J. Sohl-Dickstein et al., *Deep Unsupervised Learning using Nonequilibrium
Thermodynamics*, ICML 2015.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_all_finite, check_batch, check_key, is_concrete
from deis_jax.model import Model, takes_model
from deis_jax.parameterization import _bcast
from deis_jax.sampling import sample
from deis_jax.schedules import Schedule, check_schedule

__all__ = ["inpaint_hook", "measurement_hook", "inpaint", "measure"]


def _replace(x, t, *, project, measure_fn, y, z, schedule):
    """``x + A^+(alpha_t y + sigma_t A z - A x)`` with ``measure_fn = A``, ``project = A^+``;
    at ``t = None``: ``x + A^+(y - A x)`` (the measurement itself)."""
    y_t = y if t is None else (_bcast(schedule.alpha(t), y) * y
                               + _bcast(schedule.sigma(t), y) * measure_fn(z))
    return (x + project(y_t - measure_fn(x))).astype(x.dtype)


def _mask_apply(mask, v):
    return mask * v


def _matrix_apply(matrix, axis, v):
    return jnp.moveaxis(jnp.tensordot(jnp.moveaxis(v, axis, -1), matrix.T, axes=1), -1, axis)


def _hook(x, t, *, kind, axis, operator, y, z, schedule):
    """The replacement as ``hook(x, t)``; ``kind`` = ``"mask"`` or ``"matrix"``."""
    if kind == "mask":
        fns = dict(project=functools.partial(_mask_apply, operator),
                   measure_fn=functools.partial(_mask_apply, operator))
    else:
        fns = dict(project=functools.partial(_matrix_apply, jnp.linalg.pinv(operator), axis),
                   measure_fn=functools.partial(_matrix_apply, operator, axis))
    t = None if t is None else jnp.broadcast_to(t, x.shape[:1])
    return _replace(x, t, y=y, z=z, schedule=schedule, **fns)


def _check_mask(mask, shape):
    mask = jnp.asarray(mask)
    if not (jnp.issubdtype(mask.dtype, jnp.floating) or jnp.issubdtype(mask.dtype, jnp.bool_)
            or jnp.issubdtype(mask.dtype, jnp.integer)):
        raise TypeError(f"mask must be a boolean or numeric array, got dtype {mask.dtype}")
    try:
        out = np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to the data's shape "
                         f"{tuple(shape)} (align it with the trailing axes, e.g. "
                         f"{tuple(shape[1:])} for one mask for the whole batch)")
    if is_concrete(mask):
        values = np.asarray(mask, np.float64)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError("mask must hold 0/1 (False/True) values: 1 marks a known entry")
    return mask


def inpaint_hook(key, y, mask, schedule: Schedule) -> Callable:
    """``hook(x, t)`` replacing the known entries (``mask == 1``) by ``alpha_t y + sigma_t z``
    (module docstring), for ``sample(..., hook=...)``.

    Args:
      key: PRNG key of the fixed noise ``z``.
      y: the data whose known entries are kept, shape ``(batch, ...)`` (values under
        ``mask == 0`` are ignored).
      mask: 0/1 (or bool) of any shape that broadcasts to ``y``'s.
      schedule: the sampler's schedule.

    Returns:
      a ``functools.partial`` whose arrays (``y``, mask, noise) are data of the sampler.
    """
    check_key("key", key)
    check_schedule(schedule)
    y = check_batch("y", y)
    check_all_finite("y", y)
    mask = jnp.broadcast_to(_check_mask(mask, y.shape).astype(y.dtype), y.shape)
    z = jax.random.normal(key, y.shape, y.dtype)
    return functools.partial(_hook, kind="mask", axis=-1, operator=mask, y=mask * y, z=z,
                             schedule=schedule)


def measurement_hook(key, y, matrix, schedule: Schedule, *, axis: int = -1) -> Callable:
    r"""``hook(x, t)`` enforcing the linear measurement ``A x = y`` along ``axis`` (module
    docstring): ``x <- x + A^+(alpha_t y + sigma_t A z - A x)``.

    Args:
      key: PRNG key of the fixed noise ``z``.
      y: the measurement, shape of the data with ``axis`` of length ``m``.
      matrix: ``A`` of shape ``(m, c)`` with full row rank, acting on ``axis`` (of length
        ``c``) of every entry; e.g. ``[[1, 1, 1]] / sqrt(3)`` on the channel axis for the grey
        level of RGB images (colorization).
      schedule: the sampler's schedule.
      axis: the data axis ``A`` acts on (not the batch axis).
    """
    check_key("key", key)
    check_schedule(schedule)
    y = check_batch("y", y)
    check_all_finite("y", y)
    matrix = jnp.asarray(matrix, y.dtype)
    if not -y.ndim < axis < y.ndim or axis % y.ndim == 0:
        raise ValueError(f"axis must name a data axis of y (not the batch axis 0), got "
                         f"axis={axis} for y of shape {y.shape}")
    if matrix.ndim != 2 or matrix.shape[0] != y.shape[axis]:
        raise ValueError(f"matrix must be (m, c) with m = y.shape[{axis}] = {y.shape[axis]} "
                         f"measurements, got shape {matrix.shape}")
    if is_concrete(matrix) and np.linalg.matrix_rank(np.asarray(matrix)) < matrix.shape[0]:
        raise ValueError(f"matrix must have full row rank {matrix.shape[0]} (independent "
                         f"measurements), got rank {np.linalg.matrix_rank(np.asarray(matrix))}")
    shape = list(y.shape)
    shape[axis] = matrix.shape[1]
    z = jax.random.normal(key, tuple(shape), y.dtype)
    return functools.partial(_hook, kind="matrix", axis=axis, operator=matrix, y=y, z=z,
                             schedule=schedule)


def _run(model, x_T, hook, key, sample_kwargs):
    solver_key = None if key is None else jax.random.fold_in(key, 1)
    x = sample(model, x_T, hook=hook, key=solver_key, **sample_kwargs)
    return hook(x, None)


@takes_model
def inpaint(model: Model, x_T, y, mask, *, key, **sample_kwargs):
    """Sample with the known entries of ``y`` (``mask == 1``) imposed by replacement after
    every step (:func:`inpaint_hook`), then set to ``y`` exactly.

    Args:
      model, x_T: as in :func:`deis_jax.sample`.
      y: data of ``x_T``'s shape; its entries under ``mask == 1`` are known.
      mask: 0/1 of any shape broadcasting to ``x_T``'s.
      key: one PRNG key: the replacement noise and, for a stochastic solver, its steps.
      **sample_kwargs: ``solver``, ``nfe``/``ts``, ... of :func:`deis_jax.sample`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from deis_jax import as_model, schedules, testing
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.gaussian_mixture(dim=2, n_modes=3, seed=0)
      >>> y = jnp.ones((4, 2))
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> x = inpaint(as_model(gmm.eps_fn(sched), sched), x_T, y, jnp.array([1.0, 0.0]),
      ...             key=jax.random.key(1), solver="tab3", nfe=10)
      >>> bool(jnp.all(x[:, 0] == 1.0))
      True
    """
    check_key("key", key)
    x_T = check_batch("x_T", x_T)
    if jnp.shape(y) != x_T.shape:
        raise ValueError(f"y must have x_T's shape {x_T.shape} (one known sample per "
                         f"sample drawn), got y of shape {jnp.shape(y)}")
    hook = inpaint_hook(jax.random.fold_in(key, 0), y, mask, model.schedule)
    return _run(model, x_T, hook, key, sample_kwargs)


@takes_model
def measure(model: Model, x_T, y, matrix, *, key, axis: int = -1, **sample_kwargs):
    """Sample under the linear measurement ``A x = y`` along ``axis``
    (:func:`measurement_hook`), imposed after every step and exactly at the end; arguments as
    in :func:`inpaint`. Colorization: ``matrix=[[1, 1, 1]]/sqrt(3)`` on the channel axis and
    ``y`` the grey level times ``sqrt(3)``."""
    check_key("key", key)
    x_T = check_batch("x_T", x_T)
    hook = measurement_hook(jax.random.fold_in(key, 0), y, matrix, model.schedule, axis=axis)
    want = list(x_T.shape)
    want[axis] = hook.keywords["operator"].shape[0]
    if jnp.shape(y) != tuple(want):
        raise ValueError(f"y must have x_T's shape {x_T.shape} with axis {axis} of length m = "
                         f"{want[axis]} (the measurements), i.e. {tuple(want)}; got y of shape "
                         f"{jnp.shape(y)}")
    if hook.keywords["z"].shape != x_T.shape:
        raise ValueError(f"matrix of shape {hook.keywords['operator'].shape} acts on axis "
                         f"{axis} of length {x_T.shape[axis]} of x_T {x_T.shape}: it must have "
                         f"{x_T.shape[axis]} columns")
    return _run(model, x_T, hook, key, sample_kwargs)
