"""Eager argument checks shared across the package (run outside of traced code).

Every check raises a ``ValueError`` or ``TypeError`` whose message names the argument, the
value it got and what would be valid. Checks on values that may be traced (a ``jax.vmap``
sweep over ``eta``, a learned grid) check what they can -- the shape -- and pass tracers on.
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds concrete values (not a tracer), so it can be checked eagerly."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``name`` and the valid ``choices`` if ``value`` is not one."""
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; valid choices: {sorted(choices)}")


def check_int(name: str, value, *, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int, got {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def check_member(name: str, value, valid) -> int:
    """Return the int ``value`` if it is one of the static ints ``valid`` (an order, a degree)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {name}={value!r}")
    return int(value)


def check_scalar(name: str, value, *, lower=None, upper=None, lower_open=False,
                 allow_inf=False):
    """Validate a (possibly traced) scalar hyper-parameter.

    Concrete values must be real scalars in ``[lower, upper]`` (``(lower, upper]`` with
    ``lower_open``; ``+inf`` only with ``allow_inf``); traced values (e.g. a ``jax.vmap``
    sweep over ``eta``) are only checked for shape. Returns Python/NumPy numbers as a Python
    float (weakly typed, so it keeps full precision when float64 is enabled later) and arrays
    unchanged.
    """
    if isinstance(value, bool) or not hasattr(value, "__float__") and not hasattr(value, "shape"):
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got {name}={value!r} "
                         f"(to sweep over {name}, jax.vmap over a scalar)")
    if not is_concrete(value):
        return value
    v = float(np.asarray(value))
    lo_ok = lower is None or (v > lower if lower_open else v >= lower)
    hi_ok = upper is None or v <= upper
    if not (np.isfinite(v) or (allow_inf and v == np.inf)) or not (lo_ok and hi_ok):
        lo = "-inf" if lower is None else repr(lower)
        hi = ("inf]" if allow_inf else "inf)") if upper is None else f"{upper!r}]"
        bracket = "(" if lower_open else "["
        raise ValueError(f"{name} must be in {bracket}{lo}, {hi}, got {name}={value!r}")
    return v if isinstance(value, (int, float, np.number)) else value


def check_positive_or_none(name: str, value):
    """``None``, or a (possibly traced) scalar ``> 0`` (e.g. ``h_max``)."""
    if value is None:
        return None
    return check_scalar(name, value, lower=0.0, lower_open=True)


def check_positive(**kwargs) -> None:
    """Every keyword value (concrete scalars or arrays) must be ``> 0``."""
    for name, value in kwargs.items():
        if is_concrete(value) and not bool(np.all(np.asarray(value) > 0)):
            raise ValueError(f"{name} must be > 0, got {name}={value!r}")


def check_time_range(t_min, t_max) -> tuple[float, float]:
    """A schedule's default time range: concrete ``0 < t_min < t_max``."""
    try:
        lo, hi = float(t_min), float(t_max)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise TypeError(
            f"t_min and t_max must be concrete numbers, got t_min={t_min!r}, t_max={t_max!r}"
        ) from err
    if not 0 < lo < hi:
        raise ValueError(
            f"need 0 < t_min < t_max (sigma vanishes at t = 0), got t_min={t_min!r}, "
            f"t_max={t_max!r}"
        )
    return lo, hi


def check_tolerance(name: str, value) -> None:
    """An ODE tolerance: a positive finite scalar (checked when concrete)."""
    if is_concrete(value):
        v = np.asarray(value, dtype=np.float64)
        if v.ndim != 0 or not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite scalar, got {name}={value!r}")


def require_key(name: str, key):
    """Raise a ``ValueError`` naming the solver when a stochastic step gets no key."""
    if key is None:
        raise ValueError(f"solver {name!r} is stochastic: it needs a PRNG key (pass key=)")
    return key
