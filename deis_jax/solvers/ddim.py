r"""DDIM: the exponential integrator with ``eps`` frozen over each step.

.. math::
   x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1}(\rho_{i+1} - \rho_i)\,
   \epsilon(x_i, t_i)

Song, Meng & Ermon 2021 (DDIM), eq. 13/14; it is also tAB-DEIS of degree 0
(Zhang & Chen 2023, Prop. 1) and DPM-Solver-1 (Lu et al. 2022, eq. 3.7). Order 1, 1 NFE/step.
``alpha_{i+1}(rho_{i+1} - rho_i) = -sigma_{i+1} expm1(lambda_{i+1} - lambda_i)`` is the
first weight of :func:`~deis_jax.solvers.ei.phi_weights`.
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ei import (
    MultistepCoeffs,
    exp_linear,
    multistep_init,
    multistep_step,
    phi_weights,
)

__all__ = ["ddim", "ddim_coefficients"]


def ddim_coefficients(schedule, ts) -> MultistepCoeffs:
    """The DDIM table: ``a_i = alpha_{i+1}/alpha_i`` and the single weight of ``eps_i``."""
    ts = jnp.asarray(ts)
    lin = exp_linear(schedule, ts[:-1], ts[1:], "eps")
    return MultistepCoeffs(ts[:-1], lin.a, phi_weights(lin, 1))


_DDIM = make_solver("ddim", 1, 1, ddim_coefficients, multistep_init, multistep_step)


def ddim():
    """Deterministic DDIM (1 NFE per step, order 1), closed-form weights."""
    return _DDIM
