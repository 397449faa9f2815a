"""Name -> solver registry, resolved once, outside of traced code (no strings in the scan)."""

from __future__ import annotations

import functools
from typing import Callable

from deis_jax._checks import check_callable, check_type
from deis_jax.solvers.base import Solver
from deis_jax.solvers.ddim import ddim
from deis_jax.solvers.deis_ab import logrho_deis, rhoab_deis, tab_deis
from deis_jax.solvers.deis_rk import RK_METHODS, rho_rk
from deis_jax.solvers.euler import euler, heun
from deis_jax.solvers.ipndm import ipndm
from deis_jax.solvers.dpm_solver import dpm_fast, dpm_solver
from deis_jax.solvers.dpm_solver_pp import dpm_solver_pp, dpmpp_2s
from deis_jax.solvers.edm_ode import edm_euler, edm_heun
from deis_jax.solvers.unipc import unipc
from deis_jax.solvers.ancestral import ddpm, ve_ancestral
from deis_jax.solvers.edm_sde import edm_sde
from deis_jax.solvers.pc import pc
from deis_jax.solvers.sde import euler_maruyama, sde_ei1, sde_ei2
from deis_jax.solvers.stochastic_ddim import stochastic_ddim

__all__ = ["get_solver", "register_solver", "solver_names"]

_REGISTRY: dict[str, Callable[[], Solver]] = {
    "euler": euler,
    "heun": heun,
    "ddim": ddim,
    "ipndm": ipndm,
    **{f"tab{k}": functools.partial(tab_deis, k) for k in range(4)},
    **{f"rhoab{k}": functools.partial(rhoab_deis, k) for k in range(4)},
    **{f"ipndm{k}": functools.partial(ipndm, k) for k in range(1, 5)},
    **{f"rho_{m}": functools.partial(rho_rk, m) for m in RK_METHODS},
    **{f"dpm{k}": functools.partial(dpm_solver, k) for k in (1, 2, 3)},
    "dpm_fast": dpm_fast,
    "dpmpp_2s": dpmpp_2s,
    "dpmpp_2m": functools.partial(dpm_solver_pp, 2),
    "dpmpp_3m": functools.partial(dpm_solver_pp, 3),
    "dpmpp_3m_reference": functools.partial(dpm_solver_pp, 3, final_steps="reference",
                                            curvature="reference"),
    **{f"unipc{k}": functools.partial(unipc, k) for k in (1, 2, 3)},
    **{f"unipc{k}_bh1": functools.partial(unipc, k, variant="bh1") for k in (1, 2, 3)},
    **{f"unipc{k}_eps": functools.partial(unipc, k, prediction="eps") for k in (1, 2, 3)},
    **{f"logrho{k}": functools.partial(logrho_deis, k) for k in (1, 2, 3)},
    "edm_euler": edm_euler,
    "edm_heun": edm_heun,
    "ddpm": ddpm,
    "ve_ancestral": ve_ancestral,
    "ddim_eta": stochastic_ddim,
    "euler_maruyama": euler_maruyama,
    "sde_ei1": sde_ei1,
    "sde_ei2": sde_ei2,
    "pc": pc,
    "edm_sde": edm_sde,
}


def register_solver(name: str, factory: Callable[[], Solver]) -> None:
    """Add ``factory`` (a no-argument callable returning a :class:`Solver`) under ``name``.

    The factory is called once here, so a factory that fails or returns something else is
    refused where it is registered rather than where it is first used.
    """
    check_type("name", name, str, "a solver name (a string)")
    if not name:
        raise ValueError("name must be a non-empty string, got name=''")
    if name in _REGISTRY:
        raise ValueError(f"solver name {name!r} is already registered")
    check_callable("factory", factory, "factory() -> Solver")
    _built(name, factory)
    _REGISTRY[name] = factory


def solver_names() -> tuple[str, ...]:
    """All registered solver names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_solver(solver) -> Solver:
    """Resolve a solver name (e.g. ``"tab3"``) or pass a :class:`Solver` through.

    Named solvers are built once and cached, so repeated calls return the same object;
    ``get_solver(name).name == name``.
    """
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str) or solver not in _REGISTRY:
        raise ValueError(f"unknown solver={solver!r}; valid choices: {list(solver_names())}")
    return _build(solver)


@functools.lru_cache(maxsize=None)
def _build(name: str) -> Solver:
    return _built(name, _REGISTRY[name])


def _built(name: str, factory: Callable[[], Solver]) -> Solver:
    """``factory()`` named ``name``; raises naming the factory when it fails or returns
    something other than a :class:`Solver`."""
    try:
        solver = factory()
    except Exception as err:  # noqa: BLE001 -- re-raised naming the solver and its factory
        raise ValueError(f"the factory of solver {name!r} raised {type(err).__name__}: "
                         f"{err}") from err
    if not isinstance(solver, Solver):
        raise TypeError(f"the factory of solver {name!r} must return a Solver "
                        f"(deis_jax.solvers.make_solver), it returned {solver!r}")
    return solver if solver.name == name else solver.replace(name=name)
