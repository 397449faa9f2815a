r"""DDIM: the exponential integrator with ``eps`` frozen over each step.

.. math::
   x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1}(\rho_{i+1} - \rho_i)\,
   \epsilon(x_i, t_i)

Song, Meng & Ermon 2021 (DDIM), eq. 13/14; it is also tAB-DEIS of order 0
(Zhang & Chen 2023, Prop. 1) and DPM-Solver-1 (Lu et al. 2022, eq. 3.7). Order 1, 1 NFE/step.
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax.solvers.base import (
    MultistepCoeffs,
    exp_step_factors,
    make_solver,
    multistep_init,
    multistep_step,
)

__all__ = ["ddim"]


def _coefficients(schedule, ts):
    ts = jnp.asarray(ts)
    a, c = exp_step_factors(schedule, ts)
    return MultistepCoeffs(ts[:-1], a, c[:, None])


def ddim():
    """Deterministic DDIM (1 NFE per step, order 1), closed-form weights."""
    return make_solver("ddim", 1, 1, _coefficients, multistep_init, multistep_step)
