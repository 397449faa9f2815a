r"""The :class:`Model` value and its one door, :func:`as_model`.

A ``Model`` is "a trained network and what it means", as one immutable pytree:

* ``network`` -- the function that computes (static: a plain function compares by identity, a
  Flax module's ``apply`` by the module's value, a split NNX/equinox module by its graph);
* ``params`` -- its parameters (data: their array leaves are traced, anything else static);
* ``schedule`` -- the :class:`~deis_jax.schedules.Schedule` it was trained with (data);
* ``prediction`` -- what it predicts (static, :data:`~deis_jax.parameterization.PREDICTIONS`);
* ``timestep`` -- how the network's time input is made from ``t`` (static, :data:`TIMESTEPS`
  or a function of ``t``);
* ``dtype`` -- the dtype the network receives ``x`` in (static; ``None``: the state's);
* ``cond`` -- a condition handed to the network as its last argument (data: class labels,
  text embeddings, masks; any pytree, each leaf batched ``(batch, ...)`` or shared
  ``(1, ...)`` / scalar).

Its methods :meth:`Model.eps`, :meth:`Model.x0`, :meth:`Model.score`, :meth:`Model.v` and
:meth:`Model.velocity` at ``(x, t)`` are the one place where predictions are converted
(:func:`deis_jax.parameterization.convert`). Every entry point of the library -- ``sample``,
``solve_ode``, the likelihood, inversion, guidance, learned grids, evaluation -- takes a
``Model``; the parameters and the condition are arguments of the compiled executables, so new
values never recompile, and ``jax.vmap`` over them traces once.

The network is called as ``network(params, x_in, t_in[, cond])`` when the model has
parameters and ``network(x_in, t_in[, cond])`` when it has none, with ``x_in = x`` cast to
``dtype`` (``x / alpha_t`` for an EDM denoiser) and ``t_in = timestep(t)``; its output is cast
back to the state dtype (see :mod:`deis_jax.precision`).

**Flax NNX.** A model built from an NNX module reads the module's *current* state whenever it
is flattened -- by ``sample`` and the other entry points, or by a ``jax.jit`` it is passed to --
with ``nnx.split`` outside the trace: the graph definition is static, the state data. An
in-place update (``nnx.Optimizer.update``) is therefore always seen and never recompiles.
(A ``Model`` captured by a closure inside a jitted function is flattened at trace time: its
state then becomes a constant of that function; pass it as an argument.)

**Equinox** (or any callable pytree): the module's array leaves are data, the rest static.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import _callables
from deis_jax._checks import check_callable, check_type
from deis_jax.parameterization import _bcast, canonical_prediction, convert
from deis_jax.precision import check_dtype, state_dtype
from deis_jax.schedules import Schedule, check_schedule

__all__ = ["Model", "as_model", "TIMESTEPS", "ScaledTime", "takes_model"]

TIMESTEPS = ("t", "1000t", "index", "discrete", "sigma", "1000sigma", "rho", "log_snr",
             "edm")
"""Named time inputs (``timestep=``) of :func:`as_model`:

* ``"t"``: ``t`` itself (networks trained by this library; the default, ``"rho"`` for an
  ``"edm"`` denoiser);
* ``"1000t"``: ``1000 t`` (Score-SDE / DPM-Solver continuous-time VP networks);
* ``"index"``: the DDPM step ``N t - 1`` as a float (:func:`~deis_jax.schedules.vp_discrete`
  places table entry ``n`` at ``t = (n + 1) / N``; ``vp_discrete`` only);
* ``"discrete"``: that step rounded to the integer index ``0..N-1`` (int32) -- what DDPM and
  diffusers networks with an embedding table take; exact on grids whose times are training
  steps (``vp_discrete`` only);
* ``"sigma"``: ``sigma_t``; ``"1000sigma"``: ``1000 sigma_t`` (SD3 / Flux flow networks);
* ``"rho"``: ``rho_t = sigma_t / alpha_t`` (k-diffusion's and EDM's sigma);
* ``"log_snr"``: ``lambda_t``; ``"edm"``: EDM's ``c_noise = log(rho_t) / 4``.
"""

_DISCRETE = ("index", "discrete")


@dataclasses.dataclass(frozen=True)
class ScaledTime:
    """A time input ``scale * t + shift`` (compares by value, so rebuilding it never
    recompiles); e.g. ``ScaledTime(999.0)`` for a network trained on ``999 t``."""

    scale: float = 1.0
    shift: float = 0.0

    def __call__(self, t):
        return self.scale * t + self.shift


def _time_input(timestep, schedule: Schedule, t):
    """The network's time input for ``timestep`` (see :data:`TIMESTEPS`)."""
    if callable(timestep):
        return timestep(t)
    if timestep == "t":
        return t
    if timestep == "1000t":
        return 1000.0 * t
    if timestep in _DISCRETE:
        index = schedule.params["log_alpha"].shape[0] * t - 1.0
        return index if timestep == "index" else jnp.round(index).astype(jnp.int32)
    if timestep == "sigma":
        return schedule.sigma(t)
    if timestep == "1000sigma":
        return 1000.0 * schedule.sigma(t)
    if timestep == "rho":
        return schedule.rho(t)
    if timestep == "log_snr":
        return schedule.log_snr(t)
    return -0.25 * schedule.log_snr(t)  # "edm": log(rho) / 4


# ----- pytrees split into array leaves (data) and the rest (static) -----

def _split_tree(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = tuple(_callables.is_array(leaf) for leaf in leaves)
    fixed = tuple(None if a else _callables.static(leaf) for leaf, a in zip(leaves, arrays))
    return [leaf for leaf, a in zip(leaves, arrays) if a], (treedef, arrays, fixed)


def _merge_tree(static, arrays):
    treedef, is_array, fixed = static
    it = iter(arrays)
    return jax.tree_util.tree_unflatten(
        treedef, [next(it) if a else _callables.unwrap(leaf) for a, leaf in zip(is_array, fixed)])


@dataclasses.dataclass(frozen=True)
class _Pytree:
    """The static half of a callable pytree (an equinox module): called as
    ``network(arrays, *args)`` it rebuilds the module from its array leaves and calls it."""

    static: Any

    def __call__(self, arrays, *args):
        return _merge_tree(self.static, arrays)(*args)


@dataclasses.dataclass(frozen=True)
class _NNX:
    """The static half of a Flax NNX module: its ``GraphDef``; called as
    ``network(state, *args)`` it merges the state into a module and calls it."""

    graphdef: Any

    def __call__(self, state, *args):
        from flax import nnx
        return nnx.merge(self.graphdef, state)(*args)


def _nnx_split(module):
    from flax import nnx
    graphdef, state = nnx.split(module)
    return _NNX(graphdef), state


def _is_nnx(obj) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover -- flax is a dependency
        return False
    return isinstance(obj, nnx.Module)


def _is_linen(obj) -> bool:
    try:
        from flax import linen
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, linen.Module)


def _is_equinox(obj) -> bool:
    eqx = sys.modules.get("equinox")  # only a module that equinox made can be one
    return eqx is not None and isinstance(obj, eqx.Module)


def batched_cond(cond, batch: int):
    """Every leaf of ``cond`` with leading axis ``batch``: scalars and ``(1, ...)`` leaves are
    broadcast, ``(batch, ...)`` leaves kept."""

    def one(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            return jnp.broadcast_to(leaf, (batch,))
        if leaf.shape[0] == batch:
            return leaf
        if leaf.shape[0] == 1:
            return jnp.broadcast_to(leaf, (batch,) + leaf.shape[1:])
        raise ValueError(
            f"cond has a leaf of shape {leaf.shape}: its leading (batch) axis must be 1 "
            f"(shared) or the batch of x ({batch}); the model is called on a batch of {batch}")

    return jax.tree_util.tree_map(one, cond)


@jax.tree_util.register_pytree_node_class
class Model:
    """A trained network and what it means (module docstring); build it with
    :func:`as_model`.

    Attributes:
      network: the function that computes (see the module docstring for its call form).
      params: its parameters (any pytree; array leaves are data), or None.
      schedule: the schedule the network was trained with.
      prediction: what it predicts (one of :data:`~deis_jax.parameterization.PREDICTIONS`).
      timestep: one of :data:`TIMESTEPS`, or a function ``t -> time input``.
      dtype: the dtype the network receives ``x`` in (None: the state's dtype).
      cond: the condition (any pytree, or None for an unconditional call).
      module: the Flax NNX module whose current state the model reads, or None.
      info: a read-only record that travels with the model outside traced code (a loaded
        checkpoint's ``{"spec", "step", "meta"}``); not part of the pytree, so it is absent
        from a model rebuilt inside ``jax.jit``.
    """

    __slots__ = ("network", "params", "schedule", "prediction", "timestep", "dtype", "cond",
                 "module", "info", "_flat")

    def __init__(self, network, params, schedule, prediction, timestep, dtype, cond,
                 module=None, info=None):
        info = types.MappingProxyType(dict(info or {}))
        for name, value in (("network", network), ("params", params), ("schedule", schedule),
                            ("prediction", prediction), ("timestep", timestep),
                            ("dtype", dtype), ("cond", cond), ("module", module),
                            ("info", info), ("_flat", None)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"Model is immutable: use model.replace({name}=...)")

    # -- pytree --
    def _live(self):
        """``(network, params)``, reading an NNX module's current state."""
        if self.module is not None:
            return _nnx_split(self.module)
        return self.network, self.params

    def tree_flatten(self):
        if self._flat is not None:  # rebuilt from leaves: flatten as it was (AOT placeholders)
            return self._flat
        network, params = self._live()
        net_static, net_data = _callables.split(network)
        p_data, p_static = _split_tree(params)
        c_data, c_static = _split_tree(self.cond)
        children = (net_data, p_data, self.schedule, c_data)
        aux = (net_static, p_static, c_static, self.prediction, _callables.static(self.timestep),
               self.dtype)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        net_static, p_static, c_static, prediction, timestep, dtype = aux
        net_data, p_data, schedule, c_data = children
        model = cls(_callables.merge(net_static, net_data), _merge_tree(p_static, p_data),
                    schedule, prediction, _callables.unwrap(timestep), dtype,
                    _merge_tree(c_static, c_data))
        object.__setattr__(model, "_flat", (children, aux))
        return model

    def replace(self, **changes) -> "Model":
        """A copy with some fields changed (``params``, ``cond``, ``dtype``, ...). Changing
        ``network`` or ``params`` of an NNX-backed model detaches it from its module."""
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "_flat"}
        if "network" in changes or "params" in changes:
            fields["network"], fields["params"] = self._live()
            fields["module"] = None
        fields.update(changes)
        if "prediction" in changes:
            fields["prediction"] = canonical_prediction(fields["prediction"])
        if "timestep" in changes:
            fields["timestep"] = _check_timestep(fields["timestep"], fields["schedule"],
                                                 fields["prediction"])
        if "dtype" in changes and fields["dtype"] is not None:
            fields["dtype"] = check_dtype("dtype", fields["dtype"]).name
        if "cond" in changes:
            fields["cond"] = _check_cond(fields["cond"])
        return Model(**fields)

    def __repr__(self):
        name = getattr(self.network, "__qualname__", type(self.network).__name__)
        return (f"Model(network={name}, prediction={self.prediction!r}, "
                f"timestep={self.timestep!r}, schedule={self.schedule.name!r}, "
                f"dtype={self.dtype!r}, params={'None' if self.params is None else '...'}, "
                f"cond={'None' if self.cond is None else '...'})")

    # -- calls --
    def call_form(self) -> str:
        """How the network is called, e.g. ``"network(params, x, t, cond)"``."""
        head = "params, " if self.params is not None or self.module is not None else ""
        tail = ", cond" if self.cond is not None else ""
        return f"network({head}x, t{tail})"

    def output(self, x, t):
        """The network's own prediction (kind ``prediction``; an EDM denoiser's ``x0``) at
        ``x: (batch, ...)`` and ``t`` (scalar or ``(batch,)``), in ``x``'s dtype."""
        return self._raw(x, t).astype(x.dtype)

    def _raw(self, x, t):
        """The network's output as it returns it (any dtype: :func:`check_model` checks it)."""
        network, params = self._live()
        dtype = state_dtype(x.dtype)
        t = jnp.broadcast_to(jnp.asarray(t, dtype), x.shape[:1])
        x_in = x
        if self.prediction == "edm":
            x_in = x / _bcast(self.schedule.alpha(t), x)
        x_in = x_in.astype(x.dtype if self.dtype is None else self.dtype)
        args = [x_in, _time_input(self.timestep, self.schedule, t)]
        if self.cond is not None:
            args.append(batched_cond(self.cond, x.shape[0]))
        if params is not None or self.module is not None:
            args.insert(0, params)
        return network(*args)

    def _to(self, target: str, x, t):
        t = jnp.broadcast_to(jnp.asarray(t, state_dtype(x.dtype)), x.shape[:1])
        kind = "x0" if self.prediction == "edm" else self.prediction
        return convert(self.output(x, t), kind, target, x, t, self.schedule)

    def eps(self, x, t):
        """The noise prediction ``eps(x, t)``."""
        return self._to("eps", x, t)

    def x0(self, x, t):
        """The data prediction ``x0(x, t)``."""
        return self._to("x0", x, t)

    def score(self, x, t):
        """The score ``-eps / sigma_t``."""
        return self._to("score", x, t)

    def v(self, x, t):
        """Salimans & Ho's ``v = alpha eps - sigma x0``."""
        return self._to("v", x, t)

    def velocity(self, x, t):
        """``dx/dt`` of the probability-flow ODE."""
        return self._to("velocity", x, t)


_OLD_KEYWORDS = ("schedule", "params", "prediction", "model_dtype", "model_fn")


def takes_model(fn):
    """Decorate an entry point whose first argument is a :class:`Model`: the old call form
    ``fn(model_fn, schedule, ..., params=..., prediction=...)`` and any non-``Model`` first
    argument are refused with one ``TypeError`` that says how to build the model."""

    @functools.wraps(fn)
    def entry(*args, **kwargs):
        name = fn.__name__
        old = [k for k in _OLD_KEYWORDS if k in kwargs]
        if (len(args) > 1 and isinstance(args[1], Schedule)) or old:
            raise TypeError(
                f"{name}(model_fn, schedule, ..., params=..., prediction=...) is gone"
                + (f" (got {', '.join(k + '=' for k in old)})" if old else "")
                + f": build the model once with deis_jax.as_model(model_fn, schedule, "
                f"params=..., prediction=..., dtype=...) and call {name}(model, ...)")
        model = args[0] if args else kwargs.get("model")
        if not isinstance(model, Model):
            raise TypeError(
                f"model must be a deis_jax.Model, got {type(model).__name__}: build one with "
                f"deis_jax.as_model(network, schedule, params=..., prediction=...) and call "
                f"{name}(model, ...)")
        return fn(*args, **kwargs)

    return entry


def _check_timestep(timestep, schedule: Schedule, prediction: str):
    if timestep is None:
        return "rho" if prediction == "edm" else "t"
    if callable(timestep):
        return timestep
    if timestep not in TIMESTEPS:
        raise ValueError(f"unknown timestep={timestep!r}; valid choices: {sorted(TIMESTEPS)} "
                         "or a function of t")
    if timestep in _DISCRETE and schedule.name != "vp_discrete":
        raise ValueError(
            f"timestep={timestep!r} is a DDPM step index, defined on a vp_discrete schedule "
            f"(a table of N steps), but the schedule is {schedule.name!r}; use timestep='t' "
            "(or '1000t') for a continuous-time network, or build the schedule with "
            "schedules.vp_discrete(betas=...)")
    return timestep


def _check_cond(cond):
    """Numbers in ``cond`` become arrays (so a new label is data, not a new executable)."""
    if cond is None:
        return None

    def leaf(v):
        if isinstance(v, (bool, int, float, complex, np.number, np.ndarray)):
            return jnp.asarray(v)
        if not _callables.is_array(v):
            raise TypeError(f"cond must be a pytree of arrays (labels, embeddings, masks), "
                            f"got a leaf {v!r} (a {type(v).__name__})")
        return v

    return jax.tree_util.tree_map(leaf, cond)


def as_model(network, schedule: Schedule | None = None, *, params=None, prediction="eps",
             timestep=None, cond=None, dtype=None) -> Model:
    r"""The one door: build a :class:`Model` from whatever computes the prediction.

    Accepted ``network`` forms:

    * a plain function ``f(x, t)`` (analytic models), or ``f(params, x, t)`` with ``params=``;
      either takes a condition as its last argument when ``cond=`` is given;
    * a Flax Linen module with ``params=`` its variables (``{"params": ...}``): ``module.apply``;
    * a Flax NNX module (``module(x, t[, cond])``): its current state is read at every use
      (module docstring), so in-place training is seen and never recompiles;
    * an equinox module (``module(x, t[, cond])`` on batches): arrays are data, the rest
      static;
    * a ``Model``: returned as is.

    Args:
      network: see above. ``x: (batch, ...)``, ``t: (batch,)`` (after ``timestep``); returns
        an array of ``x``'s shape.
      schedule: the schedule the network was trained with.
      params: the parameters of a function or Linen module (any pytree; its arrays are data).
      prediction: what the network predicts: ``"eps"``, ``"x0"``, ``"v"``, ``"score"``,
        ``"velocity"`` (``dx/dt``), ``"flow"`` (``eps - x0``, SD3 / Flux / rectified flow) or
        ``"edm"`` (a denoiser ``D(x / alpha, time)`` returning ``x0``), or an alias
        (``"epsilon"``, ``"sample"``, ``"v_prediction"``, ``"flow_prediction"``).
      timestep: the network's time input (:data:`TIMESTEPS`, a :class:`ScaledTime`, or a
        function of ``t``); default ``"t"`` (``"rho"`` for ``"edm"``).
      cond: a condition (pytree of arrays: labels ``(batch,)``, embeddings ``(batch, L, D)``;
        leading axis the batch or 1 to share it), passed as the network's last argument.
      dtype: the dtype the network receives ``x`` in (``"bfloat16"``, ...; default the
        state's).

    Raises:
      TypeError, ValueError: an unsupported ``network``, or a bad option, named with its value
        and the valid choices.

    Example:
      >>> import jax
      >>> from deis_jax import as_model, sample, schedules, testing
      >>> sched = schedules.vp_linear()
      >>> model = as_model(testing.ring_mixture().eps_fn(sched), sched)
      >>> x_T = sched.prior_sample(jax.random.key(0), (8, 2))
      >>> sample(model, x_T, solver="tab3", nfe=10).shape
      (8, 2)
    """
    if isinstance(network, Model):
        given = {"schedule": schedule, "params": params, "timestep": timestep, "cond": cond,
                 "dtype": dtype}
        extra = [k for k, v in given.items() if v is not None]
        if extra or prediction != "eps":
            raise TypeError(f"network is already a Model; change its fields with "
                            f"model.replace({', '.join(extra or ['prediction'])}=...) "
                            "instead of passing them to as_model")
        return network
    if schedule is None:
        raise TypeError("as_model(network, schedule, ...) needs the schedule the network was "
                        "trained with (e.g. deis_jax.schedules.vp_linear())")
    check_schedule(schedule)
    prediction = canonical_prediction(prediction)
    timestep = _check_timestep(timestep, schedule, prediction)
    if dtype is not None:
        dtype = check_dtype("dtype", dtype).name
    cond = _check_cond(cond)
    module = None
    if _is_nnx(network):
        _no_params(network, params, "an NNX module holds its own state")
        module, network = network, None
    elif _is_linen(network):
        if params is None:
            raise TypeError(f"network is a Flax Linen module ({type(network).__name__}): pass "
                            "its variables with params= (the dict that module.init returned)")
        network = network.apply
    elif _is_equinox(network) or (callable(network) and not _is_function_like(network)
                                  and any(_callables.is_array(leaf) for leaf in
                                          jax.tree_util.tree_leaves(network))):
        _no_params(network, params, "a callable pytree (an equinox module) holds its arrays")
        arrays, static = _split_tree(network)
        network, params = _Pytree(static), arrays
    else:
        check_callable("network", network, "network(x, t) or network(params, x, t) with "
                       "params=, a Flax Linen/NNX module or an equinox module")
    return Model(network, params, schedule, prediction, timestep, dtype, cond, module)


def _is_function_like(obj) -> bool:
    return (inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj)
            or isinstance(obj, functools.partial))


def _no_params(network, params, why: str) -> None:
    if params is not None:
        raise TypeError(f"params= is for a function or a Linen module; network is a "
                        f"{type(network).__name__} and {why}: drop params=")


def check_model(model: Model, x, *, name: str = "model") -> None:
    """Call ``model`` abstractly (``jax.eval_shape``) on ``x`` (an array or shape struct, the
    state) and raise one clear error if the network fails or returns another shape or a
    non-float dtype: names the network, the call tried and the ``as_model`` argument to
    change. Cached per model structure and shapes, so repeated calls cost nothing."""
    check_type(name, model, Model, "a deis_jax.Model (build one with deis_jax.as_model)")
    x = jax.ShapeDtypeStruct(x.shape, x.dtype)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    key = (treedef, tuple((jnp.shape(v), jnp.result_type(v)) for v in leaves), x.shape,
           x.dtype)
    try:
        if key in _CHECKED:
            return
    except TypeError:  # an unhashable static part: check every time
        key = None
    _check_call(model, x)
    if key is not None:
        _CHECKED.add(key)


_CHECKED: set = set()


def _describe(model: Model, x) -> str:
    t_in = jax.eval_shape(lambda t: _time_input(model.timestep, model.schedule, t),
                          jax.ShapeDtypeStruct(x.shape[:1], state_dtype(x.dtype)))
    name = getattr(model.network if model.module is None else model.module, "__qualname__",
                   None) or type(model.network if model.module is None else model.module
                                 ).__name__
    cond = ""
    if model.cond is not None:
        shapes = jax.tree_util.tree_map(lambda v: tuple(jnp.shape(v)), model.cond)
        cond = f", cond of shape(s) {shapes}"
    return (f"{name} called as {model.call_form()} with x of shape {tuple(x.shape)} "
            f"({np.dtype(model.dtype or x.dtype).name}) and t of shape {tuple(t_in.shape)} "
            f"({t_in.dtype}, timestep={model.timestep!r}){cond}")


def _check_call(model: Model, x) -> None:
    try:
        out = jax.eval_shape(lambda m, x: m._raw(x, jnp.ones(x.shape[:1], x.dtype)), model, x)
    except ValueError as err:
        if "cond has a leaf" in str(err):
            raise ValueError(f"{err} (as_model's cond=)") from None
        raise _call_error(model, x, err) from err
    except Exception as err:  # noqa: BLE001 -- re-raised naming the network and the call
        raise _call_error(model, x, err) from err
    shape = getattr(out, "shape", None)
    if shape != tuple(x.shape):
        got = shape if shape is not None else type(out).__name__
        raise ValueError(f"the network must return an array of x's shape {tuple(x.shape)}; "
                         f"{_describe(model, x)} returned {got}")
    if not jnp.issubdtype(getattr(out, "dtype", np.int32), jnp.floating):
        raise TypeError(f"the network must return floating-point values; "
                        f"{_describe(model, x)} returned dtype {out.dtype}")


def _call_error(model: Model, x, err) -> ValueError:
    hints = []
    if model.params is None and model.module is None:
        hints.append("a network with parameters needs params=")
    elif model.module is None and not isinstance(model.network, _Pytree):
        hints.append("a network without parameters takes no params=")
    hints.append("a network without a condition takes no cond=" if model.cond is not None
                 else "a conditional network needs cond=")
    if model.timestep in _DISCRETE:
        hints.append("timestep='discrete' hands it int32 steps (timestep='index' floats)")
    else:
        hints.append("timestep= sets its time input")
    hints.append("x must have the shape the network expects")
    return ValueError(f"the network failed: {_describe(model, x)}: {type(err).__name__}: "
                      f"{err} (as_model: {'; '.join(hints)})")
