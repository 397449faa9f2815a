"""Solvers: one file per family, each a coefficient builder plus a pure step."""

from deis_jax.solvers.base import Solver
from deis_jax.solvers.base import make_solver
from deis_jax.solvers.ddim import ddim
from deis_jax.solvers.deis_ab import rhoab_deis
from deis_jax.solvers.deis_ab import tab_deis
from deis_jax.solvers.deis_rk import rho_rk
from deis_jax.solvers.euler import euler
from deis_jax.solvers.ipndm import ipndm
from deis_jax.solvers.registry import get_solver
from deis_jax.solvers.registry import register_solver
from deis_jax.solvers.registry import solver_names

__all__ = [
    "Solver",
    "make_solver",
    "ddim",
    "euler",
    "ipndm",
    "rho_rk",
    "rhoab_deis",
    "tab_deis",
    "get_solver",
    "register_solver",
    "solver_names",
]
