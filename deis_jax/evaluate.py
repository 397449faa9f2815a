"""Sample a trained model with several solvers and score the samples against held-out data.

The model is a :class:`deis_jax.Model` that knows its training spec (``model.info["spec"]``):
from a checkpoint with :func:`~deis_jax.training.load_model`, a shipped one with
:func:`deis_jax.pretrained.load`, or parameters in memory with ``spec.as_model(params)``. Its
parameters are data of the samplers, so every solver and every evaluation during training
reuses its compiled executable.

Scores: the energy distance for points; for 8x8 digits the Frechet distance in the shipped
classifier's features and the fraction of samples it recognises (see
:mod:`deis_jax.training.metrics`). The reference is a near-exact adaptive solve of the
probability-flow ODE from the same ``x_T``, so a ratio to it isolates the solver's error.

Example::

    m = load_model("runs/cb")
    rows, samples = evaluate_solvers(m, load_dataset("checkerboard"), ["ddim", "tab3"],
                                     nfe=10, n=2000)
    print(quality_table("checkerboard", "points", rows))
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_int, check_scalar, check_type
from deis_jax.adaptive import solve_ode
from deis_jax.grids import GRID_KINDS
from deis_jax.guidance import classifier_free
from deis_jax.model import Model
from deis_jax.plan import make_plan
from deis_jax.sampling import sample
from deis_jax.solvers import get_solver
from deis_jax.training import Dataset, DiffusionSpec, digit_quality, energy_distance, in_squares

__all__ = [
    "spec_of",
    "draw_samples",
    "evaluate_solvers",
    "guided_model",
    "quality_table",
    "reference_samples",
    "sample_quality_eval",
    "score_samples",
]

_KINDS = ("points", "images")


def spec_of(model: Model) -> DiffusionSpec:
    """The training spec a loaded model carries (``model.info["spec"]``)."""
    check_type("model", model, Model, "a deis_jax.Model from load_model, pretrained.load or "
               "spec.as_model")
    spec = model.info.get("spec")
    if spec is None:
        raise ValueError("model carries no training spec (model.info['spec']): evaluation "
                         "needs a model from training.load_model, pretrained.load or "
                         "spec.as_model(params)")
    return spec


def _prior(model: Model, n: int, seed: int):
    """``(x_T, solver_key)`` for ``n`` samples, both determined by ``seed``."""
    n = check_int("n", n, minimum=1)
    key_prior, key_solver = jax.random.split(jax.random.key(seed))
    shape = (n, *spec_of(model).data["shape"])
    return model.schedule.prior_sample(key_prior, shape), key_solver


def guided_model(model: Model, label=None, guidance=0.0) -> Model:
    """``model`` (the unconditional prediction) without a ``label``; with one, the
    class-conditional model under classifier-free guidance of weight ``guidance``
    (:func:`deis_jax.guidance.classifier_free`: ``(1 + w) eps(x, t, y) - w eps(x, t,
    null)``, the null label being ``num_classes``; ``0`` is the plain conditional model).

    Raises:
      ValueError: a ``label`` for an unconditional model, a label outside ``[0,
        num_classes)``, a non-finite ``guidance``, or a ``guidance`` without a ``label``.
    """
    guidance = check_scalar("guidance", guidance)
    if label is None:
        if guidance != 0.0:
            raise ValueError(f"guidance={guidance!r} needs a label to guide towards")
        return model
    n_classes = spec_of(model).num_classes
    if n_classes is None:
        raise ValueError(f"label={label!r} given, but the model is unconditional (trained "
                         "without labels); train one with conditional=True (deis-jax train "
                         "--conditional)")
    label = jnp.asarray(label)
    if not jnp.issubdtype(label.dtype, jnp.integer) or label.ndim > 1:
        raise TypeError(f"label must be an integer class index (a scalar or (batch,)), got "
                        f"label={label!r}")
    bad = [int(v) for v in np.asarray(label).reshape(-1) if not 0 <= v < n_classes]
    if bad:
        raise ValueError(f"label must lie in [0, n_classes) = [0, {n_classes}), got "
                         f"label={bad[0]}" + (f" ({len(bad)} bad values)" if len(bad) > 1
                                              else ""))
    label = label.astype(jnp.int32)
    return classifier_free(model.replace(cond=label), guidance,
                           null_cond=jnp.full(label.shape or (1,), n_classes, jnp.int32))


def draw_samples(model: Model, n: int, *, solver: str, nfe: int, seed: int = 0,
                 grid="quadratic", label=None, guidance=0.0) -> np.ndarray:
    """``n`` samples of ``model`` with ``solver`` at ``nfe`` model calls.

    Args:
      model: the trained model.
      n: number of samples.
      solver: a registry name (see :func:`deis_jax.solver_names`).
      nfe: model evaluations (with a ``label``, each is one call on the doubled batch).
      seed: determines ``x_T`` (shared with :func:`reference_samples`) and the solver noise.
      grid: time-grid kind (see :data:`deis_jax.GRID_KINDS`), or the grid itself (e.g. a
        learned one from :func:`deis_jax.grid_files.load_grid`, checked against ``solver``
        and the schedule), which must give ``solver`` exactly ``nfe`` model calls.
      label, guidance: the class and the classifier-free guidance weight of a
        class-conditional model (:func:`guided_model`); no label: unconditional samples.

    Returns:
      float32 array ``(n, *shape)``.
    """
    guided = guided_model(model, label, guidance)
    x_T, key = _prior(model, n, seed)
    if isinstance(grid, str):
        plan = make_plan(model.schedule, solver, nfe=nfe, grid=grid)
    else:
        plan = make_plan(model.schedule, solver, ts=grid)
        if plan.nfe != nfe:
            raise ValueError(f"a grid of {plan.n_steps} steps gives {solver!r} {plan.nfe} "
                             f"model calls, not nfe={nfe}")
    x = sample(guided, x_T, plan, key=key)
    return np.asarray(x, np.float32)


def reference_samples(model: Model, n: int, *, seed: int = 0,
                      tol: float = 1e-5) -> tuple[np.ndarray, str]:
    """Near-exact probability-flow ODE solutions from the ``x_T`` of :func:`draw_samples`:
    :func:`deis_jax.adaptive.solve_ode` (Tsit5, ``rtol = atol = tol``).

    Returns:
      ``(samples, label)``: float32 ``(n, *shape)`` and a label naming the tolerance and the
      number of model calls it took.
    """
    x_T, _ = _prior(model, n, seed)
    sol = solve_ode(model, x_T, rtol=tol, atol=tol)
    return np.asarray(sol.x, np.float32), f"adaptive Tsit5 tol {tol:g}, NFE {int(sol.nfe)}"


def _check_scorable(data: Dataset) -> None:
    check_choice("data.kind", data.kind, _KINDS)
    if data.kind == "images" and data.name != "digits":
        raise ValueError("images are scored with the digit classifier, so only the 'digits' "
                         f"dataset has a quality score; got data.name={data.name!r}")


def score_samples(x, data: Dataset) -> tuple[float, float | None]:
    """Score samples against ``data.test``.

    Returns:
      ``(metric, fraction)``: for images the Frechet distance in the digit classifier's
      features and the fraction it recognises; for points the energy distance and, for the
      checkerboard, the fraction inside its squares (:func:`~deis_jax.training.in_squares`),
      else ``None``.
    """
    _check_scorable(data)
    if data.kind == "images":
        quality = digit_quality(x, data.test)
        return quality.frechet, quality.recognised
    fraction = in_squares(x) if data.name == "checkerboard" else None
    return energy_distance(x, data.test), fraction


def _row(solver: str, nfe: int | None, grid: str | None, score: tuple[float, float | None],
         ratio: float, t0: float) -> dict:
    metric, recognised = score
    return {"solver": solver, "nfe": nfe, "grid": grid, "metric": metric, "ratio": ratio,
            "recognised": recognised, "seconds": time.perf_counter() - t0}


def evaluate_solvers(model: Model, data: Dataset, solvers: Sequence[str], *,
                     nfe: int | Sequence[int], n: int, seed: int = 0,
                     grid: str | Mapping[str, str] = "quadratic",
                     on_row: Callable[[dict], Any] | None = None,
                     ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Sample with each solver at each ``nfe`` and with the reference, from the same ``x_T``,
    and score every sample set against held-out data.

    Args:
      model: the trained model.
      data: its dataset (``data.test`` is the held-out set).
      solvers: registry names.
      nfe: model evaluations of each solver, or several (one row per solver and NFE).
      n: samples per sampler.
      seed: determines ``x_T`` and the solver noise.
      grid: the time-grid kind of every solver, or ``{solver: kind}`` for each.
      on_row: called with each row as soon as it is scored (e.g. to advance a progress bar).

    Returns:
      ``(rows, samples)``: one row per sampler, the reference first (``solver``, ``nfe`` --
      None for the reference --, ``grid``, ``metric``, ``ratio`` of the metric to the
      reference's, ``recognised`` -- see :func:`score_samples` --, ``seconds``); and
      ``{label: samples}`` with the labels ``"reference"`` and ``f"{solver}, NFE {nfe}"``.
    """
    nfes = (nfe,) if np.ndim(nfe) == 0 else tuple(nfe)
    grids = {name: grid for name in solvers} if isinstance(grid, str) else dict(grid)
    for name in solvers:
        get_solver(name)  # an unknown name fails before the reference solve
        check_choice(f"grid of {name!r}", grids.get(name), GRID_KINDS)
    t0 = time.perf_counter()
    ref, label = reference_samples(model, n, seed=seed)
    ref_score = score_samples(ref, data)
    rows = [_row(f"reference ({label})", None, None, ref_score, 1.0, t0)]
    samples = {"reference": ref}
    report = on_row or (lambda row: None)
    report(rows[0])
    for steps in nfes:
        for name in solvers:
            t0 = time.perf_counter()
            x = draw_samples(model, n, solver=name, nfe=steps, seed=seed, grid=grids[name])
            score = score_samples(x, data)
            ratio = score[0] / ref_score[0] if ref_score[0] > 0 else float("nan")
            rows.append(_row(name, steps, grids[name], score, ratio, t0))
            samples[f"{name}, NFE {steps}"] = x
            report(rows[-1])
    return rows, samples


def quality_table(dataset: str, kind: str, rows: Sequence[dict]) -> str:
    """A markdown table of :func:`evaluate_solvers` rows.

    Args:
      dataset: the name in the header.
      kind: ``"points"`` (energy distance, and the fraction in the checkerboard's squares
        when the rows have one) or ``"images"`` (Frechet distance and a recognised-digits
        column).
      rows: dicts with ``solver``, ``nfe`` (None prints ``-``), ``metric``, ``ratio`` and,
        optionally, ``grid`` (a column when any row has one) and ``recognised``.

    Example:
      >>> row = {"solver": "tab3", "nfe": 10, "metric": 0.00244, "ratio": 1.49}
      >>> print(quality_table("checkerboard", "points", [row]))
      | checkerboard: sampler | NFE | energy distance | / reference |
      |---|---:|---:|---:|
      | tab3 | 10 | 0.00244 | 1.49 |
    """
    check_choice("kind", kind, _KINDS)
    images = kind == "images"
    with_grid = any(r.get("grid") for r in rows)
    with_fraction = images or any(r.get("recognised") is not None for r in rows)
    metric = "Frechet distance (classifier features)" if images else "energy distance"
    head = f"| {dataset}: sampler |" + (" grid |" if with_grid else "") + f" NFE | {metric} |"
    head += " / reference |"
    sep = "|---|" + ("---|" if with_grid else "") + "---:|---:|---:|"
    if with_fraction:
        head += " recognised digits |" if images else " in the squares |"
        sep += "---:|"
    lines = [head, sep]
    for r in rows:
        nfe = "-" if r["nfe"] is None else r["nfe"]
        grid = f" {r.get('grid') or '-'} |" if with_grid else ""
        line = f"| {r['solver']} |{grid} {nfe} | {r['metric']:.4g} | {r['ratio']:.2f} |"
        if with_fraction:
            line += f" {100 * r['recognised']:.1f}% |"
        lines.append(line)
    return "\n".join(lines)


def sample_quality_eval(spec: DiffusionSpec, data: Dataset, *, n: int | None = None,
                        nfe: int = 10, solver: str = "tab3") -> Callable[[Any], dict]:
    """An ``eval_fn(state)`` for :func:`~deis_jax.training.fit`: ``n`` samples of the EMA
    parameters with ``solver`` at ``nfe``, scored with :func:`score_samples`.

    Every call samples the new parameters with the same compiled sampler.

    Args:
      spec: the model being trained.
      data: its dataset (points, or the digits).
      n: samples per evaluation (default 1000 for points, 256 for images).
      nfe: model evaluations.
      solver: a registry name.

    Returns:
      ``eval_fn(state) -> {f"{solver}_energy": ...}`` for points (and
      ``f"{solver}_in_squares"`` for the checkerboard), ``{f"{solver}_frechet": ...,
      f"{solver}_recognised": ...}`` for images.
    """
    _check_scorable(data)
    get_solver(solver)
    n = (1000 if data.kind == "points" else 256) if n is None else check_int("n", n, minimum=1)
    names = ("frechet", "recognised") if data.kind == "images" else ("energy", "in_squares")

    def eval_fn(state) -> dict[str, float]:
        trained = spec.as_model(state.ema_params, step=int(state.step))
        score = score_samples(draw_samples(trained, n, solver=solver, nfe=nfe), data)
        return {f"{solver}_{name}": value for name, value in zip(names, score)
                if value is not None}

    return eval_fn
