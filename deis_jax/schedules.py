"""Noise schedules as pure functions of continuous time.

The forward marginal is ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``. A :class:`Schedule`
is an immutable pytree: its numeric parameters are leaves (they may be traced, so a sweep over
``beta_max`` can be ``jax.vmap``-ed), while its family (the functions) and its default time
range are static.

Every family defines three primitives -- ``log_alpha(p, t)``, ``log_sigma(p, t)`` and the
inverse ``t_from_log_snr(p, lam)`` -- and everything else (``rho``, ``f``, ``g2``, the prior)
derives from them. Derivatives (``f = d log alpha/dt`` and ``g^2 = -2 sigma^2 d lambda/dt``)
are exact, by forward-mode autodiff of the primitives.

References:
  Song et al. 2021, "Score-Based Generative Modeling through SDEs" (VP, VE, sub-VP; Table 1).
  Nichol & Dhariwal 2021, "Improved DDPM" (cosine schedule, eq. 17).
  Karras et al. 2022, "Elucidating the Design Space..." (EDM, Table 1).
  Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS).
  Liu et al. 2023, "Flow Straight and Fast" (rectified flow); Lipman et al. 2023, "Flow
  Matching for Generative Modeling"; Esser et al. 2024, "Scaling Rectified Flow Transformers"
  (SD3: the timestep shift, Sec. 5.3.2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import (
    check_key, check_scalar, check_time_range, check_type, is_concrete, log_range)

__all__ = [
    "Schedule",
    "vp_linear",
    "vp_cosine",
    "vp_discrete",
    "ve",
    "sub_vp",
    "edm",
    "flow",
    "FAMILIES",
    "check_range",
    "check_schedule",
]


class _Family(NamedTuple):
    """The primitive functions of a schedule family (static, hashable by identity)."""

    name: str
    log_alpha: Callable[[dict, Any], Any]
    log_sigma: Callable[[dict, Any], Any]
    t_from_log_snr: Callable[[dict, Any], Any]
    prior_std: Callable[[dict, float], Any]
    alpha_is_one: bool = False  # variance exploding: x_t = x_0 + sigma_t eps


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A noise schedule: parameters (pytree leaves) plus the family's pure functions.

    Attributes:
      family: the static family (name and primitive functions).
      params: dict of numeric parameters; leaves of the pytree, may be traced.
      t_min: default smallest time of a sampling grid (static Python float).
      t_max: default largest time (static Python float).

    All methods are pure, elementwise in ``t`` and jit/vmap/grad friendly.

    Example:
      >>> from deis_jax import schedules
      >>> s = schedules.vp_linear()
      >>> float(s.alpha(0.0))
      1.0
    """

    family: _Family
    params: dict
    t_min: float
    t_max: float

    @property
    def name(self) -> str:
        return self.family.name

    def log_alpha(self, t):
        return self.family.log_alpha(self.params, jnp.asarray(t))

    def log_sigma(self, t):
        return self.family.log_sigma(self.params, jnp.asarray(t))

    def alpha(self, t):
        """Mean coefficient ``alpha_t`` of the forward marginal."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        """Standard deviation ``sigma_t`` of the forward marginal."""
        return jnp.exp(self.log_sigma(t))

    def log_snr(self, t):
        """Half log signal-to-noise ratio ``lambda_t = log(alpha_t / sigma_t)``."""
        return self.log_alpha(t) - self.log_sigma(t)

    def t_from_log_snr(self, lam):
        """Inverse of :meth:`log_snr` (closed form where one exists)."""
        return self.family.t_from_log_snr(self.params, jnp.asarray(lam))

    def rho(self, t):
        """``rho_t = sigma_t / alpha_t = exp(-lambda_t)`` (DEIS's rho, EDM's sigma)."""
        return jnp.exp(-self.log_snr(t))

    def t_from_rho(self, rho):
        """Inverse of :meth:`rho`."""
        return self.t_from_log_snr(-jnp.log(rho))

    def d_alpha(self, t):
        """Time derivative ``d alpha_t / dt`` (forward-mode autodiff of :meth:`alpha`)."""
        t = jnp.asarray(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t):
        """Time derivative ``d sigma_t / dt`` (forward-mode autodiff of :meth:`sigma`)."""
        t = jnp.asarray(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def f(self, t):
        """Drift coefficient ``f(t) = d log alpha_t / dt`` of ``dx = f x dt + g dw``."""
        t = jnp.asarray(t)
        return jax.jvp(self.log_alpha, (t,), (jnp.ones_like(t),))[1]

    def g2(self, t):
        r"""Squared diffusion ``g(t)^2 = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d\lambda/dt``."""
        t = jnp.asarray(t)
        lam, dlam = jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))
        del lam
        return -2.0 * self.sigma(t) ** 2 * dlam

    def prior_std(self):
        """Standard deviation of the Gaussian prior used at ``t_max``."""
        return self.family.prior_std(self.params, self.t_max)

    def prior_sample(self, key, shape, dtype=None):
        """Draw ``x_T ~ N(0, prior_std^2 I)`` of the given shape (``key``: one PRNG key)."""
        check_key("key", key)
        dtype = dtype or jnp.result_type(float)
        return self.prior_std() * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x):
        """Log-density of the prior, summed over all but the leading (batch) axis."""
        x = jnp.asarray(x)
        std = self.prior_std()
        n = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * sq / std**2 - n * (jnp.log(std) + 0.5 * math.log(2 * math.pi))


jax.tree_util.register_dataclass(
    Schedule, data_fields=["params"], meta_fields=["family", "t_min", "t_max"]
)


def _sigma_from_log_alpha_vp(log_alpha):
    # sigma^2 = 1 - alpha^2, computed without cancellation near t = 0.
    return 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


def _log_alpha_from_log_snr_vp(lam):
    # alpha^2 = sigmoid(2 lambda) when alpha^2 + sigma^2 = 1.
    return 0.5 * jax.nn.log_sigmoid(2.0 * lam)


def _one(p, t_max):
    del p, t_max
    return 1.0


def _param(name: str, value):
    """A positive, finite schedule parameter (possibly traced), stored in the default float
    dtype; concrete values must stay positive and finite there."""
    value = check_scalar(name, value, lower=0.0, lower_open=True, dtype=jnp.result_type(float))
    return jnp.asarray(value, float)


def check_range(schedule: Schedule, t_min, t_max, *, what: str | None = None) -> None:
    """Raise a ``ValueError`` when ``schedule`` is not usable on ``[t_min, t_max]``.

    Usable means: at both ends (``log alpha`` and ``log sigma`` are monotone in ``t``, so the
    ends bound the interval) ``|log alpha|``, ``|log sigma|`` and the log-SNR ``|lambda|`` are
    at most :func:`deis_jax._checks.log_range` of the default float dtype (44.4 in float32),
    so that ``alpha``, ``sigma``, ``rho = sigma/alpha`` and their squares are finite and
    non-zero; and ``lambda`` decreases from ``t_min`` to ``t_max``. Traced parameters are not
    checked. Evaluated eagerly even inside ``jax.jit`` when the parameters are constants.

    Args:
      schedule: the schedule.
      t_min, t_max: the time range (Python floats).
      what: how to name the culprit in the message (default: the schedule and the range),
        e.g. ``"vp_linear(beta_max=1e+30)"``.
    """
    if not is_concrete(schedule.params):
        return
    dtype = jnp.result_type(float)
    bound = log_range(dtype)
    with jax.ensure_compile_time_eval(), np.errstate(over="ignore", under="ignore"):
        t = jnp.asarray([t_min, t_max], dtype)
        la, ls = schedule.log_alpha(t), schedule.log_sigma(t)
        vals = np.asarray(jnp.stack([la, ls, la - ls]), np.float64)
    where = what or (f"the {schedule.name} schedule on [t_min, t_max] = [{t_min!r}, "
                     f"{t_max!r}]")
    for j, (end, t_end) in enumerate((("t_min", t_min), ("t_max", t_max))):
        a, s, lam = vals[:, j]
        if not (np.all(np.isfinite(vals[:, j])) and max(abs(a), abs(s), abs(lam)) <= bound):
            raise ValueError(
                f"{where} is not usable in {np.dtype(dtype).name}: at {end}={t_end!r}, "
                f"log alpha = {a:.4g}, log sigma = {s:.4g}, log-SNR lambda = {lam:.4g}; the "
                f"samplers square and divide alpha, sigma and rho = sigma/alpha, so they need "
                f"|log alpha|, |log sigma| and |lambda| <= {bound:.1f} (or enable float64)")
    if not vals[2, 0] > vals[2, 1]:
        raise ValueError(f"{where}: the log-SNR must decrease from t_min to t_max, got "
                         f"lambda(t_min={t_min!r}) = {vals[2, 0]:.6g} <= lambda(t_max="
                         f"{t_max!r}) = {vals[2, 1]:.6g}")


def check_schedule(schedule) -> None:
    """``schedule`` must be a :class:`Schedule` (not a family name, not a dict)."""
    check_type("schedule", schedule, Schedule, "a deis_jax Schedule (e.g. "
               "schedules.vp_linear(), or schedules.from_name('vp_linear'))")


def _checked(schedule: Schedule, **args) -> Schedule:
    """``schedule`` after :func:`check_range` on its default range, naming ``args``."""
    what = f"{schedule.name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    check_range(schedule, schedule.t_min, schedule.t_max, what=what)
    return schedule


# ---------------------------------------------------------------- VP linear


def _vpl_log_alpha(p, t):
    return -0.25 * t**2 * (p["beta_max"] - p["beta_min"]) - 0.5 * t * p["beta_min"]


def _vpl_t_from_log_alpha(p, log_alpha):
    # Stable root of 0.25 d t^2 + 0.5 b t + log_alpha = 0 (d = beta_max - beta_min).
    b, d = p["beta_min"], p["beta_max"] - p["beta_min"]
    return -2.0 * log_alpha / (0.5 * b + jnp.sqrt(0.25 * b**2 - d * log_alpha))


_VP_LINEAR = _Family(
    "vp_linear",
    log_alpha=_vpl_log_alpha,
    log_sigma=lambda p, t: _sigma_from_log_alpha_vp(_vpl_log_alpha(p, t)),
    t_from_log_snr=lambda p, lam: _vpl_t_from_log_alpha(p, _log_alpha_from_log_snr_vp(lam)),
    prior_std=_one,
)


def vp_linear(beta_min=0.1, beta_max=20.0, *, t_min=1e-3, t_max=1.0) -> Schedule:
    r"""Variance-preserving SDE with linear ``beta(t)`` (Song et al. 2021, eq. 11; DDPM).

    ``log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2``, ``sigma_t^2 = 1 - alpha_t^2``.

    Args:
      beta_min, beta_max: ``beta(0)`` and ``beta(1)``; may be traced arrays.
      t_min, t_max: default sampling range.
    """
    params = {"beta_min": _param("beta_min", beta_min), "beta_max": _param("beta_max", beta_max)}
    return _checked(Schedule(_VP_LINEAR, params, *check_time_range(t_min, t_max)),
                    beta_min=beta_min, beta_max=beta_max, t_min=t_min, t_max=t_max)


# ---------------------------------------------------------------- sub-VP


def _subvp_t_from_log_snr(p, lam):
    # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 / (e^{-lam} + sqrt(e^{-2 lam} + 4)).
    e = jnp.exp(-lam)
    log_alpha = jnp.log(2.0) - jnp.log(e + jnp.sqrt(e**2 + 4.0))
    return _vpl_t_from_log_alpha(p, log_alpha)


_SUB_VP = _Family(
    "sub_vp",
    log_alpha=_vpl_log_alpha,
    log_sigma=lambda p, t: 2.0 * _sigma_from_log_alpha_vp(_vpl_log_alpha(p, t)),
    t_from_log_snr=_subvp_t_from_log_snr,
    prior_std=_one,
)


def sub_vp(beta_min=0.1, beta_max=20.0, *, t_min=1e-3, t_max=1.0) -> Schedule:
    """Sub-VP SDE (Song et al. 2021, eq. 12): VP's ``alpha_t``, ``sigma_t = 1 - alpha_t^2``."""
    params = {"beta_min": _param("beta_min", beta_min), "beta_max": _param("beta_max", beta_max)}
    return _checked(Schedule(_SUB_VP, params, *check_time_range(t_min, t_max)),
                    beta_min=beta_min, beta_max=beta_max, t_min=t_min, t_max=t_max)


# ---------------------------------------------------------------- VP cosine


def _cos_log_alpha(p, t):
    s = p["s"]
    return jnp.log(jnp.cos((t + s) / (1 + s) * (jnp.pi / 2))) - jnp.log(
        jnp.cos(s / (1 + s) * (jnp.pi / 2))
    )


def _cos_t_from_log_snr(p, lam):
    s = p["s"]
    log_alpha = _log_alpha_from_log_snr_vp(lam)
    c0 = jnp.log(jnp.cos(s / (1 + s) * (jnp.pi / 2)))
    return 2.0 * (1 + s) / jnp.pi * jnp.arccos(jnp.exp(log_alpha + c0)) - s


_VP_COSINE = _Family(
    "vp_cosine",
    log_alpha=_cos_log_alpha,
    log_sigma=lambda p, t: _sigma_from_log_alpha_vp(_cos_log_alpha(p, t)),
    t_from_log_snr=_cos_t_from_log_snr,
    prior_std=_one,
)


def vp_cosine(s=0.008, *, t_min=1e-3, t_max=0.9946) -> Schedule:
    """VP with the cosine ``alpha_t^2`` of Improved DDPM (Nichol & Dhariwal 2021, eq. 17).

    ``alpha_t = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)``. ``alpha`` reaches 0 at ``t = 1``,
    so the default ``t_max = 0.9946`` (as in DPM-Solver) keeps ``lambda`` finite.
    """
    params = {"s": _param("s", s)}
    t_min, t_max = check_time_range(t_min, t_max)
    if t_max >= 1.0:
        raise ValueError(f"vp_cosine needs t_max < 1 (alpha_1 = 0), got t_max={t_max!r}")
    return _checked(Schedule(_VP_COSINE, params, t_min, t_max), s=s, t_min=t_min, t_max=t_max)


# ---------------------------------------------------------------- VP discrete (DDPM table)


def _disc_grid(p):
    n = p["log_alpha"].shape[0]
    return jnp.arange(1, n + 1, dtype=p["log_alpha"].dtype) / n


def _disc_log_alpha(p, t):
    la = p["log_alpha"]
    tn = _disc_grid(p)
    # Piecewise-linear in t, extended linearly by the end segments.
    inner = jnp.interp(t, tn, la)
    lo = la[0] + (t - tn[0]) * (la[1] - la[0]) / (tn[1] - tn[0])
    hi = la[-1] + (t - tn[-1]) * (la[-1] - la[-2]) / (tn[-1] - tn[-2])
    return jnp.where(t < tn[0], lo, jnp.where(t > tn[-1], hi, inner))


def _disc_t_from_log_snr(p, lam):
    log_alpha = _log_alpha_from_log_snr_vp(lam)
    la = p["log_alpha"]
    tn = _disc_grid(p)
    # log_alpha is strictly decreasing in t: invert the piecewise-linear map exactly.
    inner = jnp.interp(-log_alpha, -la, tn)
    lo = tn[0] + (log_alpha - la[0]) * (tn[1] - tn[0]) / (la[1] - la[0])
    hi = tn[-1] + (log_alpha - la[-1]) * (tn[-1] - tn[-2]) / (la[-1] - la[-2])
    return jnp.where(log_alpha > la[0], lo, jnp.where(log_alpha < la[-1], hi, inner))


_VP_DISCRETE = _Family(
    "vp_discrete",
    log_alpha=_disc_log_alpha,
    log_sigma=lambda p, t: _sigma_from_log_alpha_vp(_disc_log_alpha(p, t)),
    t_from_log_snr=_disc_t_from_log_snr,
    prior_std=_one,
)


def vp_discrete(*, betas=None, alphas_cumprod=None, t_min=None, t_max=1.0) -> Schedule:
    r"""A DDPM-style discrete table mapped to continuous time (as DPM-Solver does).

    With ``N`` entries, entry ``n`` (0-based) sits at ``t_n = (n+1)/N`` and
    ``log alpha`` is interpolated piecewise-linearly in ``t`` between them, so a model trained
    on integer steps ``n`` is queried at ``n = N t - 1`` (``as_model(...,
    timestep="index")``, or ``timestep="discrete"`` for the rounded int32 index; see
    :data:`deis_jax.model.TIMESTEPS`).

    Args:
      betas: per-step ``beta_n`` in ``(0, 1)``, shape ``(N,)``; or
      alphas_cumprod: ``prod_{m<=n}(1 - beta_m)``, strictly decreasing in ``(0, 1]``.
      t_min: default ``1/N`` (the first table entry); t_max: default 1.
    """
    if (betas is None) == (alphas_cumprod is None):
        raise ValueError("vp_discrete needs exactly one of betas= or alphas_cumprod=")
    if betas is not None:
        name, b = "betas", _table("betas", betas, upper_open=True)
        log_alpha = 0.5 * np.cumsum(np.log1p(-b))
    else:
        name, a = "alphas_cumprod", _table("alphas_cumprod", alphas_cumprod, upper_open=False)
        if not np.all(np.diff(a) < 0):
            bad = int(np.argmax(np.diff(a) >= 0))
            raise ValueError(
                "alphas_cumprod must be strictly decreasing; "
                f"alphas_cumprod[{bad}]={float(a[bad])!r} <= "
                f"alphas_cumprod[{bad + 1}]={float(a[bad + 1])!r}"
            )
        log_alpha = 0.5 * np.log(a)
    stored = jnp.asarray(log_alpha, float)
    collapsed = np.flatnonzero(np.diff(np.asarray(stored)) >= 0)
    if collapsed.size:
        i = int(collapsed[0])
        raise ValueError(
            f"{name} gives log alpha entries {i} and {i + 1} that differ in float64 "
            f"({float(log_alpha[i])!r}, {float(log_alpha[i + 1])!r}) but are equal in "
            f"{stored.dtype.name}, the dtype the table is stored in, so the table cannot be "
            "inverted there: merge those steps or enable float64 "
            "(jax.config.update('jax_enable_x64', True))"
        )
    n = log_alpha.shape[0]
    t_min = 1.0 / n if t_min is None else t_min
    return _checked(Schedule(_VP_DISCRETE, {"log_alpha": stored},
                             *check_time_range(t_min, t_max)),
                    **{name: f"<table of {n}, last alpha_bar "
                              f"{float(np.exp(2 * log_alpha[-1])):.3g}>"},
                    t_min=t_min, t_max=t_max)


def _table(name: str, values, *, upper_open: bool) -> np.ndarray:
    """A 1-d float64 table of >= 2 values in ``(0, 1)`` (``(0, 1]`` unless ``upper_open``),
    with the first bad entry named."""
    try:
        v = np.asarray(values)
    except ValueError as err:  # ragged nested sequences
        raise TypeError(f"{name} must be a 1-d array of numbers: {err}") from None
    if v.dtype == bool or not (np.issubdtype(v.dtype, np.floating)
                               or np.issubdtype(v.dtype, np.integer)):
        raise TypeError(f"{name} must be a 1-d array of real numbers, got {name}={values!r}")
    v = v.astype(np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"{name} must be a 1-d array of >= 2 values, got shape {v.shape}")
    ok = (v > 0) & ((v < 1) if upper_open else (v <= 1))
    if not np.all(ok):
        i = int(np.argmin(ok))
        hint = ("; alphas_cumprod = 0 is a zero terminal SNR (lambda = -inf at t_max), "
                "which no sampler here can start from: clip it (e.g. to 1e-8)"
                if name == "alphas_cumprod" and v[i] == 0 else "")
        interval = "(0, 1)" if upper_open else "(0, 1]"
        raise ValueError(f"{name}[{i}]={float(v[i])!r} is outside {interval}{hint}")
    return v


# ---------------------------------------------------------------- VE


def _ve_log_sigma(p, t):
    lo, hi = jnp.log(p["sigma_min"]), jnp.log(p["sigma_max"])
    return lo + t * (hi - lo)


_VE = _Family(
    "ve",
    log_alpha=lambda p, t: jnp.zeros_like(t * p["sigma_min"]),
    log_sigma=_ve_log_sigma,
    t_from_log_snr=lambda p, lam: (-lam - jnp.log(p["sigma_min"]))
    / (jnp.log(p["sigma_max"]) - jnp.log(p["sigma_min"])),
    prior_std=lambda p, t_max: jnp.exp(_ve_log_sigma(p, t_max)),
    alpha_is_one=True,
)


def ve(sigma_min=0.01, sigma_max=50.0, *, t_min=1e-5, t_max=1.0) -> Schedule:
    """Variance-exploding SDE (Song et al. 2021, eq. 9): ``alpha = 1``,
    ``sigma_t = sigma_min (sigma_max / sigma_min)^t``; prior ``N(0, sigma(t_max)^2)``."""
    params = {"sigma_min": _param("sigma_min", sigma_min),
              "sigma_max": _param("sigma_max", sigma_max)}
    if is_concrete(params) and not params["sigma_min"] < params["sigma_max"]:
        raise ValueError(f"need sigma_min < sigma_max, got {sigma_min=}, {sigma_max=}")
    return _checked(Schedule(_VE, params, *check_time_range(t_min, t_max)),
                    sigma_min=sigma_min, sigma_max=sigma_max, t_min=t_min, t_max=t_max)


# ---------------------------------------------------------------- EDM


_EDM = _Family(
    "edm",
    log_alpha=lambda p, t: jnp.zeros_like(t * p["sigma_data"]),
    log_sigma=lambda p, t: jnp.log(t),
    t_from_log_snr=lambda p, lam: jnp.exp(-lam),
    prior_std=lambda p, t_max: t_max,
    alpha_is_one=True,
)


def edm(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5) -> Schedule:
    """EDM (Karras et al. 2022, Table 1): ``alpha = 1``, ``sigma_t = t``, so ``rho = t``.

    ``sigma_min``/``sigma_max`` are the default ``t_min``/``t_max`` (static floats);
    ``sigma_data`` is used by the EDM preconditioning in :mod:`deis_jax.parameterization`.
    """
    t_range = check_time_range(sigma_min, sigma_max, names=("sigma_min", "sigma_max"))
    schedule = Schedule(_EDM, {"sigma_data": _param("sigma_data", sigma_data)}, *t_range)
    return _checked(schedule, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)


# ---------------------------------------------------------------- flow (rectified flow)


def _flow_log_alpha(p, t):
    return jnp.log1p(-t) - jnp.log1p((p["shift"] - 1.0) * t)


def _flow_log_sigma(p, t):
    return jnp.log(p["shift"]) + jnp.log(t) - jnp.log1p((p["shift"] - 1.0) * t)


_FLOW = _Family(
    "flow",
    log_alpha=_flow_log_alpha,
    log_sigma=_flow_log_sigma,
    # lambda = log((1 - t) / t) - log(shift)  =>  t = 1 / (1 + shift e^lambda).
    t_from_log_snr=lambda p, lam: jax.nn.sigmoid(-lam - jnp.log(p["shift"])),
    prior_std=lambda p, t_max: jnp.exp(_flow_log_sigma(p, t_max)),
)


def flow(shift=1.0, *, t_min=1e-3, t_max=1.0 - 1e-3) -> Schedule:
    r"""Rectified flow / flow matching with the SD3 timestep shift.

    With ``u = s t / (1 + (s - 1) t)`` (the shift ``s``; Esser et al. 2024, Sec. 5.3.2):

    .. math::
       \sigma_t = u, \qquad lpha_t = 1 - u = rac{1 - t}{1 + (s - 1) t}, \qquad
       \lambda_t = \lograc{1 - t}{t} - \log s, \qquad t(\lambda) = rac{1}{1 + s e^\lambda}.

    ``shift=1`` is the rectified-flow path ``x_t = (1 - t) x_0 + t eps`` (Liu et al. 2023;
    Lipman et al. 2023 with ``sigma_min = 0``): **data at t = 0, noise at t = 1**. A shift
    ``s > 1`` spends more of ``[0, 1]`` at high noise; it only translates the log-SNR by
    ``-log s``, so ``flow(s)`` at time ``t`` has the marginal of ``flow(1)`` at time
    ``sigma_t``. The shift is data (a pytree leaf): ``jax.vmap`` over it compiles once.

    Time range: at ``t = 1`` ``alpha = 0`` (log-SNR ``-inf``) and at ``t = 0`` ``sigma = 0``
    (``+inf``), where the exponential integrators' ``rho = sigma/alpha`` is undefined, so the
    default range stops ``1e-3`` short of both ends (log-SNR ``+-6.9`` at ``shift=1``, about
    VP-linear's ``-5 .. 4.6``). The prior is ``N(0, sigma(t_max)^2 I)``: the marginal at
    ``t_max`` also holds ``alpha(t_max) x_0`` (``1e-3 x_0`` at ``shift=1``), which the prior
    ignores, as VP's does for its ``alpha(1) = 6.7e-3``.

    The network of a flow-matching model predicts the velocity ``dx/dt`` (``eps - x_0`` at
    ``shift=1``): sample it as ``as_model(network, schedule, prediction="velocity")`` (see
    :func:`deis_jax.parameterization.flow_velocity_model` for models conditioned on
    ``sigma``, such as SD3/Flux, and for the noise-at-``t = 0`` convention). Every solver
    runs on it; the best grid depends on the data (``benchmarks/results/flow.md``): the
    ``"shifted"`` and ``"uniform"`` grids for broad high-dimensional data, ``"quadratic"`` or
    ``"log_snr"`` for sharp low-dimensional modes.

    Args:
      shift: the timestep shift ``s > 0`` (SD3 uses 3.0; 1 is no shift); may be traced.
      t_min, t_max: default sampling range, ``0 < t_min < t_max < 1``.

    Example:
      >>> from deis_jax import schedules
      >>> s = schedules.flow()
      >>> round(float(s.alpha(0.25)), 6), round(float(s.sigma(0.25)), 6)
      (0.75, 0.25)
    """
    params = {"shift": _param("shift", shift)}
    t_min, t_max = check_time_range(t_min, t_max)
    if t_max >= 1.0:
        raise ValueError(f"flow needs t_max < 1 (alpha = 1 - sigma vanishes at t = 1, where "
                         f"the log-SNR is -inf), got t_max={t_max!r}; the default is "
                         f"{1.0 - 1e-3!r}")
    return _checked(Schedule(_FLOW, params, t_min, t_max), shift=shift, t_min=t_min,
                    t_max=t_max)


FAMILIES = {f.name: f for f in (_VP_LINEAR, _VP_COSINE, _VP_DISCRETE, _VE, _SUB_VP, _EDM,
                                _FLOW)}
"""Every schedule family by name: the one registry the checkpoint format, the CLI and the
solvers read (``FAMILIES[name].alpha_is_one`` and so on)."""


def _ddpm_linear() -> Schedule:
    """DDPM's table (Ho et al. 2020, Sec. 4): 1000 betas linear from 1e-4 to 0.02."""
    return vp_discrete(betas=np.linspace(1e-4, 0.02, 1000))


_DEFAULT_INSTANCES = {
    "vp_linear": vp_linear,
    "vp_cosine": vp_cosine,
    "vp_discrete": _ddpm_linear,
    "ve": ve,
    "sub_vp": sub_vp,
    "edm": edm,
    "flow": flow,
}


def from_name(name: str) -> Schedule:
    """The default instance of the family ``name`` (a key of :data:`FAMILIES`).

    Every family's factory with its default arguments; ``"vp_discrete"`` is DDPM's table of
    1000 betas linear from 1e-4 to 0.02.

    Args:
      name: a schedule family name, e.g. ``"vp_linear"`` or ``"edm"``.

    Raises:
      ValueError: ``name`` is not a family, naming the valid choices.

    Example:
      >>> from deis_jax import schedules
      >>> schedules.from_name("vp_discrete").params["log_alpha"].shape
      (1000,)
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown schedule={name!r}; valid choices: {sorted(FAMILIES)}")
    return _DEFAULT_INSTANCES[name]()


__all__ += ["from_name"]
