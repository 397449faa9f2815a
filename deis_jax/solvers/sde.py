r"""The reverse-SDE family of DEIS eq. 4 and three discretisations of it.

For ``eta >= 0`` every member of

.. math::
   dx = \Big[f(t)\,x - \frac{1+\eta^2}{2}\,g(t)^2\,\nabla\log p_t(x)\Big]dt + \eta\,g(t)\,d\bar w

has the marginals ``p_t`` of the forward SDE ``dx = f x dt + g dw`` (Zhang & Chen 2023, eq. 4):
``eta = 0`` is the probability-flow ODE, ``eta = 1`` Anderson's reverse SDE. With
``nabla log p = -eps/sigma`` and ``g^2 = -2 sigma^2 d lambda/dt`` the drift is
``f x - (1+eta^2) sigma (d lambda/dt) eps``. Steps go from ``s = t_i`` to ``t = t_{i+1} < s``
with ``h = lambda_t - lambda_s > 0``; ``z ~ N(0, I)`` is drawn per sample.

* :func:`euler_maruyama` -- Euler--Maruyama in ``t`` (reverse SDE: Song et al. 2021, eq. 6):

  .. math:: x_t = x_s + (t-s)\Big[f(s) x_s + \frac{(1+\eta^2)\,g^2(s)}{2\sigma_s}\epsilon_s\Big]
            + \eta\, g(s)\sqrt{s - t}\; z .

  ``eta = 0`` is Euler on the probability-flow ODE (``"euler"``) exactly.
* :func:`sde_ei1` -- the exponential integrator with ``eps`` frozen at ``s`` (DEIS's
  stochastic scheme; SDE-DPM-Solver-1 of Lu et al. 2022b at ``eta = 1``): the linear part
  and the noise variance are integrated exactly,

  .. math:: x_t = \frac{\alpha_t}{\alpha_s}x_s + (1+\eta^2)\,\alpha_t(\rho_t-\rho_s)\,\epsilon_s
            + \eta\,\sigma_t\sqrt{e^{2h}-1}\; z .

  ``eta = 0`` is DDIM.
* :func:`sde_ei2` -- the data-prediction exponential integrator with a linear-in-``lambda``
  interpolation of the last two ``x0``-predictions (second order; SDE-DPM-Solver++(2M),
  Lu et al. 2022b, generalised to any ``eta``). Writing ``eps = (x - alpha x0)/sigma``,
  the drift's linear part integrates to ``(sigma_t/sigma_s) e^{-eta^2 h}`` and, with
  ``kappa = 1 + eta^2`` and ``phi = 1 - e^{-kappa h}``,

  .. math:: x_t = \frac{\sigma_t}{\sigma_s}e^{-\eta^2 h}x_s + \alpha_t\varphi\,\hat x_{0,s}
            + w\,(\hat x_{0,s} - \hat x_{0,s'}) + \sigma_t\sqrt{1-e^{-2\eta^2 h}}\; z,

  with ``r = h_{prev}/h`` and ``w = alpha_t (1 - phi/(kappa h)) / r`` (exact integral of the
  linear interpolant, ``correction="exact"``) or ``w = alpha_t phi / (2r)`` (Lu et al.'s
  midpoint form, ``correction="midpoint"``). The first step is first order (``w = 0``).

All three: 1 NFE/step; ``eta`` is the solver's ``hparams`` (traced: new values and a
``jax.vmap`` over ``eta`` do not recompile). Grids must decrease (these integrate the reverse SDE).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from deis_jax._checks import check_choice, check_scalar
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.ei import exp_linear, multistep_init, phi_weights
from deis_jax.solvers.noise import NoisyCoeffs, noisy_multistep_step

__all__ = ["euler_maruyama", "sde_ei1", "sde_ei2", "euler_maruyama_coefficients"]

CORRECTIONS = ("exact", "midpoint")


def euler_maruyama_coefficients(schedule, ts, eta) -> NoisyCoeffs:
    """Per-step ``(a, c, noise)`` of Euler--Maruyama on the ``eta``-SDE (module docstring)."""
    ts = jnp.asarray(ts)
    t, h = ts[:-1], ts[1:] - ts[:-1]
    g2 = schedule.g2(t)
    a = 1.0 + h * schedule.f(t)
    c = h * ((1.0 + eta**2) * g2) / (2.0 * schedule.sigma(t))
    return NoisyCoeffs(t, a, c[:, None], eta * jnp.sqrt(g2 * jnp.abs(h)))


def _em_coefficients(schedule, ts, *, eta):
    return euler_maruyama_coefficients(schedule, ts, eta)


_EULER_MARUYAMA = make_solver("euler_maruyama", 1, 1, _em_coefficients, multistep_init,
                              noisy_multistep_step("euler_maruyama"), stochastic=True)


def euler_maruyama(eta=1.0) -> Solver:
    """Euler--Maruyama on the reverse ``eta``-SDE (1 NFE per step, weak order 1).

    Args:
      eta: noise scale ``>= 0``; 0 is Euler on the probability-flow ODE, 1 the reverse SDE.
    """
    return _EULER_MARUYAMA.replace(hparams={"eta": check_scalar("eta", eta, lower=0.0)})


def _ei1_coefficients(schedule, ts, *, eta):
    ts = jnp.asarray(ts)
    lin = exp_linear(schedule, ts[:-1], ts[1:], "eps")
    noise = eta * schedule.sigma(ts[1:]) * jnp.sqrt(jnp.expm1(2.0 * lin.hh))
    return NoisyCoeffs(ts[:-1], lin.a, (1.0 + eta**2) * phi_weights(lin, 1), noise)


_SDE_EI1 = make_solver("sde_ei1", 1, 1, _ei1_coefficients, multistep_init,
                       noisy_multistep_step("sde_ei1"), stochastic=True)


def sde_ei1(eta=1.0) -> Solver:
    """First-order exponential integrator for the ``eta``-SDE (eps frozen), 1 NFE per step.

    Args:
      eta: noise scale ``>= 0``; 0 is DDIM, 1 is SDE-DPM-Solver-1.
    """
    return _SDE_EI1.replace(hparams={"eta": check_scalar("eta", eta, lower=0.0)})


@functools.lru_cache(maxsize=None)
def _sde_ei2(correction: str) -> Solver:
    def coefficients(schedule, ts, *, eta):
        ts = jnp.asarray(ts)
        lam, log_sigma = schedule.log_snr(ts), schedule.log_sigma(ts)
        h = lam[1:] - lam[:-1]
        kappa = 1.0 + eta**2
        a = jnp.exp(log_sigma[1:] - log_sigma[:-1] - eta**2 * h)
        phi = -jnp.expm1(-kappa * h)
        alpha_t = schedule.alpha(ts[1:])
        h_prev = jnp.concatenate([h[:1], h[:-1]])
        inv_r = h / h_prev
        if correction == "exact":
            w = alpha_t * (1.0 - phi / (kappa * h)) * inv_r
        else:
            w = 0.5 * alpha_t * phi * inv_r
        w = w.at[0].set(0.0)  # warm-up: first order
        c = jnp.stack([alpha_t * phi + w, -w], axis=-1)
        noise = schedule.sigma(ts[1:]) * jnp.sqrt(-jnp.expm1(-2.0 * eta**2 * h))
        return NoisyCoeffs(ts[:-1], a, c, noise)

    return make_solver("sde_ei2", 2, 1, coefficients, multistep_init,
                       noisy_multistep_step("sde_ei2"), model="x0", stochastic=True)


def sde_ei2(eta=1.0, correction: str = "exact") -> Solver:
    """Second-order multistep data-prediction exponential integrator for the ``eta``-SDE.

    Args:
      eta: noise scale ``>= 0``; 1 is SDE-DPM-Solver++(2M).
      correction: ``"exact"`` (exact exponential weight of the linear interpolant) or
        ``"midpoint"`` (Lu et al. 2022b's form).
    """
    eta = check_scalar("eta", eta, lower=0.0)
    check_choice("correction", correction, CORRECTIONS)
    return _sde_ei2(correction).replace(hparams={"eta": eta})
