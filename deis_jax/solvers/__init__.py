"""Solvers: one file per family, each a coefficient builder plus a pure step."""

from deis_jax.solvers.base import Solver
from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ddim import ddim
from deis_jax.solvers.deis_ab import logrho_deis
from deis_jax.solvers.deis_ab import rhoab_deis
from deis_jax.solvers.deis_ab import tab_deis
from deis_jax.solvers.deis_rk import rho_rk
from deis_jax.solvers.euler import euler
from deis_jax.solvers.euler import heun
from deis_jax.solvers.ipndm import ipndm
from deis_jax.solvers.dpm_solver import dpm_fast
from deis_jax.solvers.dpm_solver import dpm_solver
from deis_jax.solvers.dpm_solver_pp import dpm_solver_pp
from deis_jax.solvers.dpm_solver_pp import dpmpp_2s
from deis_jax.solvers.edm_ode import edm_euler
from deis_jax.solvers.edm_ode import edm_heun
from deis_jax.solvers.unipc import unipc
from deis_jax.solvers.ancestral import ddpm
from deis_jax.solvers.ancestral import ve_ancestral
from deis_jax.solvers.edm_sde import edm_sde
from deis_jax.solvers.noise import per_sample_normal
from deis_jax.solvers.pc import pc
from deis_jax.solvers.sde import euler_maruyama
from deis_jax.solvers.sde import sde_ei1
from deis_jax.solvers.sde import sde_ei2
from deis_jax.solvers.stochastic_ddim import stochastic_ddim
from deis_jax.solvers.registry import get_solver
from deis_jax.solvers.registry import register_solver
from deis_jax.solvers.registry import solver_names

__all__ = [
    "Solver",
    "make_solver",
    "ddim",
    "euler",
    "heun",
    "ipndm",
    "rho_rk",
    "rhoab_deis",
    "tab_deis",
    "logrho_deis",
    "dpm_fast",
    "dpm_solver",
    "dpm_solver_pp",
    "dpmpp_2s",
    "edm_euler",
    "edm_heun",
    "unipc",
    "ddpm",
    "ve_ancestral",
    "edm_sde",
    "per_sample_normal",
    "pc",
    "euler_maruyama",
    "sde_ei1",
    "sde_ei2",
    "stochastic_ddim",
    "get_solver",
    "register_solver",
    "solver_names",
]
