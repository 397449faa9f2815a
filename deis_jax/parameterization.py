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

Every solver works from the eps-, x0- or velocity-prediction of a :class:`deis_jax.Model`,
whose methods call :func:`convert`, the one place where predictions are converted. Model
functions take ``x`` of shape ``(batch, ...)`` and ``t`` of shape ``(batch,)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax.numpy as jnp

from deis_jax._checks import check_choice, check_scalar
from deis_jax.schedules import Schedule

__all__ = [
    "PREDICTIONS",
    "ALIASES",
    "canonical_prediction",
    "convert",
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
    "flow_velocity_model",
    "EDMPrecondition",
    "edm_precondition",
]

PREDICTIONS = ("eps", "x0", "score", "v", "edm", "velocity", "flow")
ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}
"""The names other libraries give these predictions (diffusers' ``prediction_type``)."""


def canonical_prediction(prediction) -> str:
    """``prediction`` as one of :data:`PREDICTIONS` (aliases resolved); raises naming the
    valid names and aliases otherwise."""
    name = ALIASES.get(prediction, prediction) if isinstance(prediction, str) else prediction
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction={prediction!r}; valid choices: "
                         f"{sorted(PREDICTIONS)} (or the aliases {sorted(ALIASES)})")
    return name


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
      >>> import deis_jax
      >>> from deis_jax import parameterization, schedules
      >>> sched = schedules.flow(shift=3.0)
      >>> net = lambda x, tau: -x  # any eps - x0 network, data at tau = 0
      >>> u = parameterization.flow_velocity_model(net, sched)
      >>> model = deis_jax.as_model(u, sched, prediction="velocity")
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


@dataclasses.dataclass(frozen=True, eq=False)
class EDMPrecondition:
    r"""The EDM denoiser ``D(y, rho)`` of a raw network ``F(x_in, c_noise)``
    (:func:`edm_precondition`); compares by value, so rebuilding it never recompiles.

    Called as ``D(y, rho, *rest)``, or ``D(params, y, rho, *rest)`` with ``with_params``
    (``rest``: a condition), it calls ``net(c_in y, c_noise, *rest)`` (``net(params, ...)``).
    """

    net: Callable
    sigma_data: float = 0.5
    with_params: bool = False

    def _key(self):
        # a bound method (a Flax module's apply) compares its module by value, as
        # deis_jax.as_model does: Python compares a method's __self__ by identity
        net = self.net
        net = (net.__func__, net.__self__) if inspect.ismethod(net) else net
        return net, self.sigma_data, self.with_params

    def __eq__(self, other):
        return isinstance(other, EDMPrecondition) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, *args):
        head, (y, rho, *rest) = (args[:1], args[1:]) if self.with_params else ((), args)
        r = _bcast(rho, y)
        c = r**2 + self.sigma_data**2
        out = self.net(*head, y / jnp.sqrt(c), 0.25 * jnp.log(rho), *rest)
        return (self.sigma_data**2 / c) * y + (r * self.sigma_data / jnp.sqrt(c)) * out


def edm_precondition(net_fn: Callable, sigma_data=0.5, *, with_params: bool = False
                     ) -> EDMPrecondition:
    r"""Wrap a raw network ``F(x_in, c_noise)`` into the EDM denoiser ``D(y, rho)``.

    ``D(y; rho) = c_skip y + c_out F(c_in y, c_noise)`` with
    ``c_skip = s_d^2/(rho^2 + s_d^2)``, ``c_out = rho s_d / sqrt(rho^2 + s_d^2)``,
    ``c_in = 1/sqrt(rho^2 + s_d^2)``, ``c_noise = log(rho)/4`` (Karras et al. 2022, Table 1).
    With ``with_params`` the network is ``F(params, x_in, c_noise)`` and the denoiser
    ``D(params, y, rho)``: pass it to :func:`deis_jax.as_model` with ``params=`` and
    ``prediction="edm"`` (the parameters are then data of the compiled sampler).
    """
    return EDMPrecondition(net_fn, float(check_scalar("sigma_data", sigma_data, lower=0.0,
                                                      lower_open=True)), bool(with_params))


def _eps_of(kind, out, x, alpha, sigma, schedule, t):
    if kind == "eps":
        return out
    if kind == "x0":
        return eps_from_x0(x, out, alpha, sigma)
    if kind == "score":
        return eps_from_score(out, sigma)
    if kind == "v":
        return eps_from_v(x, out, alpha, sigma)
    if kind == "velocity":
        return eps_from_velocity(x, out, *derivatives(schedule, t))
    return (x + _bcast(alpha, x) * out) / _bcast(alpha + sigma, x)  # flow: u = eps - x0


def _x0_of(kind, out, x, alpha, sigma, schedule, t):
    if kind == "x0":
        return out
    if kind == "velocity":
        return x0_from_velocity(x, out, *derivatives(schedule, t))
    if kind == "flow":
        return (x - _bcast(sigma, x) * out) / _bcast(alpha + sigma, x)
    return x0_from_eps(x, _eps_of(kind, out, x, alpha, sigma, schedule, t), alpha, sigma)


def convert(out, kind: str, target: str, x, t, schedule: Schedule):
    r"""Turn a prediction ``out`` of kind ``kind`` at ``(x, t)`` into ``target``: the one place
    where predictions are converted (every :class:`deis_jax.Model` method and the training
    losses call it).

    Kinds: ``"eps"``, ``"x0"``, ``"score"``, ``"v"``, ``"velocity"`` (``dx/dt``) and
    ``"flow"`` (``u = eps - x0``, the rectified-flow / SD3 network output: ``x0 = (x - sigma
    u) / (alpha + sigma)``, ``eps = (x + alpha u) / (alpha + sigma)``; on the unshifted flow
    schedule it equals ``"velocity"``). Targets: the same less ``"flow"``. ``"edm"`` is not a
    kind here: an EDM denoiser's output is an ``"x0"`` (its input scaling lives in the model).

    Args:
      out: the prediction, shape of ``x``.
      kind, target: see above.
      x: the state ``(batch, ...)``; t: ``(batch,)`` (or a scalar).
      schedule: the schedule of ``x_t = alpha_t x_0 + sigma_t eps``.
    """
    check_choice("kind", kind, ("eps", "x0", "score", "v", "velocity", "flow"))
    if kind == target:
        return out
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if target == "velocity":
        if kind in ("x0", "flow"):
            x0 = _x0_of(kind, out, x, alpha, sigma, schedule, t)
            eps = eps_from_x0(x, x0, alpha, sigma)
        else:
            eps = _eps_of(kind, out, x, alpha, sigma, schedule, t)
            x0 = x0_from_eps(x, eps, alpha, sigma)
        return velocity_from(x0, eps, schedule.d_alpha(t), schedule.d_sigma(t))
    if target == "x0":
        return _x0_of(kind, out, x, alpha, sigma, schedule, t)
    eps = _eps_of(kind, out, x, alpha, sigma, schedule, t)
    if target == "eps":
        return eps
    if target == "score":
        return score_from_eps(eps, sigma)
    check_choice("target", target, ("eps", "x0", "score", "v", "velocity"))
    return v_from_eps(x, eps, alpha, sigma)
