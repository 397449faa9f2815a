r"""iPNDM: the DDIM step with ``eps`` replaced by a fixed Adams--Bashforth combination.

.. math::
   x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1}(\rho_{i+1} - \rho_i)\,
   \sum_j b^{(k_i)}_j \epsilon_{i-j},

with ``b^{(1)} = [1]``, ``b^{(2)} = [3, -1]/2``, ``b^{(3)} = [23, -16, 5]/12``,
``b^{(4)} = [55, -59, 37, -9]/24`` and ``k_i = min(i + 1, order)`` (lower-order warm-up).
Zhang & Chen 2023 (DEIS), Sec. 4 / App. (iPNDM, improving Liu et al. 2022's PNDM). The AB
coefficients assume equal steps in ``rho``, where the method has order ``order``; on other
grids it is a robust but formally lower-order method (measured 2 on log-SNR grids). 1 NFE/step.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_member
from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ddim import ddim_coefficients
from deis_jax.solvers.ei import MultistepCoeffs, multistep_init, multistep_step

__all__ = ["ipndm"]

_AB = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def _table(order: int, n_steps: int) -> np.ndarray:
    rows = np.zeros((n_steps, order))
    for i in range(n_steps):
        b = _AB[min(i + 1, order) - 1]
        rows[i, : len(b)] = b
    return rows


@functools.lru_cache(maxsize=None)
def _ipndm(order: int):
    def coefficients(schedule, ts):
        co = ddim_coefficients(schedule, ts)
        table = jnp.asarray(_table(order, co.t.shape[0]), co.c.dtype)
        return MultistepCoeffs(co.t, co.a, co.c * table)

    return make_solver(f"ipndm{order}", order, 1, coefficients, multistep_init, multistep_step)


def ipndm(order: int = 4):
    """iPNDM with Adams--Bashforth order ``order`` (1..4), 1 NFE per step."""
    return _ipndm(check_member("order", order, (1, 2, 3, 4)))
