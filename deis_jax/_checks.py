"""Eager argument checks shared across the package (run outside of traced code)."""

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
