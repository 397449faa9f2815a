r"""Stochastic DDIM: the DDIM family of non-Markovian reverse processes with noise ``eta``.

For a step from ``s = t_i`` to ``t = t_{i+1}`` with ``h = lambda_t - lambda_s``:

.. math::
   x_t = \alpha_t \hat x_0 + \sqrt{\sigma_t^2 - c^2}\,\epsilon(x_s, s) + c\, z,\qquad
   \hat x_0 = \frac{x_s - \sigma_s \epsilon(x_s, s)}{\alpha_s},\qquad
   c^2 = \eta^2 \sigma_t^2\,\big(1 - e^{-2h}\big),

Song, Meng & Ermon 2021 (DDIM), eq. 12 with the variance of eq. 16, written for any schedule
(``1 - e^{-2h} = 1 - \alpha_s^2\sigma_t^2 / (\alpha_t^2\sigma_s^2)``). ``eta = 0`` is
deterministic DDIM; ``eta = 1`` samples the exact Gaussian posterior
``q(x_t | x_s, x_0 = \hat x_0)`` (DDPM with the ``\tilde\beta`` variance). As a noisy linear
step ``x_t = a x_s + b\,\epsilon + c z``:

.. math::
   a = \frac{\alpha_t}{\alpha_s},\qquad
   b = \sigma_t\Big(\sqrt{1-q} - e^{h}\Big)
     = -\sigma_t\Big(\frac{q}{1+\sqrt{1-q}} + \operatorname{expm1}(h)\Big),\quad
   q = \eta^2\big(-\operatorname{expm1}(-2h)\big),

the second form free of cancellation. 1 NFE/step; ``eta`` may be a traced scalar (a
``jax.vmap`` sweep over ``eta`` compiles once). Grids must decrease (sampling).
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax._checks import check_scalar
from deis_jax.solvers.base import Solver, make_solver
from deis_jax.solvers.ei import multistep_init
from deis_jax.solvers.noise import NoisyCoeffs, noisy_multistep_step

__all__ = ["stochastic_ddim"]


def _coefficients(schedule, ts, *, eta):
    ts = jnp.asarray(ts)
    lam, log_alpha, sigma = schedule.log_snr(ts), schedule.log_alpha(ts), schedule.sigma(ts)
    h = lam[1:] - lam[:-1]
    q = eta**2 * -jnp.expm1(-2.0 * h)
    sigma_t = sigma[1:]
    b = -sigma_t * (q / (1.0 + jnp.sqrt(1.0 - q)) + jnp.expm1(h))
    a = jnp.exp(log_alpha[1:] - log_alpha[:-1])
    return NoisyCoeffs(ts[:-1], a, b[:, None], sigma_t * jnp.sqrt(q))


_STOCHASTIC_DDIM = make_solver("ddim_eta", 1, 1, _coefficients, multistep_init,
                               noisy_multistep_step("ddim_eta"), stochastic=True)


def stochastic_ddim(eta=1.0) -> Solver:
    """Stochastic DDIM with noise scale ``eta`` in ``[0, 1]`` (1 NFE per step, order 1).

    Args:
      eta: 0 gives deterministic DDIM, 1 the ancestral (posterior) sampler. A Python float
        or a (possibly traced) scalar array; it is the solver's ``hparams``, so a new value
        reuses the compiled sampler.

    Example:
      >>> import jax
      >>> from deis_jax import as_model, sample, schedules, testing
      >>> from deis_jax.solvers.stochastic_ddim import stochastic_ddim
      >>> sched = schedules.vp_linear()
      >>> model = as_model(testing.ring_mixture().eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (4, 2))
      >>> x0 = sample(model, x_T, solver=stochastic_ddim(0.5), nfe=20,
      ...             key=jax.random.key(1))
    """
    eta = check_scalar("eta", eta, lower=0.0, upper=1.0)
    return _STOCHASTIC_DDIM.replace(hparams={"eta": eta})
