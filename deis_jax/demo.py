"""The ``deis-jax demo``: the shipped models sampled by the main solvers, and a model trained
from scratch to show the loop closing.

Three phases, each with its own progress display:

1. ``digits``: the pretrained 8x8-digit U-Net (:func:`deis_jax.pretrained.load`), sampled by
   each of :data:`DEMO_SOLVERS` on its grid of :data:`DEMO_GRIDS` at each NFE and by the
   adaptive reference solver from the same ``x_T``; scored with the shipped digit classifier
   (Frechet distance in its features, fraction recognised).
2. ``checkerboard``: the pretrained 2-d MLP, the same samplers; energy distance to held-out
   data and the fraction of samples inside the board's squares
   (:func:`deis_jax.training.in_squares`).
3. ``train``: the small MLP trained on the checkerboard from scratch (about a minute on its
   defaults), checkpointed in ``out/ckpt_checkerboard``, reloaded and sampled.

It writes ``digits.png`` and ``checkerboard.png`` (columns = solvers, rows = NFE, the metric
under each panel) and ``quality.md`` (the tables and the :data:`QUALITY_BARS`).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from deis_jax import pretrained
from deis_jax._checks import check_int
from deis_jax._files import atomic_write
from deis_jax._progress import Progress
from deis_jax.evaluate import evaluate_solvers, quality_table
from deis_jax.plots import save_panel_table
from deis_jax.training import (
    TrainConfig, default_batch_size, default_spec, fit, load_dataset, load_model)

__all__ = ["DEMO_GRIDS", "DEMO_SOLVERS", "QUALITY_BARS", "run_demo"]

DEMO_SOLVERS = ("ddim", "tab3", "ipndm", "dpmpp_3m", "unipc3")
"""The samplers the demo and ``benchmarks/training.py`` compare."""

DEMO_GRIDS = {"ddim": "quadratic", "tab3": "log_snr", "ipndm": "log_snr",
              "dpmpp_3m": "log_snr", "unipc3": "log_snr"}
"""Each demo solver's grid: DDIM's quadratic grid (Song et al. 2021, CIFAR-10); uniform
log-SNR for the rest (DPM-Solver++ and UniPC are built on it; it is also the grid on which
tAB3 and iPNDM won most often in ``benchmarks/results/accuracy.md`` at NFE 5-10)."""

QUALITY_BARS = (
    ("digits", "tab3", 10, "recognised", ">=", 0.90),
    ("digits", "tab3", 10, "ratio", "<=", 1.3),
    ("checkerboard", "reference", None, "recognised", ">=", 0.95),
    ("checkerboard", "tab3", 10, "recognised", ">=", 0.90),
)
"""What the demo should show, as ``(model, sampler, NFE, row field, comparison, bar)``:
digits with tAB3 at NFE 10 recognised >= 90% of the time and within 1.3x the reference's
Frechet distance; >= 95% of the reference's and >= 90% of tAB3's checkerboard samples in the
squares."""

_FRACTION = {"images": "recognised", "points": "in the squares"}


def _caption(row: dict, kind: str) -> str:
    metric = "FD" if kind == "images" else "ED"
    text = f"{metric} {row['metric']:.3g} ({row['ratio']:.2f}x ref)"
    if row["recognised"] is not None:
        text += f"\n{100 * row['recognised']:.1f}% {_FRACTION[kind]}"
    return text


def _figure_rows(rows, samples, held_out, kind, nfes):
    """Rows = NFE, columns = held-out data or reference, then the solvers."""
    by_key = {(r["solver"], r["nfe"]): r for r in rows[1:]}
    first = [("held-out data", held_out, None), ("reference (adaptive)", samples["reference"],
                                                 _caption(rows[0], kind))]
    table = []
    for i, nfe in enumerate(nfes):
        cells = [first[i] if i < len(first) else None]
        for name in DEMO_SOLVERS:
            row = by_key[(name, nfe)]
            cells.append((f"{name} ({row['grid']}), NFE {nfe}",
                          samples[f"{name}, NFE {nfe}"], _caption(row, kind)))
        table.append(cells)
    if len(nfes) == 1:
        table.append([first[1]])
    return table


def _check_bars(results: dict) -> list[str]:
    """One line per quality bar whose sampler and NFE were run."""
    lines = []
    for model, solver, nfe, field, op, bar in QUALITY_BARS:
        rows = [r for r in results[model] if (r["nfe"] is None if solver == "reference"
                                              else (r["solver"], r["nfe"]) == (solver, nfe))]
        if not rows:
            continue
        value = rows[0][field]
        met = value >= bar if op == ">=" else value <= bar
        what = "Frechet / reference" if field == "ratio" else _FRACTION[
            "images" if model == "digits" else "points"]
        where = solver if nfe is None else f"{solver} NFE {nfe}"
        shown = f"{value:.2f}" if field == "ratio" else f"{100 * value:.1f}%"
        target = f"{bar:g}" if field == "ratio" else f"{100 * bar:g}%"
        lines.append(f"- {model}, {where}: {what} {shown} (bar {op} {target}): "
                     f"{'met' if met else 'MISSED'}")
    return lines


def _sample_and_score(model, data, solvers, nfes, n: int, title: str, progress: str):
    """:func:`evaluate_solvers` with a progress display: one unit per sampler."""
    total = 1 + len(solvers) * len(nfes)
    bar = Progress(progress, total=total, initial=0, stream=sys.stderr, unit="sampler")
    bar.write(f"[{title}]")
    done = []

    def advance(row):
        done.append(row)
        nfe = "adaptive" if row["nfe"] is None else f"NFE {row['nfe']}"
        bar.update(len(done), total, {f"{row['solver'].split(' ')[0]} {nfe}": row["metric"]},
                   1)

    rows, samples = evaluate_solvers(model, data, solvers, nfe=nfes, n=n,
                                     grid={s: DEMO_GRIDS[s] for s in solvers}, on_row=advance)
    bar.close()
    return rows, samples


def _pretrained_part(name: str, n: int, nfes: tuple[int, ...], progress: str):
    """Sample the shipped model ``name``; return its markdown section, its table rows and
    its figure rows."""
    t0 = time.perf_counter()
    model = pretrained.load(name)
    data = load_dataset(model.info["spec"].data["name"])
    rows, samples = _sample_and_score(
        model, data, DEMO_SOLVERS, nfes, n, f"{name}: the pretrained model, {n} samples per "
        f"sampler, {len(DEMO_SOLVERS)} solvers at NFE {', '.join(map(str, nfes))} and the "
        "adaptive reference", progress)
    figure = _figure_rows(rows, samples, data.test[:n], data.kind, nfes)
    seconds = time.perf_counter() - t0
    rec = model.info["meta"]
    header = (f"### {name}: pretrained ({rec['n_params']:,} parameters, {rec['step']} steps, "
              f"`{rec['command']}`), {n} samples per sampler, {seconds:.0f}s")
    return header + "\n\n" + quality_table(name, data.kind, rows), rows, figure


def _train_part(out: str, *, steps: int, n: int, nfe: int, progress: str):
    """Train the small checkerboard MLP from scratch, reload it, sample it with tAB3."""
    if progress != "none":
        print(f"[train: the small checkerboard MLP from scratch, {steps} steps]",
              file=sys.stderr, flush=True)
    data = load_dataset("checkerboard")
    config = TrainConfig(steps=steps, batch_size=default_batch_size(data), lr=2e-3,
                         warmup_steps=min(100, steps // 10), log_every=max(steps // 20, 1))
    ckpt = os.path.join(out, "ckpt_checkerboard")
    result = fit(default_spec(data), data, config, ckpt_dir=ckpt, progress=progress)
    model = load_model(ckpt)
    rows, samples = _sample_and_score(model, data, ("tab3",), (nfe,), n,
                                      "train: the reloaded checkpoint", progress)
    header = (f"### train: small checkerboard MLP from scratch, {model.info['step']} steps in "
              f"{result.seconds:.0f}s ({result.steps_per_s:.0f} steps/s), checkpoint "
              f"`{ckpt}`, reloaded and sampled")
    cells = [(f"trained here ({model.info['step']} steps): reference", samples["reference"],
              _caption(rows[0], "points")),
             (f"trained here: tab3 (log_snr), NFE {nfe}", samples[f"tab3, NFE {nfe}"],
              _caption(rows[1], "points"))]
    return header + "\n\n" + quality_table("checkerboard (trained here)", "points", rows), cells


def run_demo(out: str, *, nfes=(5, 10), n_digits: int = 1000, n_points: int = 4000,
             train_steps: int = 8000, progress: str = "auto") -> str:
    """Sample the shipped models with :data:`DEMO_SOLVERS`, train one from scratch, write
    the figures and a markdown report to ``out``.

    Args:
      out: output directory (created; a rerun resumes the training checkpoint in it).
      nfes: model evaluations of each sampler (an int or a sequence, each >= 3); one figure
        row each.
      n_digits: digit samples per sampler (>= 2).
      n_points: checkerboard samples per sampler (>= 2).
      train_steps: training steps of the from-scratch model (>= 1).
      progress: progress display (see :func:`~deis_jax.training.fit`).

    Returns:
      The markdown report, also written to ``out/quality.md``.
    """
    nfes = tuple(check_int("nfes", k, minimum=3) for k in np.atleast_1d(nfes).tolist())
    if not nfes:
        raise ValueError("nfes must name at least one NFE, got nfes=()")
    check_int("n_digits", n_digits, minimum=2)
    check_int("n_points", n_points, minimum=2)
    check_int("train_steps", train_steps, minimum=1)
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    digits, digit_rows, digit_figure = _pretrained_part("digits", n_digits, nfes, progress)
    save_panel_table(os.path.join(out, "digits.png"), digit_figure)
    board, board_rows, board_figure = _pretrained_part("checkerboard", n_points, nfes,
                                                       progress)
    trained, cells = _train_part(out, steps=train_steps, n=n_points, nfe=max(nfes),
                                 progress=progress)
    save_panel_table(os.path.join(out, "checkerboard.png"), board_figure + [cells])
    bars = _check_bars({"digits": digit_rows, "checkerboard": board_rows})
    report = "\n\n".join([
        f"## deis-jax demo (NFE {', '.join(map(str, nfes))})",
        "Quality bars:\n" + "\n".join(bars) if bars else "Quality bars: none applies to "
        "these NFEs",
        digits, board, trained,
        f"figures: {os.path.join(out, 'digits.png')}, {os.path.join(out, 'checkerboard.png')}"
        f"\ntotal time: {time.perf_counter() - t_start:.0f}s\n"])
    with atomic_write(os.path.join(out, "quality.md")) as f:
        f.write(report)
    return report
