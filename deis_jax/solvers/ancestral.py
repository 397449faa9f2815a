r"""Ancestral samplers: DDPM (Ho et al. 2020) and Score-SDE's VE ancestral predictor.

Both draw ``x_t`` given ``x_s`` (``s = t_i > t = t_{i+1}``, ``h = lambda_t - lambda_s``) from a
Gaussian whose mean plugs the model's noise prediction into a reverse Markov step.

**DDPM** (Ho et al. 2020, eq. 11 / Alg. 2 with ``sigma_t^2 = beta_t``; Song et al. 2021,
eq. 4 and App. E). The forward transition ``q(x_s | x_t) = N(A x_t, v I)`` has
``A = alpha_s / alpha_t`` and ``v = sigma_s^2 - A^2 sigma_t^2 = -sigma_s^2 expm1(-2h)``
(``v = beta = 1 - A^2`` for VP); the reverse step uses the same variance:

.. math::
   x_t = \frac{1}{A}\Big(x_s + v\,\nabla\log p_s(x_s)\Big) + \sqrt{v}\,z
       = \frac{\alpha_t}{\alpha_s}\Big(x_s - \frac{v}{\sigma_s}\epsilon(x_s, s)\Big)
         + \sqrt{v}\,z .

Written for any schedule; it is the DDPM sampler on VP schedules (on VE, ``A = 1`` and it
becomes Score-SDE's reverse-diffusion predictor).

**VE ancestral** (Song et al. 2021, App. F, ancestral sampling for SMLD/VE): in
``y = x/alpha`` and ``rho = sigma/alpha`` (``y = x``, ``rho = sigma`` for VE)

.. math::
   y_t = y_s + (\rho_s^2 - \rho_t^2)\,\nabla_y\log p_s
         + \sqrt{\frac{\rho_t^2(\rho_s^2 - \rho_t^2)}{\rho_s^2}}\,z,\qquad
   x_t = \alpha_t y_t,

i.e. ``x_t = (alpha_t/alpha_s) x_s - alpha_t rho_s (1 - e^{-2h}) eps
+ sigma_t sqrt(1 - e^{-2h}) z``.
It samples the exact posterior ``q(x_t | x_s, x_0 = \hat x_0)``, so it coincides with
stochastic DDIM at ``eta = 1`` (checked in the tests). Both are 1 NFE/step, order 1 (weak).
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.ei import multistep_init
from deis_jax.solvers.noise import NoisyCoeffs, noisy_multistep_step

__all__ = ["ddpm", "ve_ancestral", "ddpm_coefficients", "ve_ancestral_coefficients"]


def ddpm_coefficients(schedule, ts) -> NoisyCoeffs:
    """Per-step ``(a, c, noise)`` of the DDPM ancestral step (module docstring)."""
    ts = jnp.asarray(ts)
    lam, log_alpha, sigma = schedule.log_snr(ts), schedule.log_alpha(ts), schedule.sigma(ts)
    h = lam[1:] - lam[:-1]
    sigma_s = sigma[:-1]
    v = -(sigma_s**2) * jnp.expm1(-2.0 * h)
    a = jnp.exp(log_alpha[1:] - log_alpha[:-1])
    return NoisyCoeffs(ts[:-1], a, (-a * v / sigma_s)[:, None], jnp.sqrt(v))


def ve_ancestral_coefficients(schedule, ts) -> NoisyCoeffs:
    """Per-step ``(a, c, noise)`` of Score-SDE's VE ancestral step (module docstring)."""
    ts = jnp.asarray(ts)
    lam, log_alpha = schedule.log_snr(ts), schedule.log_alpha(ts)
    rho, sigma = schedule.rho(ts), schedule.sigma(ts)
    one_minus = -jnp.expm1(-2.0 * (lam[1:] - lam[:-1]))  # 1 - rho_t^2 / rho_s^2
    alpha_t = jnp.exp(log_alpha[1:])
    a = jnp.exp(log_alpha[1:] - log_alpha[:-1])
    c = -alpha_t * rho[:-1] * one_minus
    return NoisyCoeffs(ts[:-1], a, c[:, None], sigma[1:] * jnp.sqrt(one_minus))


_DDPM = make_solver("ddpm", 1, 1, ddpm_coefficients, multistep_init,
                    noisy_multistep_step("ddpm"), stochastic=True)
_VE_ANCESTRAL = make_solver("ve_ancestral", 1, 1, ve_ancestral_coefficients, multistep_init,
                            noisy_multistep_step("ve_ancestral"), stochastic=True)


def ddpm() -> Solver:
    """DDPM ancestral sampling (``sigma_t^2 = beta_t``), 1 NFE per step."""
    return _DDPM


def ve_ancestral() -> Solver:
    """Score-SDE's ancestral predictor for VE (posterior variance), 1 NFE per step."""
    return _VE_ANCESTRAL
