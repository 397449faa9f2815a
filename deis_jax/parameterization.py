r"""Conversions between model parameterisations: eps, x0, score, v and the EDM denoiser.

With ``x_t = alpha_t x_0 + sigma_t eps``:

* ``score = -eps / sigma``
* ``x0 = (x - sigma eps) / alpha``
* ``v = alpha eps - sigma x0`` (Salimans & Ho 2022), so
  ``eps = (sigma x + alpha v)/(alpha^2 + sigma^2)`` (``= sigma x + alpha v`` for VP).
* EDM denoiser ``D(x / alpha; rho) = x0`` with ``rho = sigma/alpha`` (Karras et al. 2022, eq. 7
  and Table 1) and preconditioning ``D = c_skip y + c_out F(c_in y, c_noise)``.

Every solver works from ``eps_fn(x, t)`` (or ``x0_fn``); :func:`as_eps_fn` and :func:`as_x0_fn`
wrap a model trained in any parameterisation. Model functions take ``x`` of shape
``(batch, ...)`` and ``t`` of shape ``(batch,)``.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from deis_jax._checks import check_choice
from deis_jax.schedules import Schedule

__all__ = [
    "PREDICTIONS",
    "as_eps_fn",
    "as_x0_fn",
    "eps_from_x0",
    "x0_from_eps",
    "eps_from_score",
    "score_from_eps",
    "eps_from_v",
    "v_from_eps",
    "prediction_from_eps",
    "edm_precondition",
    "discrete_time_model",
]

PREDICTIONS = ("eps", "x0", "score", "v", "edm")


def _bcast(c, x):
    """Broadcast a per-sample coefficient of shape ``(batch,)`` (or scalar) against ``x``."""
    c = jnp.asarray(c)
    return jnp.reshape(c, c.shape + (1,) * (x.ndim - c.ndim))


def eps_from_x0(x, x0, alpha, sigma):
    """``eps = (x - alpha x0) / sigma``."""
    return (x - _bcast(alpha, x) * x0) / _bcast(sigma, x)


def x0_from_eps(x, eps, alpha, sigma):
    """``x0 = (x - sigma eps) / alpha``."""
    return (x - _bcast(sigma, x) * eps) / _bcast(alpha, x)


def eps_from_score(score, sigma):
    """``eps = -sigma score``."""
    return -_bcast(sigma, score) * score


def score_from_eps(eps, sigma):
    """``score = -eps / sigma``."""
    return -eps / _bcast(sigma, eps)


def eps_from_v(x, v, alpha, sigma):
    r"""Invert ``v = alpha eps - sigma x0`` with ``x = alpha x0 + sigma eps``:
    ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``."""
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    return (s * x + a * v) / (a**2 + s**2)


def v_from_eps(x, eps, alpha, sigma):
    """``v = alpha eps - sigma x0``."""
    x0 = x0_from_eps(x, eps, alpha, sigma)
    return _bcast(alpha, x) * eps - _bcast(sigma, x) * x0


def prediction_from_eps(x, eps, alpha, sigma, prediction: str):
    """The ``prediction`` (``"eps"``, ``"x0"``, ``"v"`` or ``"score"``) that corresponds to
    ``eps`` at ``x``: the inverse of :func:`as_eps_fn`'s conversion (for a model wrapper that
    corrects ``eps`` and hands back the model's own kind of output)."""
    check_choice("prediction", prediction, ("eps", "x0", "v", "score"))
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0_from_eps(x, eps, alpha, sigma)
    if prediction == "v":
        return v_from_eps(x, eps, alpha, sigma)
    return score_from_eps(eps, sigma)


def edm_precondition(net_fn: Callable, sigma_data=0.5) -> Callable:
    r"""Wrap a raw network ``F(x_in, c_noise)`` into the EDM denoiser ``D(y, rho)``.

    ``D(y; rho) = c_skip y + c_out F(c_in y, c_noise)`` with
    ``c_skip = s_d^2/(rho^2 + s_d^2)``, ``c_out = rho s_d / sqrt(rho^2 + s_d^2)``,
    ``c_in = 1/sqrt(rho^2 + s_d^2)``, ``c_noise = log(rho)/4`` (Karras et al. 2022, Table 1).
    """

    def denoiser(y, rho):
        r = _bcast(rho, y)
        c = r**2 + sigma_data**2
        out = net_fn(y / jnp.sqrt(c), 0.25 * jnp.log(rho))
        return (sigma_data**2 / c) * y + (r * sigma_data / jnp.sqrt(c)) * out

    return denoiser


def discrete_time_model(model_fn: Callable, n_train: int) -> Callable:
    """Adapt a model trained on integer DDPM steps ``n in [0, N)`` to continuous ``t``.

    Matches :func:`deis_jax.schedules.vp_discrete`, which places entry ``n`` at
    ``t = (n+1)/N``; the model is called at the (real-valued) step ``n = N t - 1``.
    """

    def fn(x, t):
        return model_fn(x, n_train * t - 1.0)

    return fn


def as_eps_fn(model_fn: Callable, schedule: Schedule, prediction: str = "eps") -> Callable:
    """Return ``eps_fn(x, t)`` for a model that predicts ``prediction``.

    Args:
      model_fn: ``model_fn(x, t) -> output`` with ``x: (batch, ...)``, ``t: (batch,)``. For
        ``prediction="edm"`` it is a denoiser ``D(x / alpha, rho) -> x0`` (see
        :func:`edm_precondition`).
      schedule: the noise schedule the model was trained with.
      prediction: one of :data:`PREDICTIONS`.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return model_fn

    def eps_fn(x, t):
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        if prediction == "x0":
            return eps_from_x0(x, model_fn(x, t), alpha, sigma)
        if prediction == "score":
            return eps_from_score(model_fn(x, t), sigma)
        if prediction == "v":
            return eps_from_v(x, model_fn(x, t), alpha, sigma)
        x0 = model_fn(x / _bcast(alpha, x), sigma / alpha)
        return eps_from_x0(x, x0, alpha, sigma)

    return eps_fn


def as_x0_fn(model_fn: Callable, schedule: Schedule, prediction: str = "eps") -> Callable:
    """Return ``x0_fn(x, t)`` (data prediction, used by DPM-Solver++ / UniPC)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "x0":
        return model_fn
    if prediction == "edm":

        def edm_x0(x, t):
            alpha = schedule.alpha(t)
            return model_fn(x / _bcast(alpha, x), schedule.sigma(t) / alpha)

        return edm_x0
    eps_fn = as_eps_fn(model_fn, schedule, prediction)

    def x0_fn(x, t):
        return x0_from_eps(x, eps_fn(x, t), schedule.alpha(t), schedule.sigma(t))

    return x0_fn
