"""Test configuration: strict rank promotion everywhere (as diffrax does) and an ``x64``
fixture for the tests that need float64. Float32 stays the default elsewhere, so float32
accuracy is tested as users get it."""

import jax
import pytest

from deis_jax import schedules, testing

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def problem():
    """Smooth 2-d mixture under VP-linear, 64 prior draws and their float64 ground truth:
    the shared problem of the convergence-order tests."""
    with jax.enable_x64(True):
        sched = schedules.vp_linear()
        gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
        x_T = sched.prior_sample(jax.random.key(0), (64, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    return sched, gmm, x_T, gt
