"""The ``deis-jax demo``: train small models, compare samplers at a low NFE, write a report.

It trains the built-in MLP on the 2-d checkerboard (and the U-Net on 8x8 digits while the
time budget allows), samples each with :data:`DEMO_SOLVERS` and with the adaptive ODE
reference from the same ``x_T``, and writes ``comparison.png`` and ``quality.md``.
"""

from __future__ import annotations

import os
import time

from deis_jax._checks import check_int
from deis_jax.evaluate import evaluate_solvers, quality_table
from deis_jax.plots import save_comparison
from deis_jax.training import (
    TrainConfig, default_batch_size, default_spec, fit, load_dataset, load_model)

__all__ = ["DEMO_SOLVERS", "run_demo"]

DEMO_SOLVERS = ("ddim", "tab3", "dpmpp_3m", "unipc3")
"""The samplers the demo and ``benchmarks/training.py`` compare."""


def _train_and_evaluate(name: str, steps: int, out: str, *, n: int, nfe: int,
                        max_seconds: float | None, progress: str) -> tuple[str, dict]:
    """Train (or resume) the built-in model of dataset ``name`` in ``out/ckpt_<name>``,
    evaluate :data:`DEMO_SOLVERS`; return the report section and the figure row."""
    data = load_dataset(name)
    config = TrainConfig(steps=steps, batch_size=default_batch_size(data), lr=2e-3,
                         warmup_steps=min(100, steps // 10), log_every=max(steps // 10, 1))
    ckpt = os.path.join(out, f"ckpt_{name}")
    result = fit(default_spec(data), data, config, ckpt_dir=ckpt, progress=progress,
                 max_seconds=max_seconds)
    n_eval = n if data.kind == "points" else min(n, 500)
    rows, samples = evaluate_solvers(load_model(ckpt), data, DEMO_SOLVERS, nfe=nfe, n=n_eval)
    header = (f"### {name}: {int(result.state.step)} training steps in {result.seconds:.0f}s "
              f"({result.steps_per_s:.1f} steps/s), {n_eval} samples per sampler")
    section = header + "\n\n" + quality_table(name, data.kind, rows)
    return section, {f"{name}: held-out data": data.test[:n_eval], **samples}


def run_demo(out: str, *, steps_2d: int, steps_digits: int, n: int, nfe: int,
             budget_s: float, progress: str = "auto") -> str:
    """Train, sample with :data:`DEMO_SOLVERS`, write a figure and a markdown report to ``out``.

    Digits are trained only if the checkerboard part used less than 45% of ``budget_s``; their
    training stops early (and the report says how far it got) at 55% of the budget, leaving
    the rest for sampling.

    Args:
      out: output directory (created); checkpoints go to ``out/ckpt_<dataset>`` and a rerun
        resumes them.
      steps_2d: checkerboard training steps (>= 1).
      steps_digits: digits training steps (0 skips the digits).
      n: samples per sampler (>= 2; at most 500 for digits).
      nfe: model evaluations of each sampler.
      budget_s: time budget in seconds (> 0).
      progress: training progress display (see :func:`~deis_jax.training.fit`).

    Returns:
      The markdown report, also written to ``out/quality.md``.
    """
    check_int("steps_2d", steps_2d, minimum=1)
    check_int("steps_digits", steps_digits, minimum=0)
    check_int("n", n, minimum=2)
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got budget_s={budget_s!r}")
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    sections, figure_rows = [], []
    plan = [("checkerboard", steps_2d)] + ([("digits", steps_digits)] if steps_digits else [])
    for name, steps in plan:
        elapsed = time.perf_counter() - t_start
        if name == "digits" and elapsed > 0.45 * budget_s:
            sections.append(f"digits skipped: {elapsed:.0f}s of the {budget_s:.0f}s budget "
                            "already used")
            continue
        max_seconds = None if name == "checkerboard" else 0.55 * budget_s - elapsed
        section, panels = _train_and_evaluate(name, steps, out, n=n, nfe=nfe,
                                              max_seconds=max_seconds, progress=progress)
        sections.append(section)
        figure_rows.append(panels)
    fig_path = os.path.join(out, "comparison.png")
    save_comparison(fig_path, figure_rows)
    report = (f"## deis-jax demo (NFE {nfe})\n\n" + "\n\n".join(sections)
              + f"\n\nfigure: {fig_path}\ntotal time: {time.perf_counter() - t_start:.0f}s\n")
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(report)
    return report
