r"""Euler's method on the probability-flow ODE in ``t`` -- the baseline DEIS improves on.

.. math::
   \frac{dx}{dt} = f(t)\,x + \frac{g(t)^2}{2\sigma_t}\,\epsilon(x, t), \qquad
   x_{i+1} = x_i + h_i\Big(f(t_i)\,x_i + \frac{g^2(t_i)}{2\sigma_{t_i}}\epsilon_i\Big),
   \quad h_i = t_{i+1} - t_i .

Song et al. 2021 (Score-SDE), eq. 13; Zhang & Chen 2023 (DEIS), Sec. 3. Order 1, 1 NFE/step.
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ei import MultistepCoeffs, multistep_init, multistep_step

__all__ = ["euler"]


def _coefficients(schedule, ts):
    ts = jnp.asarray(ts)
    t, h = ts[:-1], ts[1:] - ts[:-1]
    a = 1.0 + h * schedule.f(t)
    c = h * schedule.g2(t) / (2.0 * schedule.sigma(t))
    return MultistepCoeffs(t, a, c[:, None])


_EULER = make_solver("euler", 1, 1, _coefficients, multistep_init, multistep_step)


def euler():
    """Euler on the probability-flow ODE in ``t`` (1 NFE per step, order 1)."""
    return _EULER
