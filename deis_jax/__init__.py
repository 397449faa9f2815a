"""deis_jax: fast, correct diffusion-model samplers in JAX, built around DEIS.

Quick start::

    import jax
    from deis_jax import as_model, sample, schedules, testing

    sched = schedules.vp_linear()
    gmm = testing.ring_mixture()                    # analytic model with exact eps
    model = as_model(gmm.eps_fn(sched), sched)      # the one door for every network
    x_T = sched.prior_sample(jax.random.key(0), (512, 2))
    x0 = sample(model, x_T, solver="tab3", nfe=10)
"""

from deis_jax import adaptive
from deis_jax import conditioning
from deis_jax import grid_files
from deis_jax import guidance
from deis_jax import inversion
from deis_jax import learned_grids
from deis_jax import likelihood
from deis_jax import parameterization
from deis_jax import quadrature
from deis_jax import schedules
from deis_jax import solvers
from deis_jax import testing
from deis_jax import thresholding
from deis_jax.adaptive import solve_ode
from deis_jax.grids import GRID_KINDS
from deis_jax.grids import check_grid
from deis_jax.grids import timesteps
from deis_jax.grid_files import load_grid
from deis_jax.grid_files import save_grid
from deis_jax.learned_grids import optimize_timesteps
from deis_jax.likelihood import log_likelihood
from deis_jax.model import Model
from deis_jax.model import ScaledTime
from deis_jax.model import TIMESTEPS
from deis_jax.model import as_model
from deis_jax.plan import Plan
from deis_jax.plan import make_plan
from deis_jax.sampling import SampleOutput
from deis_jax.sampling import sample
from deis_jax.schedules import Schedule
from deis_jax.solvers import Solver
from deis_jax.solvers import get_solver
from deis_jax.solvers import register_solver
from deis_jax.solvers import solver_names

__version__ = "0.1.0"

__all__ = [
    "GRID_KINDS",
    "Model",
    "Plan",
    "ScaledTime",
    "TIMESTEPS",
    "Schedule",
    "SampleOutput",
    "Solver",
    "check_grid",
    "get_solver",
    "adaptive",
    "as_model",
    "conditioning",
    "grid_files",
    "guidance",
    "inversion",
    "learned_grids",
    "load_grid",
    "likelihood",
    "log_likelihood",
    "make_plan",
    "optimize_timesteps",
    "parameterization",
    "quadrature",
    "register_solver",
    "sample",
    "save_grid",
    "schedules",
    "solve_ode",
    "solver_names",
    "solvers",
    "testing",
    "thresholding",
    "timesteps",
]
