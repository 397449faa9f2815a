"""User callables (models, hooks) passed to jitted drivers without baking their arrays in.

``jax.jit`` needs a static argument to hash; a ``functools.partial(model.apply, params)``
hashes by identity, so a new partial recompiles and its parameters become constants of the
executable. :func:`split` takes such a callable apart into

* a *static* part that compares by value: the function (a bound method compares its object
  by ``==``, so ``Module(...).apply`` of an equal Flax module is the same), the pytree
  structure of a partial's arguments and its non-array leaves (strings, flags, numbers);
* a *dynamic* part: the partial's array leaves, passed to the jitted function as data.

:func:`merge` rebuilds the callable inside the trace. Anything else (a plain function, a
lambda, a closure) is static by identity: define it once and reuse it, or pass arrays as
``params=`` (:func:`deis_jax.as_model`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["split", "merge", "static", "unwrap", "is_array", "check_hook"]


class _ById:
    """Wraps an unhashable object so that it compares by identity."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


def static(obj):
    """``obj`` if hashable, else a wrapper that compares it by identity."""
    try:
        hash(obj)
    except Exception:  # noqa: BLE001 -- unhashable (TypeError) or a __hash__ that fails
        return _ById(obj)
    return obj


def unwrap(obj):
    """The object :func:`static` wrapped."""
    return obj.obj if isinstance(obj, _ById) else obj


def is_array(leaf) -> bool:
    """A JAX or NumPy array (data, not a static setting)."""
    return isinstance(leaf, (jax.Array, np.ndarray))


def split(fn: Callable | None) -> tuple[Any, Any]:
    """``(static, dynamic)`` parts of ``fn`` (module docstring); ``merge`` inverts it."""
    if fn is None:
        return None, ()
    if isinstance(fn, functools.partial):
        func_static, func_dynamic = split(fn.func)
        leaves, treedef = jax.tree_util.tree_flatten((fn.args, fn.keywords))
        arrays = tuple(is_array(leaf) for leaf in leaves)
        parts = ("partial", func_static, treedef, arrays,
                 tuple(None if a else static(leaf) for leaf, a in zip(leaves, arrays)))
        return parts, (func_dynamic, [leaf for leaf, a in zip(leaves, arrays) if a])
    if inspect.ismethod(fn):
        return ("method", fn.__func__, static(fn.__self__)), ()
    return ("plain", static(fn)), ()


def merge(parts, dynamic) -> Callable | None:
    """The callable that :func:`split` took apart, with ``dynamic`` (possibly traced)."""
    if parts is None:
        return None
    kind = parts[0]
    if kind == "plain":
        return unwrap(parts[1])
    if kind == "method":
        return parts[1].__get__(unwrap(parts[2]))
    _, func_static, treedef, arrays, fixed = parts
    func_dynamic, array_leaves = dynamic
    it = iter(array_leaves)
    leaves = [next(it) if a else unwrap(leaf) for a, leaf in zip(arrays, fixed)]
    args, keywords = jax.tree_util.tree_unflatten(treedef, leaves)
    return functools.partial(merge(func_static, func_dynamic), *args, **keywords)


def check_hook(hook: Callable, x, t) -> None:
    """A hook ``hook(x, t) -> x`` must keep the shape and dtype of ``x``."""
    try:
        out = jax.eval_shape(hook, x, t)
    except Exception as err:  # noqa: BLE001 -- re-raised naming the hook and its call form
        raise ValueError(
            f"hook failed when called as hook(x, t) on x of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}, t of shape {tuple(jnp.shape(t))}: {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != x.shape or getattr(out, "dtype", None) != x.dtype:
        got = (f"shape {out.shape} and dtype {out.dtype}" if hasattr(out, "shape")
               else type(out).__name__)
        raise ValueError(f"hook(x, t) must return x's shape {x.shape} and dtype {x.dtype}; "
                         f"it returned {got}")
