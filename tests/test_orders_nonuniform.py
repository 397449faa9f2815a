"""Convergence orders on non-uniform grids (float64).

The order tests of each solver use the log-SNR grid, where every step has the same length in
``lambda`` and the step-ratio terms of the multistep weights are 1. Here the grids are the
quadratic (in ``t``) and EDM grids, whose step ratios vary along the path, so the
variable-step weights of the multistep methods (``r_i = h_{i-1}/h_i`` in DPM-Solver++, the
``r_k`` nodes of UniPC, the Lagrange nodes of the DEIS families) are exercised.

Not listed: tAB-DEIS-3 and log-rho DEIS-3 measure 3.4 on the quadratic grid at NFE 96-384
(3.8 / 3.9 on the EDM grid): their first two steps run at order 1 and 2 (warm-up), and the
quadratic grid's first step is the longest in ``lambda``, so the warm-up's local errors
(``O(h^2)``, ``O(h^3)``) still weigh in at these NFEs.
"""

import pytest

from deis_jax.solvers import unipc
from sweep_helpers import measured_order

NFES = (96, 192, 384)
CASES = [  # (solver, grid, theoretical order)
    ("dpmpp_2m", "quadratic", 2),
    ("dpmpp_3m", "quadratic", 3),
    ("dpmpp_3m", "edm", 3),
    # UniPC lowers its last steps until they are shorter than 0.05 in lambda (beyond these
    # NFEs on these grids): the variable-step weights are measured at full order.
    (unipc(2, final_steps="none"), "quadratic", 3),
    (unipc(3, final_steps="none"), "quadratic", 4),
    (unipc(3, final_steps="none"), "edm", 4),
    ("logrho2", "quadratic", 3),
    ("tab2", "quadratic", 3),
    ("rhoab3", "quadratic", 4),
    ("tab3", "edm", 4),
]


@pytest.mark.parametrize("name,grid,order", CASES,
                         ids=[f"{getattr(c[0], 'name', c[0])}-{c[1]}" for c in CASES])
def test_convergence_order_non_uniform(x64, problem, name, grid, order):
    slope, err = measured_order(name, problem, NFES, grid)
    assert abs(slope - order) <= 0.3, (name, grid, slope, err)
