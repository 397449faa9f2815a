"""Every registered deterministic solver lands near the float64 ground truth at ~48 NFE."""

import jax
import numpy as np

from deis_jax import as_model, get_solver, sample, schedules, solver_names, testing


def _reachable_nfe(solver, target=48):
    for nfe in (target, target + 1, target - 1, target + 2):
        try:
            solver.steps_for_nfe(nfe)
            return nfe
        except ValueError:
            continue
    raise AssertionError(f"{solver.name}: no NFE near {target} is reachable")


def test_every_deterministic_solver_is_close_at_high_nfe(x64):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=1)
    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    names = [n for n in solver_names() if not get_solver(n).stochastic]
    assert len(names) >= 13
    model = as_model(gmm.eps_fn(sched), sched)
    for name in names:
        nfe = _reachable_nfe(get_solver(name))
        out = sample(model, x_T, solver=name, nfe=nfe, grid="log_snr", full_output=True)
        assert out.nfe == nfe
        assert np.all(np.isfinite(np.asarray(out.x))), name
        assert float(testing.rmse(out.x, gt)) < 6e-2, name
