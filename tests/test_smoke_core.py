import jax
import numpy as np

from deis_jax import sample, schedules, solver_names, testing


def test_every_solver_runs_and_is_close_at_high_nfe(x64):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=1)
    x_T = sched.prior_sample(jax.random.key(0), (32, 2))
    gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    for name in solver_names():
        x = sample(gmm.eps_fn(sched), sched, x_T, solver=name, nfe=48, grid="log_snr")
        assert float(testing.rmse(x, gt)) < 6e-2, name
        assert np.all(np.isfinite(np.asarray(x)))
