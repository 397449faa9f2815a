"""Test configuration: strict rank promotion everywhere (as diffrax does) and an ``x64``
fixture for the tests that need float64. Float32 stays the default elsewhere, so float32
accuracy is tested as users get it.

The tests are dominated by XLA compile time (hundreds of small scans, each compiled once), so
they run with XLA's backend optimisation off (``--xla_backend_optimization_level=0``, set
before JAX starts; it cut the slowest test by 27%). Numerics are unchanged in kind (the same
operations, less fused); the benchmarks run at the default level."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # noqa: E402
import pytest

from deis_jax import schedules, testing  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield


def _order_problem(make_schedule):
    """A smooth 2-d mixture, 64 prior draws of ``make_schedule()`` and their float64 ground
    truth."""
    with jax.enable_x64(True):
        sched = make_schedule()
        gmm = testing.gaussian_mixture(2, 4, std=0.3, seed=0)
        x_T = sched.prior_sample(jax.random.key(0), (64, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    return sched, gmm, x_T, gt


@pytest.fixture(scope="session")
def problem():
    """The shared problem of the convergence-order tests, under VP-linear."""
    return _order_problem(schedules.vp_linear)


@pytest.fixture(scope="session")
def flow_problem():
    """The same mixture and prior draws under the rectified-flow schedule (``flow()``)."""
    return _order_problem(schedules.flow)
