"""Hostile-input catalogue: a few hundred bad inputs and faults across the public surface,
each classified by what the library does with it.

Outcomes:

* ``clear``: a ``ValueError``/``TypeError``/``FileNotFoundError``/``FloatingPointError`` (or,
  for the CLI, exit status 2 with one error line) raised by deis_jax itself whose message
  names what the case expects (the argument, and for numbers its value).
* ``handled``: no error, and the result is right (a fallback to an intact checkpoint with a
  warning naming the skipped step, a finite sample from a float16 input, an exact resume).
* ``internal``: an error from inside JAX / Flax / orbax / numpy / Python, or one of ours
  that does not name the culprit (e.g. NaN in ``x_T`` blamed on the model after the solve),
  or a CLI traceback.
* ``silent``: no error and a wrong answer (non-finite or meaningless output, a bad setting
  accepted and ignored, a run that "succeeds" with NaN parameters).
* ``data_loss``: a finite checkpoint existed and none is loadable afterwards.

Categories follow issue 10: ``1-training`` (NaN/inf in training), ``2-checkpoints``,
``3-cli``, ``4-numeric`` (values that used to give silent wrong answers: schedules, grids,
times, directions, x_T), ``5-types`` (keys, hooks, schedules, models -- the one door
``as_model``: networks, predictions, time inputs, conditions, compute dtypes, guidance --,
plans, the old call forms, registries, configs).

    python benchmarks/hostile_inputs.py                 # all categories (~5-10 min, 2 cores)
    python benchmarks/hostile_inputs.py --only 4-numeric --verbose
    python benchmarks/hostile_inputs.py --out benchmarks/results/hostile_inputs.md

The script only uses the public API. Since the one-door API (issue 27: every entry point takes
a ``deis_jax.Model`` built by ``as_model``) its cases use that API, so it no longer runs on
commits before it; the "before" column of ``results/hostile_inputs.md`` was measured by the
version of this file from before that change, on older commits.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import deis_jax
from deis_jax import as_model, make_plan, sample, schedules, solve_ode, testing, timesteps

OUTCOMES = ("clear", "handled", "internal", "silent", "data_loss")
CATEGORIES = ("1-training", "2-checkpoints", "3-cli", "4-numeric", "5-types")
RESULTS = pathlib.Path(__file__).parent / "results"
PACKAGE = os.path.dirname(os.path.abspath(deis_jax.__file__))
OUR_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError, RuntimeError,
              NotADirectoryError, FileExistsError, PermissionError)
NAN, INF = float("nan"), float("inf")
GMM = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
# Keep JAX's internal frames in tracebacks, so an error raised inside JAX is not mistaken for
# one raised by deis_jax (JAX normally hides its frames behind the caller's).
jax.config.update("jax_traceback_filtering", "off")


@dataclasses.dataclass
class Case:
    """One hostile input.

    ``run()`` does the call. With ``tokens`` an error is expected: it is ``clear`` when it is
    ours and its message contains every token (case-insensitive). Without an error,
    ``accept(result, warnings)`` (default: reject) says whether the result is right
    (``handled``) or wrong (``silent``); it may also return an outcome name. ``after()``
    runs last and may return ``"data_loss"``.
    """

    category: str
    label: str
    run: Callable[[], Any]
    tokens: tuple = ()
    accept: Callable[[Any, list], Any] | None = None
    after: Callable[[], str | None] | None = None


CASES: list[Case] = []


def case(category, label, run, tokens=(), accept=None, after=None):
    CASES.append(Case(category, label, run, tuple(str(t).lower() for t in tokens), accept,
                      after))


def _ours(err: BaseException) -> bool:
    """Raised by deis_jax code (the innermost frame is in the package) with a type a user
    can act on."""
    if not isinstance(err, OUR_ERRORS):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(PACKAGE)


def _finite(x) -> bool:
    leaves = jax.tree.leaves(x)
    return bool(leaves) and all(bool(np.all(np.isfinite(np.asarray(v, np.float64))))
                                for v in leaves)


def classify(c: Case) -> tuple[str, str]:
    """``(outcome, detail)`` of one case."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = c.run()
            err = None
        except Exception as e:  # noqa: BLE001 -- classifying every failure is the point
            err, result = e, None
    warns = [str(w.message) for w in caught]
    if err is not None:
        text = f"{type(err).__name__}: {err}"
        outcome = "clear" if (_ours(err) and c.tokens and all(
            t in str(err).lower() for t in c.tokens)) else "internal"
        if c.accept is not None and not c.tokens:
            outcome = "internal"  # an error where a result was right
    else:
        text = "no error" + (f"; warned: {warns[0][:160]}" if warns else "")
        if c.accept is None:
            outcome = "silent"
        else:
            try:
                verdict = c.accept(result, warns)
            except Exception as e:  # noqa: BLE001 -- the bad value failed later, unnamed
                verdict, text = "internal", f"later {type(e).__name__}: {e}"
            outcome = verdict if isinstance(verdict, str) else ("handled" if verdict
                                                                else "silent")
    if c.after is not None:
        outcome = c.after() or outcome
    return outcome, " ".join(text.split())[:300]


# ============================================================================ helpers


def _downstream(sched):
    """A schedule is usable when a DDIM sample on it is finite."""
    x = sample(as_model(GMM.eps_fn(sched), sched),
               sched.prior_sample(jax.random.key(0), (4, 2)), solver="ddim", nfe=5)
    return _finite(x)


MODEL_ARGS = ("params", "prediction", "timestep", "cond", "dtype")


def _model(kw):
    """The case's model: ``as_model(network, schedule, **options)``, with ``network``,
    ``schedule`` and the options of :data:`MODEL_ARGS` popped from ``kw`` (default: the
    mixture's exact eps under VP-linear)."""
    sched = kw.pop("schedule", schedules.vp_linear())
    network = kw.pop("network", GMM.eps_fn(sched))
    return as_model(network, sched, **{k: kw.pop(k) for k in MODEL_ARGS if k in kw})


def _sample(**kw):
    model = _model(kw)
    x_T = kw.pop("x_T", jnp.ones((4, 2)))
    kw.setdefault("solver", "ddim")
    if "ts" not in kw:
        kw.setdefault("nfe", 5)
    return sample(model, x_T, **kw)


def _solve(**kw):
    model = _model(kw)
    x_T = kw.pop("x_T", jnp.ones((4, 2)))
    kw.setdefault("rtol", 1e-3)
    kw.setdefault("atol", 1e-3)
    return solve_ode(model, x_T, **kw)


def _grid_ok(ts, sched=None) -> bool:
    """Finite, strictly decreasing, and (with ``sched``) inside the schedule's usable range:
    finite log-SNR and ``rho = sigma/alpha`` at every point."""
    v = np.asarray(ts, np.float64)
    ok = bool(np.all(np.isfinite(v)) and np.all(np.diff(v) < 0))
    return ok and (sched is None or _finite((sched.log_snr(ts), sched.rho(ts))))


def _vr(v) -> str:
    """The value token a clear message must contain."""
    return repr(v) if not isinstance(v, float) or math.isfinite(v) else str(v)


# ============================================================================ 4-numeric


def numeric_cases():
    bad = [NAN, INF, -INF, 0.0, -1.0]
    ctor = {
        "vp_linear": (schedules.vp_linear, ["beta_min", "beta_max", "t_min", "t_max"]),
        "sub_vp": (schedules.sub_vp, ["beta_min", "beta_max", "t_min", "t_max"]),
        "vp_cosine": (schedules.vp_cosine, ["s", "t_min", "t_max"]),
        "ve": (schedules.ve, ["sigma_min", "sigma_max", "t_min", "t_max"]),
        "edm": (schedules.edm, ["sigma_min", "sigma_max", "sigma_data"]),
    }
    for fam, (make, names) in ctor.items():
        for name in names:
            for v in bad + [1e300, 1e-300]:
                fn = functools.partial(make, **{name: v})
                tokens = (name,) if v in (1e300, 1e-300) else (name, _vr(v))
                case("4-numeric", f"schedules.{fam}({name}={v!r})", fn, tokens,
                     accept=lambda s, w: _downstream(s))
    disc = {
        "betas with nan": dict(betas=[0.1, NAN, 0.2]),
        "betas with 1.5": dict(betas=[0.1, 1.5, 0.2]),
        "betas with 0": dict(betas=[0.1, 0.0, 0.2]),
        "betas with -0.1": dict(betas=[0.1, -0.1, 0.2]),
        "betas with inf": dict(betas=[0.1, INF]),
        "alphas_cumprod with nan": dict(alphas_cumprod=[0.9, NAN, 0.5]),
        "alphas_cumprod ending in 0 (zero terminal SNR)": dict(alphas_cumprod=[0.9, 0.5, 0.0]),
        "alphas_cumprod with 1.2": dict(alphas_cumprod=[1.2, 0.5, 0.1]),
    }
    value_token = {"betas with nan": "nan", "betas with 1.5": "1.5", "betas with 0": "0.0",
                   "betas with -0.1": "-0.1", "betas with inf": "inf",
                   "alphas_cumprod with nan": "nan",
                   "alphas_cumprod ending in 0 (zero terminal SNR)": "0.0",
                   "alphas_cumprod with 1.2": "1.2"}
    for label, kw in disc.items():
        arg = next(iter(kw))
        case("4-numeric", f"schedules.vp_discrete({label})",
             functools.partial(schedules.vp_discrete, **kw), (arg, value_token[label]),
             accept=lambda s, w: _downstream(s))
    # Entries distinct in float64 that collapse in float32 (the stored dtype).
    case("4-numeric", "vp_discrete(betas collapsing in float32)",
         lambda: schedules.vp_discrete(betas=np.r_[0.5, np.full(99, 1e-9)]), ("betas",),
         accept=lambda s, w: _downstream(s))
    case("4-numeric", "vp_discrete(terminal rho overflowing float32)",
         lambda: schedules.vp_discrete(alphas_cumprod=np.geomspace(0.99, 1e-80, 50)),
         ("alphas_cumprod",), accept=lambda s, w: _downstream(s))
    case("4-numeric", "vp_discrete(t_min=nan)",
         lambda: schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 10), t_min=NAN),
         ("t_min", "nan"), accept=lambda s, w: _downstream(s))

    # timesteps
    sched = schedules.vp_linear()
    for kind in ("uniform", "quadratic", "log_snr", "edm"):
        for name in ("t_min", "t_max"):
            for v in [NAN, INF, -1.0, 5.0] if name == "t_max" else [NAN, -INF, -1.0, 0.0]:
                if name == "t_min" and v == 0.0 and kind in ("uniform", "quadratic"):
                    continue  # t_min = 0 is a valid end for t-space grids
                case("4-numeric", f"timesteps(vp_linear, 5, {kind!r}, {name}={v!r})",
                     functools.partial(timesteps, sched, 5, kind, **{name: v}),
                     (name, _vr(v)), accept=lambda ts, w: _grid_ok(ts, sched))
    for name, kind in (("power", "power"), ("rho", "edm")):
        for v in [NAN, INF, -INF, 0.0, -2.0, 1e6, 1e-6]:
            tokens = (name,) if v in (1e6, 1e-6) else (name, _vr(v))
            case("4-numeric", f"timesteps(vp_linear, 10, {kind!r}, {name}={v!r})",
                 functools.partial(timesteps, sched, 10, kind, **{name: v}), tokens,
                 accept=lambda ts, w: _grid_ok(ts, sched))
    case("4-numeric", "timesteps(vp_cosine, 5, t_max=1.5) (outside the family's domain)",
         lambda: timesteps(schedules.vp_cosine(), 5, "uniform", t_max=1.5), ("t_max", "1.5"),
         accept=lambda ts, w: _grid_ok(ts, schedules.vp_cosine()))
    for n in (0, -3):
        case("4-numeric", f"timesteps(n_steps={n})", lambda n=n: timesteps(sched, n),
             ("n_steps", n))

    # user grids
    for label, ts in {
        "ts with nan": [1.0, NAN, 0.01], "ts with inf": [INF, 0.5, 0.01],
        "ts not monotone": [1.0, 0.3, 0.5, 0.01], "ts with a repeated time": [1.0, 0.5, 0.5, 0.01],
        "ts below t_min": [1.0, 0.5, -0.2], "ts above t_max": [3.0, 0.5, 0.01],
        "ts of one point": [1.0],
    }.items():
        case("4-numeric", f"sample(ts={label})", lambda ts=ts: _sample(ts=jnp.asarray(ts)),
             ("ts",))

    # x_T values
    for label, x in {"nan": NAN, "inf": INF, "-inf": -INF}.items():
        x_T = jnp.ones((4, 2)).at[1, 0].set(x)
        for solver in ("ddim", "tab3", "dpmpp_2m"):
            case("4-numeric", f"sample(x_T with {label}, {solver})",
                 lambda x_T=x_T, solver=solver: _sample(x_T=x_T, solver=solver), ("x_T",))
        case("4-numeric", f"solve_ode(x_T with {label})",
             lambda x_T=x_T: _solve(x_T=x_T).x, ("x_T",))
    case("4-numeric", "sample(x_T=1e30 everywhere)",
         lambda: _sample(x_T=jnp.full((4, 2), 1e30)), ("x_T",),
         accept=lambda x, w: _finite(x))

    # stochastic solvers on an increasing grid (they sample noise -> data only)
    inc = timesteps(sched, 6)[::-1]
    for name in ("ddpm", "ve_ancestral", "ddim_eta", "euler_maruyama", "sde_ei1", "sde_ei2",
                 "pc", "edm_sde"):
        s = schedules.ve() if name == "ve_ancestral" else sched
        ts = timesteps(s, 6)[::-1] if name == "ve_ancestral" else inc
        case("4-numeric", f"sample({name}, increasing ts)",
             lambda name=name, s=s, ts=ts: _sample(schedule=s, solver=name, ts=ts,
                                                   key=jax.random.key(0)),
             ("ts", "increasing"))

    # nfe
    for v in (0, -1):
        case("4-numeric", f"sample(nfe={v})", lambda v=v: _sample(nfe=v), ("nfe", v))
    case("4-numeric", "sample(rho_rk4, nfe=10) (not reachable)",
         lambda: _sample(solver="rho_rk4", nfe=10), ("nfe", "10"))

    # solver hyper-parameters
    from deis_jax import solvers as S
    for label, make, name, v in [
        ("stochastic_ddim(eta=nan)", lambda: S.stochastic_ddim(NAN), "eta", NAN),
        ("stochastic_ddim(eta=-1)", lambda: S.stochastic_ddim(-1.0), "eta", -1.0),
        ("stochastic_ddim(eta=inf)", lambda: S.stochastic_ddim(INF), "eta", INF),
        ("euler_maruyama(eta=nan)", lambda: S.euler_maruyama(NAN), "eta", NAN),
        ("euler_maruyama(eta=inf)", lambda: S.euler_maruyama(INF), "eta", INF),
        ("pc(snr=nan)", lambda: S.pc(snr=NAN), "snr", NAN),
        ("pc(snr=-1)", lambda: S.pc(snr=-1.0), "snr", -1.0),
        ("pc(n_corrector_steps=-1)", lambda: S.pc(n_corrector_steps=-1), "n_corrector_steps",
         -1),
    ]:
        case("4-numeric", f"solvers.{label}",
             lambda make=make: _sample(solver=make(), key=jax.random.key(0), nfe=6),
             (name, _vr(v)), accept=lambda x, w: _finite(x))

    # solve_ode times and tolerances
    for name in ("t_start", "t_end"):
        for v in (NAN, INF, -0.5, 2.0, 0.0):
            case("4-numeric", f"solve_ode({name}={v!r})",
                 lambda name=name, v=v: _solve(**{name: v}).x, (name, _vr(v)))
    for name in ("rtol", "atol"):
        for v in (NAN, INF, 0.0, -1e-3):
            case("4-numeric", f"solve_ode({name}={v!r})",
                 lambda name=name, v=v: _solve(**{name: v}).x, (name,))
    case("4-numeric", "solve_ode(max_steps=0)", lambda: _solve(max_steps=0).x, ("max_steps",))

    # low-precision inputs that must keep working (the sample comes back in the state
    # dtype, float32: deis_jax.precision)
    for dt in ("float16", "bfloat16"):
        for solver in ("ddim", "tab3", "dpmpp_2m"):
            case("4-numeric", f"sample(x_T {dt}, {solver}) (must work)",
                 lambda dt=dt, solver=solver: _sample(
                     x_T=jnp.ones((4, 2), dt), solver=solver, nfe=6),
                 accept=lambda x, w: _finite(x) and x.dtype == jnp.float32)


# ============================================================================ 5-types


class _Unhashable:
    __hash__ = None

    def __init__(self, sched):
        self.sched = sched

    def __eq__(self, other):
        return isinstance(other, _Unhashable)

    def __call__(self, x, t):
        return GMM.eps(x, t, self.sched)


def types_cases():
    sched = schedules.vp_linear()
    eps = GMM.eps_fn(sched)
    # PRNG keys
    for label, key in {
        "an int": 0, "a float array": jnp.ones((2,)), "a batch of keys":
        jax.random.split(jax.random.key(0), 3), "a string": "seed",
        "a uint32 array of shape (3,)": jnp.zeros((3,), jnp.uint32),
    }.items():
        for solver in ("ddpm", "euler_maruyama"):
            case("5-types", f"sample({solver}, key={label})",
                 lambda key=key, solver=solver: _sample(solver=solver, key=key), ("key",))
    case("5-types", "sample(ddpm, key=legacy uint32 PRNGKey) (must work)",
         lambda: _sample(solver="ddpm", key=jax.random.PRNGKey(0)),
         accept=lambda x, w: _finite(x))
    case("5-types", "schedule.prior_sample(key=0)",
         lambda: sched.prior_sample(0, (4, 2)), ("key",))
    case("5-types", "schedule.prior_sample(key=batch of keys)",
         lambda: sched.prior_sample(jax.random.split(jax.random.key(0), 2), (4, 2)), ("key",))

    # hooks
    for label, hook in {
        "changing the shape": lambda x, t: x[:, :1],
        "changing the dtype": lambda x, t: x.astype(jnp.float16),
        "returning a tuple": lambda x, t: (x, t),
        "taking one argument": lambda x: x,
        "returning None": lambda x, t: None,
        "an int": 3,
        "raising inside": lambda x, t: x @ jnp.ones((5, 5)),
    }.items():
        case("5-types", f"sample(hook {label})", lambda hook=hook: _sample(hook=hook),
             ("hook",))

    # schedules of the wrong type
    for label, s in {"a string": "vp_linear", "None": None, "a dict": {"beta_min": 0.1},
                     "a solver": deis_jax.get_solver("ddim")}.items():
        case("5-types", f"as_model(network, schedule={label})", lambda s=s: as_model(eps, s),
             ("schedule",))
        case("5-types", f"make_plan(schedule={label})",
             lambda s=s: make_plan(s, "ddim", nfe=5), ("schedule",))
        case("5-types", f"timesteps(schedule={label})", lambda s=s: timesteps(s, 5),
             ("schedule",))

    # x_T of the wrong type: the message must name x_T and what it got
    for label, x, tok in [
        ("a tuple of arrays", (jnp.ones((4, 2)), jnp.ones((4, 2))), "tuple"),
        ("a tuple of floats", (1.0, 2.0), "tuple"),
        ("a string", "noise", "str"), ("None", None, "None"),
        ("a dict", {"x": jnp.ones((4, 2))}, "dict"),
        ("an int array", jnp.ones((4, 2), jnp.int32), "int32"),
        ("a complex array", jnp.ones((4, 2), jnp.complex64), "complex64"),
        ("a 0-d array", jnp.ones(()), "shape"), ("an empty batch", jnp.ones((0, 2)), "shape"),
        ("a bool array", jnp.ones((4, 2), bool), "bool"),
    ]:
        case("5-types", f"sample(x_T={label})", lambda x=x: _sample(x_T=x), ("x_T", tok))
        case("5-types", f"solve_ode(x_T={label})", lambda x=x: _solve(x_T=x).x,
             ("x_T", tok))

    # networks (through the one door, as_model)
    models = {
        "not callable (42)": 42, "None": None, "a string": "eps",
        "returning int32": lambda x, t: jnp.zeros(x.shape, jnp.int32),
        "returning complex": lambda x, t: jnp.zeros(x.shape, jnp.complex64),
        "returning another shape": lambda x, t: x[:, :1],
        "returning a tuple": lambda x, t: (x, x),
        "returning a scalar": lambda x, t: jnp.sum(x),
        "taking one argument": lambda x: x,
        "raising inside": lambda x, t: x @ jnp.ones((5, 5)),
    }
    for label, m in models.items():
        case("5-types", f"sample(as_model(network {label}))", lambda m=m: _sample(network=m),
             ("network",))
        case("5-types", f"solve_ode(as_model(network {label}))",
             lambda m=m: _solve(network=m).x, ("network",))
    case("5-types", "sample(as_model(unhashable callable network)) (must work)",
         lambda: _sample(network=_Unhashable(sched)), accept=lambda x, w: _finite(x))
    case("5-types", "sample(as_model(network needing params, none given))",
         lambda: _sample(network=lambda p, x, t: x * p), ("params",))
    model_cases(sched, eps)

    # solver names
    for s in (3, "TAB3", object(), "rk45"):
        case("5-types", f"sample(solver={s!r})", lambda s=s: _sample(solver=s), ("solver",))
    case("5-types", "sample(solver=None) (the default, tab3) (must work)",
         lambda: _sample(solver=None), accept=lambda x, w: _finite(x))
    case("5-types", "solve_ode(solver='rk45')", lambda: _solve(solver="rk45").x, ("solver",))
    case("5-types", "solve_ode(per_sample='yes')", lambda: _solve(per_sample="yes").x,
         ("per_sample",))
    case("5-types", "sample(nfe=2.5)", lambda: _sample(nfe=2.5), ("nfe",))
    case("5-types", "sample(nfe='10')", lambda: _sample(nfe="10"), ("nfe",))
    case("5-types", "sample(grid='cosine')", lambda: _sample(grid="cosine"), ("grid",))
    case("5-types", "timesteps(n_steps=2.5)", lambda: timesteps(sched, 2.5), ("n_steps",))
    case("5-types", "timesteps(kind='cosine')", lambda: timesteps(sched, 5, "cosine"),
         ("kind",))
    case("5-types", "timesteps(t_max='1')", lambda: timesteps(sched, 5, t_max="1"),
         ("t_max",))
    case("5-types", "sample(ts of ints)", lambda: _sample(ts=jnp.array([3, 2, 1])), ("ts",))
    case("5-types", "sample(ts 2-d)", lambda: _sample(ts=jnp.ones((2, 3))), ("ts",))
    case("5-types", "schedules.vp_linear(beta_max='20')",
         lambda: schedules.vp_linear(beta_max="20"), ("beta_max",))
    case("5-types", "schedules.vp_linear(beta_max=[10, 20])",
         lambda: schedules.vp_linear(beta_max=[10.0, 20.0]), ("beta_max",),
         accept=lambda s, w: _downstream(s))
    case("5-types", "schedules.ve(sigma_max=None)", lambda: schedules.ve(sigma_max=None),
         ("sigma_max",))
    case("5-types", "schedules.vp_discrete(betas='0.1')",
         lambda: schedules.vp_discrete(betas="0.1"), ("betas",))
    case("5-types", "schedules.from_name('vp')", lambda: schedules.from_name("vp"),
         ("schedule",))

    # solver registry
    from deis_jax import register_solver, get_solver
    counter = iter(range(10_000))

    def _register(factory):
        name = f"hostile_{next(counter)}_{os.getpid()}"
        register_solver(name, factory)
        return _sample(solver=name)

    case("5-types", "register_solver(non-callable factory)", lambda: _register(42),
         ("factory",))
    case("5-types", "register_solver(factory returning 42)", lambda: _register(lambda: 42),
         ("factory",))
    case("5-types", "register_solver(factory returning a string)",
         lambda: _register(lambda: "ddim"), ("factory",))
    case("5-types", "register_solver(factory raising)",
         lambda: _register(lambda: 1 / 0), ("factory",))
    case("5-types", "register_solver(name=3)",
         lambda: register_solver(3, lambda: get_solver("ddim")), ("name",))
    case("5-types", "register_solver(duplicate 'ddim')",
         lambda: register_solver("ddim", lambda: get_solver("ddim")), ("ddim",))
    case("5-types", "register_solver(a valid factory) (must work)",
         lambda: _register(lambda: get_solver("ddim")), accept=lambda x, w: _finite(x))

    # training configs, model configs, specs, datasets
    from deis_jax import training as T
    for kw in [dict(lr="0.1"), dict(lr=None), dict(weight_decay="x"),
               dict(ema_decay=None), dict(clip_norm="1"), dict(batch_size="32"),
               dict(steps=1.5), dict(seed=-1), dict(keep=0), dict(log_every=None),
               dict(warmup_steps=2.5), dict(ckpt_every="5")]:
        (name, v), = kw.items()
        case("5-types", f"TrainConfig({name}={v!r})",
             lambda kw=kw: _fit_small(T.TrainConfig(**{**dict(steps=2, batch_size=8),
                                                        **kw})), (name,))
    for cfg, tok in [({"name": "mlp", "hiden": 16}, "hiden"),
                     ({"name": "mlp", "hidden": 16, "dept": 2}, "dept"),
                     ({"name": "unet", "channel": [8]}, "channel"),
                     ({"hidden": 16}, "name"), ({"name": "transformer"}, "transformer"),
                     ("mlp", "config")]:
        case("5-types", f"models.model_from_config({cfg!r})",
             lambda cfg=cfg: _build_and_init(cfg), (tok,))
    for label, train in [("data of 3-d points", np.ones((256, 3))),
                         ("image data", np.zeros((64, 8, 8, 1)))]:
        case("5-types", f"fit({label}, spec of 2-d points), then sample",
             lambda train=train: _fit_data(train), ("shape",), accept=_sample_fitted)
    case("5-types", "fit(Dataset whose test set has another shape)",
         lambda: _fit_small(T.TrainConfig(steps=2, batch_size=8), data=T.Dataset(
             "blob", np.zeros((64, 2), np.float32), np.zeros((16, 3), np.float32), "points")),
         ("test",))
    case("5-types", "fit(Dataset of int64 arrays)",
         lambda: _fit_small(T.TrainConfig(steps=2, batch_size=8), data=T.Dataset(
             "blob", np.zeros((64, 2), np.int64), np.zeros((16, 2), np.int64), "points")),
         ("dtype",))
    case("5-types", "fit(until=0)", lambda: _fit_small(T.TrainConfig(steps=4, batch_size=8),
                                                     until=0), ("until",))
    case("5-types", "fit(max_seconds=nan)",
         lambda: _fit_small(T.TrainConfig(steps=2, batch_size=8), max_seconds=NAN),
         ("max_seconds", "nan"))
    case("5-types", "fit(progress='fancy')",
         lambda: _fit_small(T.TrainConfig(steps=2, batch_size=8), progress="fancy"),
         ("progress",))
    case("5-types", "DiffusionSpec(loss='l2')",
         lambda: T.DiffusionSpec(model=SPEC_MODEL, schedule=SPEC_SCHEDULE, loss="l2"),
         ("loss",))
    case("5-types", "DiffusionSpec(loss='edm', prediction='x0') (ignored setting)",
         lambda: T.DiffusionSpec(model=SPEC_MODEL, schedule=SPEC_SCHEDULE, loss="edm",
                                 prediction="x0"), ("prediction",))
    case("5-types", "DiffusionSpec(loss='ddpm', weighting='likelihood') (ignored setting)",
         lambda: T.DiffusionSpec(model=SPEC_MODEL, schedule=T.schedule_to_dict(
             schedules.from_name("vp_discrete")), loss="ddpm", weighting="likelihood"),
         ("weighting",))
    case("5-types", "schedule_from_dict(missing params)",
         lambda: T.schedule_from_dict({"name": "vp_linear", "t_min": 1e-3, "t_max": 1.0}),
         ("params",))
    case("5-types", "load_dataset('mnist')", lambda: T.load_dataset("mnist"), ("dataset",))
    case("5-types", "array_dataset(1-d array)", lambda: T.array_dataset(np.zeros(10)),
         ("train",))
    case("5-types", "array_dataset(strings)", lambda: T.array_dataset([["a", "b"]] * 4),
         ("train",))


def _cond_net(x, t, label):
    """A class-conditional eps-network: integer labels ``(batch,)`` shift the prediction."""
    return 0.1 * x - 0.01 * label[:, None].astype(x.dtype)


def _index_net(x, t):
    """A network of DDPM step indices: it insists on int32 steps (``timestep="discrete"``)."""
    if t.dtype != jnp.int32:
        raise TypeError(f"_index_net takes int32 steps, got {t.dtype}")
    return 0.1 * x


def model_cases(sched, eps):
    """The one door (``as_model``) and what it builds: unsupported networks, the Model's
    options (prediction, timestep, dtype, params, cond), guidance on a Model, plans, networks
    that fail when called, and the old call forms (which must be refused naming ``as_model``)."""
    from deis_jax.guidance import classifier_free, classifier_guidance
    from deis_jax.models import MLPScore

    x = jnp.ones((4, 2))
    labels = jnp.arange(4, dtype=jnp.int32) % 3
    null = jnp.full_like(labels, 3)

    def cond_model():
        return as_model(_cond_net, sched, cond=labels)

    # unsupported objects as the network
    for label, obj in {"an int (42)": 42, "a string ('eps_fn')": "eps_fn", "None": None,
                       "a dict of arrays": {"w": jnp.ones(2)}, "a list of functions": [eps]
                       }.items():
        case("5-types", f"as_model({label}, schedule)", lambda obj=obj: as_model(obj, sched),
             ("network",))
    case("5-types", "as_model(network) without a schedule", lambda: as_model(eps),
         ("schedule",))
    case("5-types", "as_model(a Linen module without params=)",
         lambda: as_model(MLPScore(hidden=8, depth=1), sched), ("params",))
    case("5-types", "as_model(an existing Model, schedule) (fields go through model.replace)",
         lambda: as_model(as_model(eps, sched), sched), ("replace",))

    # prediction= (was sample's / solve_ode's prediction=)
    for p in ("noise", None, 3, "EPS"):
        case("5-types", f"as_model(prediction={p!r})",
             lambda p=p: as_model(eps, sched, prediction=p), ("prediction", repr(p)))

    # timestep=
    for v in ("ms", "seconds", 3):
        case("5-types", f"as_model(timestep={v!r}) (unknown)",
             lambda v=v: as_model(eps, sched, timestep=v), ("timestep", repr(v)))
    for v in ("discrete", "index"):
        case("5-types", f"as_model(timestep={v!r}) on vp_linear (a DDPM step, vp_discrete only)",
             lambda v=v: as_model(eps, sched, timestep=v), ("timestep", v, "vp_linear"))
    case("5-types", "sample(as_model(network of int32 steps, vp_discrete, timestep='discrete')) "
         "(must work)",
         lambda: _sample(schedule=schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 1000)),
                         network=_index_net, timestep="discrete"),
         accept=lambda r, w: _finite(r))

    # dtype= (was sample's model_dtype=)
    for v in ("int8", "float128", "fp8", 3):
        case("5-types", f"as_model(dtype={v!r})", lambda v=v: as_model(eps, sched, dtype=v),
             ("dtype", repr(v)))
    case("5-types", "as_model(dtype='float64') with float64 off",
         lambda: as_model(eps, sched, dtype="float64"), ("dtype", "float64"))
    case("5-types", "sample(as_model(dtype='bfloat16')) (must work; float32 state)",
         lambda: _sample(dtype="bfloat16", solver="tab3", nfe=6),
         accept=lambda r, w: _finite(r) and r.dtype == jnp.float32)

    # params= (was sample's params=)
    case("5-types", "sample(as_model(network without parameters, params=...))",
         lambda: _sample(params={"w": jnp.ones(2)}), ("params",))

    # cond=
    case("5-types", "sample(as_model(cond whose leading axis is 3), batch 4)",
         lambda: _sample(network=_cond_net, cond=jnp.zeros((3,), jnp.int32)), ("cond", "(3,)"))
    case("5-types", "solve_ode(as_model(cond whose leading axis is 2), batch 4)",
         lambda: _solve(network=_cond_net, cond=jnp.zeros((2,), jnp.int32)).x,
         ("cond", "(2,)"))
    case("5-types", "as_model(cond with a string leaf)",
         lambda: as_model(_cond_net, sched, cond={"label": "cat"}), ("cond", "cat"))
    case("5-types", "sample(as_model(conditional network, no cond))",
         lambda: _sample(network=_cond_net), ("cond",))
    case("5-types", "sample(as_model(unconditional network, cond=labels))",
         lambda: _sample(cond=labels), ("cond",))
    case("5-types", "sample(as_model(cond shared, leading axis 1)) (must work)",
         lambda: _sample(network=_cond_net, cond=jnp.array([2], jnp.int32)),
         accept=lambda r, w: _finite(r))
    case("5-types", "sample(as_model(cond a Python int)) (must work)",
         lambda: _sample(network=_cond_net, cond=2), accept=lambda r, w: _finite(r))

    # networks that fail when called
    for label, net in {"x only": lambda x: x, "(x, t, a, b)": lambda x, t, a, b: x}.items():
        case("5-types", f"sample(as_model(network of the wrong arity: {label}))",
             lambda net=net: _sample(network=net), ("network", "network(x, t)"))

    # guidance on a Model
    case("5-types", "classifier_free(null_cond of another structure: a dict)",
         lambda: classifier_free(cond_model(), 2.0, null_cond={"label": null}),
         ("null_cond", "structure"))
    case("5-types", "classifier_free(null_cond of another dtype: float32 labels)",
         lambda: classifier_free(cond_model(), 2.0, null_cond=jnp.full((4,), 3.0)),
         ("null_cond", "float32"))
    case("5-types", "classifier_free(null_cond of another trailing shape)",
         lambda: classifier_free(cond_model(), 2.0, null_cond=jnp.zeros((4, 2), jnp.int32)),
         ("null_cond", "(4, 2)"))
    case("5-types", "classifier_free(no null_cond)", lambda: classifier_free(cond_model(), 2.0),
         ("null_cond",))
    case("5-types", "classifier_free(a model without a condition)",
         lambda: classifier_free(as_model(eps, sched), 2.0, null_cond=null), ("cond",))
    case("5-types", "classifier_free(scale=nan)",
         lambda: classifier_free(cond_model(), NAN, null_cond=null), ("scale", "nan"))
    case("5-types", "classifier_free(a network function, not a Model)",
         lambda: classifier_free(_cond_net, 2.0, cond=labels, null_cond=null),
         ("model", "as_model"))
    case("5-types", "sample(classifier_free(conditional Model, 2.0, null_cond)) (must work)",
         lambda: sample(classifier_free(cond_model(), 2.0, null_cond=null), x, solver="ddim",
                        nfe=5), accept=lambda r, w: _finite(r))
    case("5-types", "classifier_guidance(label=float32 array)",
         lambda: classifier_guidance(as_model(eps, sched), lambda p, x, t: x, 1.0,
                                     label=jnp.ones(4)), ("label", "float32"))

    # plans
    case("5-types", "sample(plan and nfe)",
         lambda: sample(as_model(eps, sched), x, make_plan(sched, "ddim", nfe=5), nfe=10),
         ("plan",))
    case("5-types", "sample(plan='ddim')", lambda: sample(as_model(eps, sched), x, "ddim"),
         ("plan",))
    case("5-types", "make_plan(nfe and ts)",
         lambda: make_plan(sched, "ddim", nfe=5, ts=timesteps(sched, 5)), ("nfe", "ts"))
    case("5-types", "make_plan(neither nfe nor ts)", lambda: make_plan(sched, "ddim"),
         ("nfe", "ts"))
    case("5-types", "make_plan(ts=..., rho=7) (a grid option with an explicit grid)",
         lambda: make_plan(sched, "ddim", ts=timesteps(sched, 5), rho=7.0), ("rho",))

    # the old call forms: refused, naming the door
    case("5-types", "sample(model_fn, schedule, x_T) (the old call form)",
         lambda: sample(eps, sched, x, solver="ddim", nfe=5), ("as_model",))
    for kw in (dict(params={"w": jnp.ones(2)}), dict(prediction="x0"),
               dict(model_dtype="bfloat16")):
        case("5-types", f"sample(model, x_T, {next(iter(kw))}=...) (an old argument)",
             lambda kw=kw: sample(as_model(eps, sched), x, solver="ddim", nfe=5, **kw),
             ("as_model",))
    case("5-types", "sample(model_fn, x_T) (a function, not a Model)",
         lambda: sample(eps, x, solver="ddim", nfe=5), ("model", "as_model"))
    case("5-types", "solve_ode(model_fn, schedule, x_T) (the old call form)",
         lambda: solve_ode(eps, sched, x).x, ("as_model",))
    case("5-types", "solve_ode(model, x_T, prediction='x0') (an old argument)",
         lambda: solve_ode(as_model(eps, sched), x, prediction="x0").x, ("as_model",))
    case("5-types", "solve_ode(model_fn, x_T) (a function, not a Model)",
         lambda: solve_ode(eps, x).x, ("model", "as_model"))
    case("5-types", "classifier_free(model_fn, label, scale, n_classes=3) (the old call form)",
         lambda: classifier_free(_cond_net, labels, 2.0, n_classes=3), ("as_model",))


SPEC_MODEL = {"name": "mlp", "hidden": 16, "depth": 1}
SPEC_SCHEDULE = None  # set in main (needs the library)


def _spec(**model):
    from deis_jax import training as T
    return T.DiffusionSpec(model={**SPEC_MODEL, **model}, schedule=SPEC_SCHEDULE,
                           data={"name": "blob", "shape": [2], "kind": "points"})


def _blob(n=512, seed=0, rows=None):
    from deis_jax import training as T
    rng = np.random.default_rng(seed)
    train = (rng.standard_normal((n, 2)) * 0.5 + 1.0).astype(np.float32)
    if rows:
        for r, v in rows.items():
            train[r] = v
    test = (rng.standard_normal((64, 2)) * 0.5 + 1.0).astype(np.float32)
    return T.Dataset("blob", train, test, "points")


def _fit_small(config, data=None, **kw):
    from deis_jax import training as T
    kw.setdefault("progress", "none")
    result = T.fit(_spec(), _blob() if data is None else data, config, **kw)
    return result.state.params


def _build_and_init(cfg):
    from deis_jax.models import model_from_config
    model = model_from_config(cfg)
    return model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))


def _fit_data(train):
    from deis_jax import training as T
    train = np.asarray(train, np.float32)
    data = T.Dataset("blob", train, train[:16], "images" if train.ndim == 4 else "points")
    return T.fit(_spec(), data, T.TrainConfig(steps=2, batch_size=8), progress="none")


def _sample_fitted(result, warns):
    """Training on data the spec does not describe "worked": sampling the spec fails."""
    from deis_jax.evaluate import draw_samples
    model = _spec().as_model(result.state.ema_params)
    return _finite(draw_samples(model, 4, solver="ddim", nfe=4))


# ============================================================================ 1-training

STEPS, EVERY, KEEP, BATCH = 30, 5, 2, 16


def _pick_row(lo, hi, n=512):
    """A row of the ``n``-row blob whose first draw is at a (0-based) step in ``[lo, hi)``."""
    from deis_jax.training import get_batch
    ids = np.arange(n)[:, None]
    first = {}
    for step in range(STEPS):
        for row in get_batch(ids, step, BATCH, 0)[:, 0].tolist():
            first.setdefault(row, step)
    row = min(r for r, s in first.items() if lo <= s < hi)
    return row, first[row]


def _ckpt_state(path):
    """``(n_checkpoints, any_finite)`` over every step directory, restored one by one."""
    from deis_jax import training as T
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) \
        else []
    finite = False
    for s in steps:
        try:
            state, _ = T.restore_checkpoint(path, step=s)
        except Exception:  # noqa: BLE001 -- an unreadable step is not a finite one
            continue
        finite |= _finite(state["params"]) and _finite(state["ema_params"])
    return len(steps), finite


def _train_fault(ckpt, data=None, finite_save=False, **config):
    """``run`` and ``after`` of a training fault: a finite checkpoint written before the
    fault (``finite_save``) must still be loadable afterwards."""
    from deis_jax import training as T

    def run():
        cfg = T.TrainConfig(**{**dict(steps=STEPS, batch_size=BATCH, warmup_steps=2,
                                      ckpt_every=EVERY, keep=KEEP), **config})
        result = T.fit(_spec(), data if data is not None else _blob(), cfg, ckpt_dir=ckpt,
                       progress="none")
        return result

    def after():
        n, finite = _ckpt_state(ckpt)
        return "data_loss" if finite_save and n and not finite else None

    return run, after


def _trained_finite(result, warns):
    return _finite(result.state.params) and _finite(result.history[-1]["test_loss"])


def training_cases(tmp):
    for label, value in (("nan", NAN), ("inf", INF)):
        row, step = _pick_row(12, 17)
        run, after = _train_fault(tmp / f"row_{label}", _blob(rows={row: value}),
                                  finite_save=True)
        case("1-training", f"fit(data with a {label} row first drawn at step {step + 1}, "
             f"ckpt every {EVERY}, keep {KEEP})", run, ("row", str(row)),
             accept=_trained_finite, after=after)
    row, step = _pick_row(12, 17)
    run, after = _train_fault(tmp / "row_big", _blob(rows={row: 1e30}), finite_save=True)
    case("1-training", f"fit(data with a finite 1e30 row first drawn at step {step + 1}: "
         "loss overflows)", run, ("step", str(step + 1)), accept=_trained_finite, after=after)
    for name, v in [("lr", INF), ("lr", NAN), ("lr", 1e30), ("weight_decay", NAN),
                    ("weight_decay", INF), ("weight_decay", -1.0), ("clip_norm", NAN),
                    ("ema_decay", NAN), ("lr", -1.0), ("warmup_steps", -1)]:
        run, after = _train_fault(tmp / f"{name}_{v}", **{name: v})
        tokens = ("step",) if v == 1e30 else (name, _vr(v))
        # lr=1e30 is a legal value: a finite run, or a clear stop, is right. The others are
        # nonsense (negative weight decay grows the weights): accepting them is silent.
        accept = _trained_finite if v == 1e30 else None
        case("1-training", f"fit({name}={v!r})", run, tokens, accept=accept, after=after)
    run, after = _train_fault(tmp / "clip_inf", clip_norm=INF)
    case("1-training", "fit(clip_norm=inf: no clipping) (must work, or be refused)", run,
         ("clip_norm", "inf"), accept=_trained_finite, after=after)
    run, after = _train_fault(tmp / "test_nan",
                              data=_blob()._replace(test=np.full((8, 2), NAN, np.float32)))
    case("1-training", "fit(held-out data all NaN)", run, ("test",), accept=_trained_finite,
         after=after)


# ============================================================================ 2-checkpoints


def _fit_to(path, steps, **config):
    from deis_jax import training as T
    cfg = T.TrainConfig(**{**dict(steps=steps, batch_size=BATCH, warmup_steps=2,
                                  ckpt_every=EVERY, keep=3), **config})
    return T.fit(_spec(), _blob(), cfg, ckpt_dir=path, progress="none")


def _damage_newest(path, how):
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
    newest = path / str(steps[-1])
    if how == "truncate":  # every array file of the newest step cut to half its size
        for root, _, files in os.walk(newest):
            for f in files:
                p = os.path.join(root, f)
                if os.path.basename(root) == "d":
                    with open(p, "r+b") as fh:
                        fh.truncate(os.path.getsize(p) // 2)
    elif how == "meta":
        for root, _, files in os.walk(newest / "meta"):
            for f in files:
                pathlib.Path(root, f).write_text("{not json")
    elif how == "empty":
        shutil.rmtree(newest)
        newest.mkdir()
    elif how == "opt":  # the storage holding the optimizer state (old layout: everything)
        item = "train" if (newest / "train").exists() else "state"
        for root, _, files in os.walk(newest / item):
            for f in files:
                if os.path.basename(root) == "d":
                    pathlib.Path(root, f).write_bytes(b"\0" * 64)
    return steps


def _params_equal(a, b) -> bool:
    return all(bool(np.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a),
                                                          jax.tree.leaves(b)))


def checkpoint_cases(tmp):
    from deis_jax import training as T
    ref = {}

    def reference():
        if "full" not in ref:
            ref["full"] = _fit_to(tmp / "ref_full", 20)
        return ref["full"]

    for how in ("truncate", "meta", "empty"):
        def load(how=how):
            path = tmp / f"load_{how}"
            _fit_to(path, 20)
            steps = _damage_newest(path, how)
            return T.load_model(path), steps

        case("2-checkpoints", f"load_model(newest step damaged: {how})", load,
             accept=lambda r, w: r[0].info["step"] == r[1][-2] and any(str(r[1][-1]) in m
                                                                       for m in w))

        def resume(how=how):
            path = tmp / f"resume_{how}"
            _fit_to(path, 20)
            _damage_newest(path, how)
            return _fit_to(path, 20)

        case("2-checkpoints", f"resume (newest step damaged: {how}) reaches the "
             "uninterrupted run's parameters bitwise", resume,
             accept=lambda r, w: _params_equal(r.state.params, reference().state.params)
             and _params_equal(r.state.opt_state, reference().state.opt_state)
             and any("20" in m for m in w))

    def opt_only():
        path = tmp / "load_opt"
        _fit_to(path, 20)
        _damage_newest(path, "opt")
        return T.load_model(path)

    case("2-checkpoints", "load_model(newest step: optimizer-state storage damaged)", opt_only,
         accept=lambda m, w: m.info["step"] == 20 and _finite(m.params))

    def all_damaged():
        path = tmp / "all_damaged"
        _fit_to(path, 10)
        for s in (5, 10):
            for root, _, files in os.walk(path / str(s)):
                for f in files:
                    if os.path.basename(root) == "d":
                        pathlib.Path(root, f).write_bytes(b"\0" * 64)
        return T.load_model(path)

    case("2-checkpoints", "load_model(every step damaged)", all_damaged, ("10", "5"))

    def not_ours(fn):
        path = tmp / f"not_ours_{fn}"
        for s in ("1", "2"):
            (path / s).mkdir(parents=True)
            (path / s / "data.bin").write_bytes(b"x" * 10)
        if fn == "load":
            return T.load_model(path)
        return _fit_to(path, 5)

    case("2-checkpoints", "load_model(a directory with numeric sub-directories, not ours)",
         lambda: not_ours("load"), ("checkpoint",))
    case("2-checkpoints", "fit(ckpt_dir=a directory with numeric sub-directories, not ours)",
         lambda: not_ours("fit"), ("checkpoint",))
    case("2-checkpoints", "load_model(a regular file)",
         lambda: T.load_model(_touch(tmp / "a_file")), ("ckpt",))
    case("2-checkpoints", "load_model(an empty directory)",
         lambda: T.load_model(_mkdir(tmp / "empty_dir")), ("checkpoint",))
    for step in (-1, "3", 999, 2.0):
        case("2-checkpoints", f"load_model(step={step!r})",
             lambda step=step: T.load_model(_trained(tmp), step=step), ("step",))

    def resume_with(label, spec=None, **config):
        def run():
            path = tmp / f"resume_with_{label}"
            _fit_to(path, 10)
            cfg = T.TrainConfig(**{**dict(steps=20, batch_size=BATCH, warmup_steps=2,
                                          ckpt_every=EVERY, keep=3), **config})
            return T.fit(spec or _spec(), _blob(), cfg, ckpt_dir=path, progress="none")
        return run

    case("2-checkpoints", "resume with another model (hidden 16 -> 32)",
         resume_with("model", spec=_spec(hidden=32)), ("hidden", "16", "32"))
    case("2-checkpoints", "resume with another schedule",
         resume_with("schedule", spec=dataclasses.replace(_spec(), schedule=T.schedule_to_dict(
             schedules.vp_linear(0.1, 10.0)))), ("schedule",))
    for name, v in [("lr", 1e-3), ("batch_size", 32), ("seed", 1), ("weight_decay", 0.0),
                    ("ema_decay", 0.99), ("clip_norm", 0.5)]:
        case("2-checkpoints", f"resume with another {name} ({v!r})",
             resume_with(name, **{name: v}), (name, _vr(v)))
    # The warm-up length sets the schedule, as `steps` does: refusing, or resuming with a
    # warning that names it, are both right; resuming silently is not.
    case("2-checkpoints", "resume with another warmup_steps (4)",
         resume_with("warmup_steps", warmup_steps=4), ("warmup_steps", "4"),
         accept=lambda r, w: any("warmup_steps" in m for m in w))

    def fewer_steps():
        path = tmp / "fewer"
        _fit_to(path, 20)
        return _fit_to(path, 10)

    case("2-checkpoints", "resume with steps=10 on a checkpoint at step 20", fewer_steps,
         ("10", "20"))

    def more_steps():
        path = tmp / "more"
        _fit_to(path, 10)
        return _fit_to(path, 15)

    case("2-checkpoints", "resume with more steps (must work)", more_steps,
         accept=lambda r, w: int(r.state.step) == 15 and _finite(r.state.params))

    def template_mismatch():
        path = _trained(tmp)
        from deis_jax.models import MLPScore
        opt = T.make_optimizer(T.TrainConfig())
        state = T.init_state(MLPScore(hidden=8, depth=1), opt, jnp.zeros((1, 2)),
                             jax.random.key(0))
        return T.restore_checkpoint(path, state)

    case("2-checkpoints", "restore_checkpoint(template of another model)", template_mismatch,
         ("template",))

    def killed_mid_save():
        path = tmp / "killed"
        code = subprocess.run([sys.executable, __file__, "--kill-mid-save", str(path)],
                              capture_output=True, text=True, env={**os.environ,
                                                                   "PYTHONPATH": ROOT}).returncode
        return code, _fit_to(path, 20)

    case("2-checkpoints", "SIGKILL in the middle of a save, then resume (exact)",
         killed_mid_save, accept=lambda r, w: r[0] == -9 and _params_equal(
             r[1].state.params, reference().state.params))


ROOT = os.path.dirname(PACKAGE)


def _kill_mid_save(path):
    """Subprocess: train to step 15 with a checkpoint every 5, SIGKILL during the save of 15."""
    import signal

    import orbax.checkpoint as ocp
    from deis_jax import training as T
    global SPEC_SCHEDULE
    SPEC_SCHEDULE = T.schedule_to_dict(schedules.vp_linear())
    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 15:  # write the arrays, then die before the atomic rename
            from orbax.checkpoint._src.path import atomicity

            async def die(*a, **k):
                os.kill(os.getpid(), signal.SIGKILL)

            for cls in vars(atomicity).values():
                if isinstance(cls, type) and "finalize" in vars(cls):
                    cls.finalize = die
        return original(self, step, *args, **kwargs)

    ocp.CheckpointManager.save = save
    _fit_to(pathlib.Path(path), 20)


def _touch(p):
    p.write_text("x")
    return p


def _mkdir(p):
    p.mkdir(exist_ok=True)
    return p


def _trained(tmp):
    path = tmp / "trained_5"
    if not path.exists():
        _fit_to(path, 5)
    return path


# ============================================================================ 3-cli


def _cli(argv):
    from deis_jax.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def cli_case(label, argv, tokens=(), ok=None):
    """An argv for ``main``: clear when it exits 2 with one error line (argparse: its usage
    line plus one error line) naming ``tokens``; with ``ok``, success is right."""

    def run():
        code, err = _cli(argv() if callable(argv) else argv)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("usage:")
                 and not ln.startswith(" ")]
        if code == 2 and ok is None:
            if len(lines) == 1 and all(t.lower() in lines[0].lower() for t in tokens):
                return "clear"
            return "internal"
        if ok is not None:
            return "handled" if code == 0 and ok() else "internal"
        return "silent"

    CASES.append(Case("3-cli", "deis-jax " + label, run, (), accept=lambda r, w: r))


def cli_cases(tmp):
    f = _touch(tmp / "cli_file")
    ro = "/proc/deis-jax-hostile/run"  # not creatable, even by root
    train = ["train", "--data", "checkerboard", "--steps", "3", "--batch-size", "16",
             "--progress", "none"]
    for label, out, sample_out in [("below a regular file", f / "run", f / "s.png"),
                                   ("a regular file", f, f),
                                   ("unwritable", ro, ro + "/s.png")]:
        cli_case(f"train --out {label}", [*train, "--out", out], ("out",))
        cli_case(f"sample --out {label}",
                 lambda sample_out=sample_out: ["sample", "--ckpt", _cli_ckpt(tmp), "--n", "8",
                                                "--nfe", "4", "--out", sample_out], ("out",))
    cli_case("sample --out an existing directory",
             ["sample", "--ckpt", _cli_ckpt(tmp), "--n", "8", "--nfe", "4", "--out",
              _mkdir(tmp / "outdir.png")], ("out",))
    cli_case("demo --out a regular file", ["demo", "--out", f, "--quick",
                                           "--progress", "none"], ("out",))
    for i, (extra, tok) in enumerate([(["--loss", "edm", "--prediction", "x0"], "prediction"),
                       (["--loss", "ddpm", "--schedule", "vp_discrete", "--weighting",
                         "likelihood"], "weighting"),
                       (["--schedule", "edm", "--weighting", "native"], "weighting"),
                       (["--loss", "edm", "--prediction", "v"], "prediction")]):
        cli_case(f"train {' '.join(extra)} (setting ignored by the loss)",
                 [*train, "--out", tmp / f"cli_ignored_{i}", *extra], (tok,))

    def at_20():
        out = tmp / "cli_at_20"
        if not out.exists():
            _cli(["train", "--data", "checkerboard", "--steps", "20", "--batch-size", "16",
                  "--progress", "none", "--out", out])
        return out

    cli_case("train --steps 10 on a checkpoint at step 20",
             lambda: ["train", "--data", "checkerboard", "--steps", "10", "--batch-size", "16",
                      "--progress", "none", "--out", at_20()], ("10", "20"))
    cli_case("train --lr 1e30 (diverges)", [*train[:4], "6", *train[5:], "--lr", "1e30",
                                            "--out", tmp / "cli_lr"], ("step",))
    cli_case("train --lr inf", [*train, "--lr", "inf", "--out", tmp / "cli_lr_inf"], ("lr",))
    cli_case("train --devices 64", [*train, "--devices", "64", "--out", tmp / "cli_dev"],
             ("devices",))
    nonckpt = tmp / "cli_not_ours"
    for s in ("1", "2"):
        (nonckpt / s).mkdir(parents=True, exist_ok=True)
    cli_case("sample --ckpt a directory with numeric sub-directories",
             ["sample", "--ckpt", nonckpt, "--out", tmp / "x.npz"], ("checkpoint",))
    cli_case("train --out a directory with numeric sub-directories",
             [*train, "--out", nonckpt], ("checkpoint",))
    cli_case("sample --ckpt a regular file", ["sample", "--ckpt", f, "--out", tmp / "x.npz"],
             ("ckpt",))
    cli_case("sample --solver rho_rk4 --nfe 10",
             lambda: ["sample", "--ckpt", _cli_ckpt(tmp), "--solver", "rho_rk4", "--nfe", "10",
                      "--out", tmp / "y.npz"], ("nfe",))
    cli_case("sample --out x.jpg", lambda: ["sample", "--ckpt", _cli_ckpt(tmp), "--out",
                                            tmp / "x.jpg"], ("out",))
    cli_case("train --out on a run of another schedule",
             lambda: [*train, "--schedule", "ve", "--out", _cli_ckpt(tmp)], ("schedule",))
    cli_case("train --out on a run with another --lr",
             lambda: [*train, "--steps", "25", "--lr", "1e-3", "--out", _cli_ckpt(tmp)],
             ("lr",))
    cli_case("train --steps nan", [*train[:4], "nan", *train[5:], "--out", tmp / "z"],
             ("steps",))
    cli_case("sample --n -5", ["sample", "--ckpt", f, "--n", "-5"], ("n",))

    def damaged_ckpt():
        out = tmp / "cli_damaged"
        _cli(["train", "--data", "checkerboard", "--steps", "10", "--batch-size", "16",
              "--ckpt-every", "5", "--progress", "none", "--out", out])
        _damage_newest(out, "truncate")
        return ["sample", "--ckpt", out, "--n", "8", "--nfe", "4", "--out", tmp / "d.npz"]

    cli_case("sample --ckpt whose newest step is truncated (must fall back)", damaged_ckpt,
             ok=lambda: (tmp / "d.npz").exists())


def _cli_ckpt(tmp):
    out = tmp / "cli_ckpt"
    if not out.exists():
        _cli(["train", "--data", "checkerboard", "--steps", "5", "--batch-size", "16",
              "--progress", "none", "--out", out])
    return out


# ============================================================================ main


def build(tmp, only):
    global SPEC_SCHEDULE
    from deis_jax import training as T
    SPEC_SCHEDULE = T.schedule_to_dict(schedules.vp_linear())
    builders = {"1-training": lambda: training_cases(tmp),
                "2-checkpoints": lambda: checkpoint_cases(tmp),
                "3-cli": lambda: cli_cases(tmp), "4-numeric": numeric_cases,
                "5-types": types_cases}
    for name in CATEGORIES:
        if only is None or name in only:
            builders[name]()


def table(rows) -> str:
    counts = collections.OrderedDict((c, collections.Counter()) for c in CATEGORIES)
    for r in rows:
        counts[r["category"]][r["outcome"]] += 1
    head = "| category | cases | " + " | ".join(OUTCOMES) + " |"
    lines = [head, "|" + "---|" * (len(OUTCOMES) + 2)]
    total = collections.Counter()
    for cat, cnt in counts.items():
        n = sum(cnt.values())
        if not n:
            continue
        total += cnt
        lines.append(f"| {cat} | {n} | " + " | ".join(str(cnt[o]) for o in OUTCOMES) + " |")
    lines.append(f"| all | {sum(total.values())} | " + " | ".join(str(total[o])
                                                                 for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=CATEGORIES, default=None)
    parser.add_argument("--verbose", action="store_true", help="print every case")
    parser.add_argument("--out", default=None, help="write the table and cases (markdown)")
    parser.add_argument("--json", default=None, help="write every case's outcome (JSON)")
    parser.add_argument("--kill-mid-save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kill_mid_save:
        _kill_mid_save(args.kill_mid_save)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        build(pathlib.Path(tmp), args.only)
        rows = []
        for c in CASES:
            outcome, detail = classify(c)
            rows.append({"category": c.category, "label": c.label, "outcome": outcome,
                         "detail": detail})
            if args.verbose:
                print(f"[{outcome:9s}] {c.category} | {c.label} | {detail}", flush=True)
    print(table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.out:
        body = [f"# Hostile-input catalogue ({len(rows)} cases)", "",
                "`python benchmarks/hostile_inputs.py` (outcomes defined in its docstring).",
                "", table(rows), ""]
        for cat in CATEGORIES:
            sel = [r for r in rows if r["category"] == cat]
            if sel:
                body += [f"## {cat}", "", "| outcome | case | what happened |", "|---|---|---|"]
                body += [f"| {r['outcome']} | {r['label']} | "
                         f"{r['detail'].replace('|', '/')} |" for r in sel]
                body.append("")
        pathlib.Path(args.out).write_text("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
