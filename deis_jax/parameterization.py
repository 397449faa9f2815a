r"""Conversions between model parameterisations: eps, x0, score, v, velocity and the EDM
denoiser.

With ``x_t = alpha_t x_0 + sigma_t eps``:

* ``score = -eps / sigma``
* ``x0 = (x - sigma eps) / alpha``
* ``v = alpha eps - sigma x0`` (Salimans & Ho 2022), so
  ``eps = (sigma x + alpha v)/(alpha^2 + sigma^2)`` (``= sigma x + alpha v`` for VP).
* ``velocity = dx/dt = alpha' x0 + sigma' eps`` (primes: ``d/dt``), the time derivative of
  the forward interpolation ``x_t = alpha_t x_0 + sigma_t eps`` -- what a flow-matching
  network predicts (Lipman et al. 2023, eq. 15; Liu et al. 2023). Its conditional mean given
  ``x_t`` is the probability-flow drift ``f x - g^2/2 score``, so it is defined for every
  schedule. On :func:`deis_jax.schedules.flow` (``shift=1``) it is ``eps - x0``. Inverting
  the 2x2 system with ``D = alpha sigma' - sigma alpha' = -alpha sigma d lambda/dt > 0``:
  ``eps = (alpha u - alpha' x) / D`` and ``x0 = (sigma' x - sigma u) / D``. Not Salimans' v.
* EDM denoiser ``D(x / alpha; rho) = x0`` with ``rho = sigma/alpha`` (Karras et al. 2022, eq. 7
  and Table 1) and preconditioning ``D = c_skip y + c_out F(c_in y, c_noise)``.

Every solver works from ``eps_fn(x, t)`` (or ``x0_fn``, or ``velocity_fn`` for Euler and Heun
in ``t``); :func:`as_eps_fn`, :func:`as_x0_fn` and :func:`as_velocity_fn` wrap a model trained
in any parameterisation. Model functions take ``x`` of shape
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
    "velocity_from",
    "velocity_det",
    "derivatives",
    "eps_from_velocity",
    "x0_from_velocity",
    "as_velocity_fn",
    "flow_velocity_model",
    "prediction_from_eps",
    "edm_precondition",
    "discrete_time_model",
]

PREDICTIONS = ("eps", "x0", "score", "v", "edm", "velocity")


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


def velocity_from(x0, eps, d_alpha, d_sigma):
    """``velocity = alpha' x0 + sigma' eps`` (``d_alpha``, ``d_sigma``: the time derivatives
    of ``alpha`` and ``sigma``; :meth:`~deis_jax.schedules.Schedule.d_alpha`)."""
    return _bcast(d_alpha, x0) * x0 + _bcast(d_sigma, eps) * eps


def velocity_det(alpha, sigma, d_alpha, d_sigma):
    """``D = alpha sigma' - sigma alpha' = -alpha sigma d lambda/dt`` (positive while the
    log-SNR decreases): the determinant of ``(x, velocity)`` in ``(x0, eps)``; at fixed ``x``,
    ``d velocity / d eps = D / alpha``."""
    return alpha * d_sigma - sigma * d_alpha


def eps_from_velocity(x, u, alpha, sigma, d_alpha, d_sigma):
    """``eps = (alpha u - alpha' x) / (alpha sigma' - sigma alpha')`` (``x + (1 - t) u`` on
    the unshifted flow schedule)."""
    det = velocity_det(alpha, sigma, d_alpha, d_sigma)
    return (_bcast(alpha, x) * u - _bcast(d_alpha, x) * x) / _bcast(det, x)


def x0_from_velocity(x, u, alpha, sigma, d_alpha, d_sigma):
    """``x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')`` (``x - t u`` on the
    unshifted flow schedule)."""
    det = velocity_det(alpha, sigma, d_alpha, d_sigma)
    return (_bcast(d_sigma, x) * x - _bcast(sigma, x) * u) / _bcast(det, x)


def derivatives(schedule: Schedule, t):
    """``(alpha, sigma, alpha', sigma')`` at ``t``: the arguments of the velocity
    conversions."""
    return schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t)


def flow_velocity_model(model_fn: Callable, schedule: Schedule, *,
                        noise_at_zero: bool = False) -> Callable:
    r"""A ``prediction="velocity"`` model for ``schedule`` from a rectified-flow network that
    is conditioned on the noise level and predicts ``eps - x0`` (or ``x0 - eps``).

    Flow-matching codebases write the path in their own time ``tau`` and call the network at
    ``tau``:

    * ``noise_at_zero=False`` (SD3, Flux, diffusers' ``FlowMatchEulerDiscreteScheduler``,
      rectified flow): ``x = (1 - tau) x0 + tau eps``, network ``m(x, tau) = eps - x0``.
    * ``noise_at_zero=True`` (facebookresearch/flow_matching, torchcfm):
      ``x = tau x0 + (1 - tau) eps``, network ``m(x, tau) = x0 - eps``.

    On :func:`~deis_jax.schedules.flow` ``sigma_t`` is that noise level (``tau = sigma_t``,
    or ``1 - sigma_t`` with ``noise_at_zero``), and ``dx/dt = sigma'_t (eps - x0)``, so the
    returned model is ``u(x, t) = sigma'_t m(x, sigma_t)`` (``-sigma'_t m(x, 1 - sigma_t)``).
    With ``shift=1``, ``t = sigma_t`` and ``sigma' = 1``: without ``noise_at_zero`` this is the
    network itself. Scale ``t`` inside ``model_fn`` if the network expects ``1000 tau``.

    Args:
      model_fn: ``model_fn(x, tau)`` with ``x: (batch, ...)``, ``tau: (batch,)``.
      schedule: a :func:`~deis_jax.schedules.flow` schedule (any shift).
      noise_at_zero: the network's convention (see above).

    Raises:
      ValueError: ``schedule`` is not a flow schedule (``alpha + sigma = 1`` is what makes
        ``eps - x0`` a velocity).

    Example:
      >>> from deis_jax import parameterization, schedules
      >>> sched = schedules.flow(shift=3.0)
      >>> net = lambda x, tau: -x  # any eps - x0 network, data at tau = 0
      >>> u = parameterization.flow_velocity_model(net, sched)
      >>> # deis_jax.sample(u, sched, x_T, solver="heun", nfe=9, prediction="velocity")
    """
    if not isinstance(schedule, Schedule) or schedule.name != "flow":
        raise ValueError(
            "flow_velocity_model needs a flow schedule (alpha + sigma = 1), got schedule="
            f"{getattr(schedule, 'name', schedule)!r}; for another schedule, wrap the network "
            "to return dx/dt and pass prediction='velocity'")

    def velocity(x, t):
        sigma, d_sigma = schedule.sigma(t), schedule.d_sigma(t)
        out = -model_fn(x, 1.0 - sigma) if noise_at_zero else model_fn(x, sigma)
        return _bcast(d_sigma, x) * out

    return velocity


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
        :func:`edm_precondition`); for ``"velocity"`` it returns ``dx/dt`` (see
        :func:`flow_velocity_model` for flow-matching networks).
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
        if prediction == "velocity":
            return eps_from_velocity(x, model_fn(x, t), *derivatives(schedule, t))
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
    if prediction == "velocity":
        return lambda x, t: x0_from_velocity(x, model_fn(x, t), *derivatives(schedule, t))
    eps_fn = as_eps_fn(model_fn, schedule, prediction)

    def x0_fn(x, t):
        return x0_from_eps(x, eps_fn(x, t), schedule.alpha(t), schedule.sigma(t))

    return x0_fn


def as_velocity_fn(model_fn: Callable, schedule: Schedule, prediction: str = "eps") -> Callable:
    """Return ``velocity_fn(x, t) = dx/dt`` of the probability-flow ODE (used by Euler and
    Heun in ``t``) for a model that predicts ``prediction``: the model itself for
    ``"velocity"``, else :func:`velocity_from` its ``x0`` and ``eps``."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "velocity":
        return model_fn
    x0_model = prediction in ("x0", "edm")
    fn = (as_x0_fn if x0_model else as_eps_fn)(model_fn, schedule, prediction)

    def velocity_fn(x, t):
        alpha, sigma, d_alpha, d_sigma = derivatives(schedule, t)
        out = fn(x, t)
        if x0_model:
            return velocity_from(out, eps_from_x0(x, out, alpha, sigma), d_alpha, d_sigma)
        return velocity_from(x0_from_eps(x, out, alpha, sigma), out, d_alpha, d_sigma)

    return velocity_fn
