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
``params=`` (:func:`deis_jax.sample`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["split", "merge", "call_model", "check_model", "check_hook"]


class _ById:
    """Wraps an unhashable object so that it compares by identity."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


def _static(obj):
    try:
        hash(obj)
    except Exception:  # noqa: BLE001 -- unhashable (TypeError) or a __hash__ that fails
        return _ById(obj)
    return obj


def _unwrap(obj):
    return obj.obj if isinstance(obj, _ById) else obj


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def split(fn: Callable | None) -> tuple[Any, Any]:
    """``(static, dynamic)`` parts of ``fn`` (module docstring); ``merge`` inverts it."""
    if fn is None:
        return None, ()
    if isinstance(fn, functools.partial):
        func_static, func_dynamic = split(fn.func)
        leaves, treedef = jax.tree_util.tree_flatten((fn.args, fn.keywords))
        arrays = tuple(_is_array(leaf) for leaf in leaves)
        static = ("partial", func_static, treedef, arrays,
                  tuple(None if a else _static(leaf) for leaf, a in zip(leaves, arrays)))
        return static, (func_dynamic, [leaf for leaf, a in zip(leaves, arrays) if a])
    if inspect.ismethod(fn):
        return ("method", fn.__func__, _static(fn.__self__)), ()
    return ("plain", _static(fn)), ()


def merge(static, dynamic) -> Callable | None:
    """The callable that :func:`split` took apart, with ``dynamic`` (possibly traced)."""
    if static is None:
        return None
    kind = static[0]
    if kind == "plain":
        return _unwrap(static[1])
    if kind == "method":
        return static[1].__get__(_unwrap(static[2]))
    _, func_static, treedef, arrays, fixed = static
    func_dynamic, array_leaves = dynamic
    it = iter(array_leaves)
    leaves = [next(it) if a else _unwrap(leaf) for a, leaf in zip(arrays, fixed)]
    args, keywords = jax.tree_util.tree_unflatten(treedef, leaves)
    return functools.partial(merge(func_static, func_dynamic), *args, **keywords)


def call_model(model_fn: Callable, params, x, t):
    """``model_fn(params, x, t)`` when ``params`` is given, else ``model_fn(x, t)``."""
    return model_fn(x, t) if params is None else model_fn(params, x, t)


def check_model(model_fn: Callable, params, x, t) -> None:
    """Evaluate the model's output shape on ``x``, ``t`` (shape structs or arrays) and raise a
    ``ValueError`` naming both call forms when the call fails or returns another shape."""
    form = "model_fn(x, t)" if params is None else "model_fn(params, x, t)"
    try:
        out = jax.eval_shape(lambda p, x, t: call_model(model_fn, p, x, t), params, x, t)
    except Exception as err:  # noqa: BLE001 -- re-raised with the call forms explained
        hint = ("a model with parameters (e.g. a Flax model.apply) is called as "
                "model_fn(params, x, t): pass them with params=" if params is None else
                "a model without parameters is called as model_fn(x, t): drop params=")
        raise ValueError(
            f"model_fn failed when called as {form} on x of shape {tuple(x.shape)} and t of "
            f"shape {tuple(t.shape)} (does x_T have the shape the model expects? {hint}): "
            f"{type(err).__name__}: {err}"
        ) from err
    out_shape = getattr(out, "shape", None)
    if out_shape != tuple(x.shape):
        raise ValueError(
            f"model_fn must return an array of the input's shape {tuple(x.shape)}; called as "
            f"{form} it returned "
            f"{out_shape if out_shape is not None else type(out).__name__} for x of shape "
            f"{tuple(x.shape)} and t of shape {tuple(t.shape)}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"model_fn must return floating-point values; called as {form} it returned dtype "
            f"{out.dtype} (an integer output has lost the prediction, a complex one would "
            "lose its imaginary part in the cast)"
        )


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
