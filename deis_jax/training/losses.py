r"""Training losses: denoising score matching (continuous time under any schedule, EDM,
discrete DDPM) and conditional flow matching.

With ``x_t = alpha_t x_0 + sigma_t eps`` every loss here is a weighted regression of the
model's noise prediction on ``eps`` (Vincent 2011; Song et al. 2021, eq. 7):

.. math::
   L(\theta) = \mathbb E_{t, x_0, \epsilon}\ w(t)\ \tfrac1d\,\lVert \hat\epsilon_\theta(x_t, t)
   - \epsilon\rVert^2 ,

with the model in any parameterisation converted to ``eps`` by
:func:`deis_jax.parameterization.convert`. Its minimiser is
``eps*(x, t) = E[eps | x_t = x]`` for every positive ``w``. The flow-matching loss
(:func:`flow_matching_loss`) regresses a velocity network on ``alpha' x_0 + sigma' eps``
instead. Losses take ``(model_fn, x0, key)`` and return a scalar; ``make_loss`` closes over
the options.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from deis_jax._checks import check_choice, check_scalar
from deis_jax.parameterization import (
    PREDICTIONS, convert, derivatives, edm_precondition, velocity_det, velocity_from)
from deis_jax.schedules import Schedule

__all__ = ["LOSSES", "WEIGHTINGS", "TIME_SAMPLINGS", "check_loss_options", "drop_labels",
           "dsm_loss",
           "edm_loss", "ddpm_loss", "flow_matching_loss", "sample_times", "default_prediction",
           "make_loss"]

WEIGHTINGS = ("simple", "likelihood", "native")
LOSSES = ("dsm", "edm", "ddpm", "flow_matching")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _mean_sq(x):
    return jnp.mean(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)


def _bcast(c, x):
    return jnp.reshape(c, c.shape + (1,) * (x.ndim - 1))


def _weight(schedule: Schedule, t, weighting: str, prediction: str):
    """``w(t)`` multiplying the eps-MSE (see :func:`dsm_loss`)."""
    if weighting == "simple":
        return jnp.ones_like(t)
    if weighting == "likelihood":
        return schedule.g2(t) / schedule.sigma(t) ** 2
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if prediction == "velocity":  # d velocity / d eps at fixed x = D / alpha
        return (velocity_det(*derivatives(schedule, t)) / alpha) ** 2
    return {
        "eps": jnp.ones_like(t),
        "x0": (sigma / alpha) ** 2,
        "score": 1.0 / sigma**2,
        "v": ((alpha**2 + sigma**2) / alpha) ** 2,
        "edm": (sigma / alpha) ** 2,
        "flow": ((alpha + sigma) / alpha) ** 2,  # d u / d eps at fixed x, u = eps - x0
    }[prediction]


def sample_times(key, n: int, dtype, t_min, t_max, time_sampling: str = "uniform", *,
                 logit_mean=0.0, logit_std=1.0):
    r"""``n`` training times in ``[t_min, t_max]``.

    ``"uniform"``: ``t ~ U[t_min, t_max]``. ``"logit_normal"``: SD3's
    ``t = t_min + (t_max - t_min) sigmoid(m + s z)``, ``z ~ N(0, 1)`` (Esser et al. 2024,
    eq. 19, there on ``(0, 1)``; mapped onto the schedule's range so the singular ends are
    never drawn), with ``m = logit_mean``, ``s = logit_std``.
    """
    if time_sampling == "uniform":
        return jax.random.uniform(key, (n,), dtype, t_min, t_max)
    z = jax.random.normal(key, (n,), dtype)
    return t_min + (t_max - t_min) * jax.nn.sigmoid(logit_mean + logit_std * z)


def dsm_loss(model_fn: Callable, schedule: Schedule, x0, key, *, prediction: str = "eps",
             weighting: str = "simple", t_min=None, t_max=None):
    r"""Continuous-time denoising score matching, ``t ~ U[t_min, t_max]``.

    Weightings ``w(t)`` of the eps-MSE:

    * ``"simple"``: ``w = 1`` (DDPM's ``L_simple``, Ho et al. 2020, eq. 14);
    * ``"likelihood"``: ``w = g(t)^2 / sigma_t^2``, i.e. ``g^2 ||s_theta - grad log q||^2``,
      the weighting that makes the loss a bound on the negative log-likelihood (Song et al.
      2021b, "Maximum likelihood training of score-based diffusion models", Thm. 1);
    * ``"native"``: the MSE of the model's own output (``x0``: ``w = rho^2``; ``v``:
      ``w = ((alpha^2 + sigma^2)/alpha)^2``; ``score``: ``w = 1/sigma^2``; ``velocity``:
      ``w = (D/alpha)^2`` with ``D = alpha sigma' - sigma alpha'``, which is
      :func:`flow_matching_loss` with uniform times).

    Args:
      model_fn: ``model_fn(x, t)`` (batched ``t``) predicting ``prediction``.
      schedule: the noise schedule.
      x0: data batch ``(B, ...)``.
      key: PRNG key (times and noise).
      prediction: one of :data:`deis_jax.parameterization.PREDICTIONS`.
      weighting: one of :data:`WEIGHTINGS`.
      t_min, t_max: time range (default: the schedule's).

    Returns:
      The Monte-Carlo estimate of the loss over the batch (scalar).
    """
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    t_min = schedule.t_min if t_min is None else t_min
    t_max = schedule.t_max if t_max is None else t_max
    k_t, k_eps = jax.random.split(key)
    t = sample_times(k_t, x0.shape[0], x0.dtype, t_min, t_max)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps
    if prediction == "edm":  # a denoiser D(x / alpha, rho) predicts x0
        alpha = schedule.alpha(t)
        eps_hat = convert(model_fn(x_t / _bcast(alpha, x_t), schedule.sigma(t) / alpha), "x0",
                          "eps", x_t, t, schedule)
    else:
        eps_hat = convert(model_fn(x_t, t), prediction, "eps", x_t, t, schedule)
    return jnp.mean(_weight(schedule, t, weighting, prediction) * _mean_sq(eps_hat - eps))


def flow_matching_loss(model_fn: Callable, schedule: Schedule, x0, key, *,
                       time_sampling: str = "uniform", logit_mean=0.0, logit_std=1.0,
                       t_min=None, t_max=None):
    r"""Conditional flow matching with the velocity target (Lipman et al. 2023, eq. 9 and 15;
    Liu et al. 2023, eq. 1).

    .. math::
       L(\theta) = \mathbb E_{t, x_0, \epsilon}\ \tfrac1d\,\lVert u_\theta(x_t, t)
       - (\alpha'_t x_0 + \sigma'_t \epsilon)\rVert^2,\qquad
       x_t = \alpha_t x_0 + \sigma_t \epsilon,

    whose minimiser is the probability-flow velocity ``E[alpha' x0 + sigma' eps | x_t]``
    (sample it as ``as_model(net, schedule, prediction="velocity")``). On :func:`deis_jax.schedules.flow` with
    ``shift=1`` the target is ``eps - x0``; with a shift ``s`` it is
    ``sigma'_t (eps - x0)``, the velocity in the shifted time. Any schedule works: the target
    is the time derivative of its interpolation.

    Args:
      model_fn: ``model_fn(x, t)`` (batched ``t``) predicting the velocity.
      schedule: the schedule (usually ``schedules.flow()``).
      x0: data batch ``(B, ...)``. key: PRNG key (times and noise).
      time_sampling: one of :data:`TIME_SAMPLINGS` (see :func:`sample_times`).
      logit_mean, logit_std: the logit-normal's ``m`` and ``s > 0`` (SD3: 0 and 1).
      t_min, t_max: time range (default: the schedule's).

    Returns:
      The Monte-Carlo estimate of the loss over the batch (scalar).
    """
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    check_scalar("logit_mean", logit_mean)
    check_scalar("logit_std", logit_std, lower=0.0, lower_open=True)
    t_min = schedule.t_min if t_min is None else t_min
    t_max = schedule.t_max if t_max is None else t_max
    k_t, k_eps = jax.random.split(key)
    t = sample_times(k_t, x0.shape[0], x0.dtype, t_min, t_max, time_sampling,
                     logit_mean=logit_mean, logit_std=logit_std)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    alpha, sigma, d_alpha, d_sigma = derivatives(schedule, t)
    x_t = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
    return jnp.mean(_mean_sq(model_fn(x_t, t) - velocity_from(x0, eps, d_alpha, d_sigma)))


def edm_loss(denoiser_fn: Callable, x0, key, *, p_mean=-1.2, p_std=1.2, sigma_data=0.5):
    r"""EDM training loss (Karras et al. 2022, eq. 8 and Table 1).

    ``log rho ~ N(p_mean, p_std^2)``, ``y = x0 + rho n``, and

    .. math::
       L = \mathbb E\ \lambda(\rho)\ \tfrac1d\lVert D_\theta(y; \rho) - x_0\rVert^2,\quad
       \lambda(\rho) = \frac{\rho^2 + \sigma_d^2}{(\rho\,\sigma_d)^2},

    so the raw network ``F`` inside :func:`deis_jax.parameterization.edm_precondition` sees a
    unit-variance target. ``y = x/alpha`` makes this valid for any schedule: a denoiser trained
    here samples as ``as_model(denoiser, schedule, prediction="edm")``.

    Args:
      denoiser_fn: ``D(y, rho)`` (e.g. ``edm_precondition(partial(net.apply, params))``).
      x0: data batch. key: PRNG key. p_mean, p_std: log-normal ``rho`` distribution.
      sigma_data: data standard deviation used by the weighting and the preconditioning.
    """
    k_r, k_n = jax.random.split(key)
    rho = jnp.exp(p_mean + p_std * jax.random.normal(k_r, x0.shape[:1], x0.dtype))
    y = x0 + _bcast(rho, x0) * jax.random.normal(k_n, x0.shape, x0.dtype)
    lam = (rho**2 + sigma_data**2) / (rho * sigma_data) ** 2
    return jnp.mean(lam * _mean_sq(denoiser_fn(y, rho) - x0))


def ddpm_loss(model_fn: Callable, schedule: Schedule, x0, key):
    r"""Discrete-time DDPM loss (Ho et al. 2020, Algorithm 1 / eq. 14) for a
    :func:`deis_jax.schedules.vp_discrete` table of ``N`` steps.

    ``n ~ U{0, ..., N-1}``, ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps`` and the model is
    called at the integer step ``n`` (as a float): ``L = E ||eps_theta(x_n, n) - eps||^2 / d``.
    Sample with ``as_model(network, schedule, timestep="index")`` (the step ``N t - 1``
    as a float) or ``timestep="discrete"`` (rounded to the integer step).
    """
    if schedule.name != "vp_discrete":
        raise ValueError(f"ddpm_loss needs a vp_discrete schedule, got schedule={schedule.name!r}")
    log_alpha = jnp.asarray(schedule.params["log_alpha"])
    k_n, k_eps = jax.random.split(key)
    n = jax.random.randint(k_n, x0.shape[:1], 0, log_alpha.shape[0])
    alpha = jnp.exp(log_alpha[n]).astype(x0.dtype)
    sigma = jnp.sqrt(-jnp.expm1(2.0 * log_alpha[n])).astype(x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_n = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps
    return jnp.mean(_mean_sq(model_fn(x_n, n.astype(x0.dtype)) - eps))


def drop_labels(key, labels, p, null_label: int):
    r"""Label dropout for classifier-free guidance (Ho & Salimans 2021, Alg. 1): each label is
    replaced by ``null_label`` independently with probability ``p``,

    .. math::
       \tilde y_i = \begin{cases} \varnothing & u_i < p \\ y_i & \text{else}\end{cases},
       \qquad u_i \sim U[0, 1),

    so the loss trains ``eps(x, t, y)`` on a fraction ``1 - p`` of the batch and the
    unconditional ``eps(x, t, null)`` on the rest, with one network.
    """
    drop = jax.random.uniform(key, labels.shape) < p
    return jnp.where(drop, null_label, labels).astype(jnp.int32)


def default_prediction(loss: str) -> str:
    """What the network of ``loss`` predicts by default: ``"velocity"`` for
    ``"flow_matching"``, else ``"eps"``."""
    return "velocity" if loss == "flow_matching" else "eps"


def check_loss_options(loss: str, prediction: str, weighting: str,
                       time_sampling: str = "uniform") -> None:
    """Valid names, and no setting the loss would ignore: ``prediction`` and ``weighting``
    apply to ``"dsm"`` only (``"edm"`` trains a preconditioned denoiser, sampled as
    ``as_model(..., prediction="edm")``; ``"ddpm"`` an eps-model of the DDPM step index with
    the simple weighting; ``"flow_matching"`` a velocity model,
    ``as_model(..., prediction="velocity")``), and ``time_sampling``
    to ``"flow_matching"`` only, so any value but their defaults with another loss is
    refused rather than silently dropped."""
    check_choice("loss", loss, LOSSES)
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    if loss != "dsm":
        for name, value, default in (("prediction", prediction, default_prediction(loss)),
                                     ("weighting", weighting, "simple")):
            if value != default:
                raise ValueError(f"{name}={value!r} applies to loss='dsm' only; loss={loss!r} "
                                 f"ignores it (leave {name}={default!r}, or use loss='dsm')")
    if loss != "flow_matching" and time_sampling != "uniform":
        raise ValueError(f"time_sampling={time_sampling!r} applies to loss='flow_matching' "
                         f"only; loss={loss!r} samples its own times (leave "
                         "time_sampling='uniform')")


def make_loss(kind: str, schedule: Schedule, *, prediction: str | None = None,
              weighting: str = "simple", sigma_data: float = 0.5,
              time_sampling: str = "uniform") -> Callable:
    """Return ``loss(model_fn, x0, key)`` for a loss family.

    Args:
      kind: ``"dsm"`` (:func:`dsm_loss`), ``"edm"`` (:func:`edm_loss`; ``model_fn`` is the
        raw network ``F(x_in, c_noise)``, preconditioned here), ``"ddpm"``
        (:func:`ddpm_loss`) or ``"flow_matching"`` (:func:`flow_matching_loss`).
      schedule, prediction, weighting: as in :func:`dsm_loss` (default prediction:
        :func:`default_prediction`).
      sigma_data: EDM's data standard deviation.
      time_sampling: as in :func:`flow_matching_loss`.
    """
    prediction = default_prediction(kind) if prediction is None else prediction
    check_loss_options(kind, prediction, weighting, time_sampling)

    def loss(model_fn, x0, key):
        if kind == "dsm":
            return dsm_loss(model_fn, schedule, x0, key, prediction=prediction,
                            weighting=weighting)
        if kind == "ddpm":
            return ddpm_loss(model_fn, schedule, x0, key)
        if kind == "flow_matching":
            return flow_matching_loss(model_fn, schedule, x0, key, time_sampling=time_sampling)
        return edm_loss(edm_precondition(model_fn, sigma_data), x0, key, sigma_data=sigma_data)

    return loss
