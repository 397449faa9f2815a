"""Eager argument checks shared across the package (run outside of traced code).

Every check raises a ``ValueError`` or ``TypeError`` whose message names the argument, the
value it got and what would be valid. Checks on values that may be traced (a ``jax.vmap``
sweep over ``eta``, a learned grid) check what they can -- the shape -- and pass tracers on.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile

import jax
import jax.numpy as jnp
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


def _real(value) -> bool:
    """A real number or array: not a bool, a string, a complex number, None or a container."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value,
                                                                                      bool)


def check_scalar(name: str, value, *, lower=None, upper=None, lower_open=False,
                 upper_open=False, allow_inf=False, dtype=None):
    """Validate a (possibly traced) scalar hyper-parameter.

    Concrete values must be real scalars in ``[lower, upper]`` (open ends with
    ``lower_open`` / ``upper_open``; ``+inf`` only with ``allow_inf``); traced values (e.g. a
    ``jax.vmap`` sweep over ``eta``) are only checked for type and shape. With ``dtype`` (the
    dtype the value is stored in, e.g. a schedule parameter) the stored value must satisfy
    the range too: ``beta_max=1e300`` is ``inf`` in float32 and ``1e-300`` is ``0``.
    Returns Python/NumPy numbers as a Python float (weakly typed, so it keeps full precision
    when float64 is enabled later) and arrays unchanged.
    """
    if not _real(value):
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got {name}={value!r} "
                         f"(to sweep over {name}, jax.vmap over a scalar)")
    if not is_concrete(value):
        return value

    def ok(v):
        lo_ok = lower is None or (v > lower if lower_open else v >= lower)
        hi_ok = upper is None or (v < upper if upper_open else v <= upper)
        return (np.isfinite(v) or (allow_inf and v == np.inf)) and lo_ok and hi_ok

    v = float(np.asarray(value))
    if not ok(v):
        lo = "-inf" if lower is None else repr(lower)
        hi = ("inf]" if allow_inf else "inf)") if upper is None else (
            f"{upper!r})" if upper_open else f"{upper!r}]")
        bracket = "(" if lower_open else "["
        raise ValueError(f"{name} must be in {bracket}{lo}, {hi}, got {name}={value!r}")
    if dtype is not None:
        with np.errstate(over="ignore", under="ignore"):
            stored = float(np.asarray(value, dtype=np.dtype(dtype)))
        if not ok(stored):
            raise ValueError(f"{name}={value!r} is stored as {np.dtype(dtype).name}, where it "
                             f"becomes {stored!r}; pick a value representable there or "
                             "enable float64 (jax.config.update('jax_enable_x64', True))")
    return v if isinstance(value, (int, float, np.number)) else value


def check_positive_or_none(name: str, value):
    """``None``, or a (possibly traced) scalar ``> 0`` (e.g. ``h_max``)."""
    if value is None:
        return None
    return check_scalar(name, value, lower=0.0, lower_open=True)


def check_time(name: str, value) -> float:
    """A static time (a grid end point, a schedule's default range): a concrete, finite,
    non-negative real number, returned as a Python float."""
    if not _real(value) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    if not is_concrete(value):
        raise TypeError(f"{name} must be a concrete number (it fixes the grid's end points), "
                        f"got a traced value {name}={value!r}")
    v = float(np.asarray(value))
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite time >= 0, got {name}={value!r}")
    return v


def check_time_range(t_min, t_max, names=("t_min", "t_max")) -> tuple[float, float]:
    """A schedule's default time range: concrete ``0 < t_min < t_max < inf``, with ``t_min``
    still positive in the default float dtype (times are cast to it). ``names`` are the
    arguments as the caller calls them (EDM: ``sigma_min``, ``sigma_max``)."""
    lo, hi = check_time(names[0], t_min), check_time(names[1], t_max)
    if not 0 < lo < hi:
        raise ValueError(
            f"need 0 < {names[0]} < {names[1]} (sigma vanishes at t = 0), got "
            f"{names[0]}={t_min!r}, {names[1]}={t_max!r}"
        )
    check_scalar(names[0], lo, lower=0.0, lower_open=True, dtype=jnp.result_type(float))
    return lo, hi


def log_range(dtype) -> float:
    r"""Largest ``|log a|`` such that ``a``, ``1/a``, ``a**2`` and ``1/a**2`` are finite normal
    numbers in ``dtype``: ``min(log(finfo.max), -log(finfo.tiny)) / 2`` (43.7 in float32,
    354.2 in float64).

    The samplers square and divide ``alpha``, ``sigma`` and ``rho = sigma / alpha`` (noise
    variances, ``g^2 = -2 sigma^2 d lambda/dt``, the v-prediction conversion), so a schedule is
    usable on a time range when ``|log alpha|``, ``|log sigma|`` and ``|lambda|`` stay below
    this bound there.
    """
    info = jnp.finfo(dtype)
    return 0.5 * min(math.log(float(info.max)), -math.log(float(info.tiny)))


def all_finite(tree):
    """A scalar bool array: every entry of every leaf of ``tree`` is finite (traceable: the
    trainer's step computes it in the compiled graph, checkpoints eagerly)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_type(name: str, value, types, what: str) -> None:
    """``value`` must be an instance of ``types``; ``what`` says what is expected."""
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {name}={_short(value)} "
                        f"(a {type(value).__name__})")


def check_callable(name: str, value, form: str) -> None:
    """``value`` must be callable as ``form`` (e.g. ``"model_fn(x, t)"``)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable as {form}, got {name}={_short(value)}")


def _short(value, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_batch(name: str, x):
    """An array ``(batch >= 1, ...)`` of floating dtype (``x_T``); returned as a jax array.

    Containers (a tuple of arrays, a dict), strings and ``None`` are refused by type rather
    than converted: ``jnp.asarray`` would stack a tuple into an extra axis.
    """
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array of shape (batch, ...), got {name}="
                        f"{_short(x)} (a {type(x).__name__})")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a leading batch axis of length >= 1, got shape "
                         f"{x.shape}")
    return x


def check_all_finite(name: str, x) -> None:
    """When ``x`` is concrete, raise naming the first non-finite entry (one reduction and one
    host transfer; traced values pass unchecked)."""
    if not is_concrete(x):
        return
    with jax.ensure_compile_time_eval():  # eager even inside a user's jit: no staged op
        ok = bool(jnp.all(jnp.isfinite(x)))
    if not ok:
        bad = np.argwhere(~np.isfinite(np.asarray(x)))
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name} contains {len(bad)} non-finite value(s) (NaN/inf), the "
                         f"first at index {first}: {name}{list(first)}="
                         f"{float(np.asarray(x)[first])!r}")


@functools.lru_cache(maxsize=None)
def _raw_key_shape() -> tuple[int, ...]:
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def check_key(name: str, key):
    """A single PRNG key: a typed key of shape ``()`` (``jax.random.key``) or a legacy raw
    ``uint32`` key (``jax.random.PRNGKey``). Works on traced keys (shape and dtype only)."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got a key array of shape "
                             f"{shape} (to use several keys, jax.vmap over them)")
        return key
    if dtype == np.uint32 and shape == _raw_key_shape():
        return key
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed) (or a legacy "
                    f"jax.random.PRNGKey(seed)), got {name}={_short(key)}"
                    + (f" of shape {shape} and dtype {dtype}" if dtype is not None else ""))


def _abspath(name: str, path) -> str:
    try:
        return os.path.abspath(os.fspath(path))
    except TypeError:
        raise TypeError(f"{name} must be a path, got {name}={_short(path)}") from None


def _writable_dir(name: str, shown: str, directory: str) -> None:
    """Create ``directory`` if needed and write a file to it (and remove it); errors name
    ``name`` with the path the user gave, ``shown``."""
    parent = directory
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{name}={shown!r} cannot be created: {parent!r} is a file")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ValueError(f"{name}={shown!r} is not writable: {err.strerror or err} "
                         f"({directory!r})") from None


def check_writable_dir(name: str, path) -> str:
    """Make sure ``path`` is, or can be created as, a writable directory (it is created and a
    file is written to it and removed); returns the absolute path.

    Called before any work, so that a bad output path fails in a second, not after training.
    """
    path = _abspath(name, path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a file, not a directory")
    _writable_dir(name, path, path)
    return path


def check_writable_file(name: str, path) -> str:
    """``path`` names a file that can be written: not a directory, in a directory that is (or
    can be created as) writable; returns the absolute path."""
    path = _abspath(name, path)
    if os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a directory, not a file")
    _writable_dir(name, path, os.path.dirname(path))
    return path


def check_tolerance(name: str, value, dtype) -> None:
    """An ODE tolerance: a positive finite scalar, still positive and finite in ``dtype``
    (the solve's; checked when concrete)."""
    if is_concrete(value):
        v = np.asarray(value, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore"):
            stored = np.asarray(value, dtype=np.dtype(dtype)) if v.ndim == 0 else v
        if v.ndim != 0 or not (np.isfinite(v) and v > 0 and np.isfinite(stored) and stored > 0):
            raise ValueError(f"{name} must be a positive finite scalar (in {np.dtype(dtype)}), "
                             f"got {name}={value!r}")


def require_key(name: str, key):
    """Raise a ``ValueError`` naming the solver when a stochastic step gets no key."""
    if key is None:
        raise ValueError(f"solver {name!r} is stochastic: it needs a PRNG key (pass key=)")
    return key
