"""Train flow-matching models on checkerboard and digits and sample them at NFE 10 with
Euler in t and with our solvers.

The built-in models of ``benchmarks/training.py`` (checkerboard: the base MLP; digits: the
U-Net, ``--digits-size``) trained with the conditional flow-matching loss
(``default_spec(data, "flow")``: ``schedules.flow()``, ``loss="flow_matching"``, uniform
times; the network predicts the velocity ``eps - x0``). Samples from the same ``x_T`` as the
reference (the adaptive Tsit5 solve at tolerance 1e-5, ``evaluate.reference_samples``) are
scored as in the training benchmark (``evaluate.score_samples``: energy distance to held-out
points, averaged over ``--seeds`` sets; for digits the Frechet distance in the shipped
classifier's features and the fraction recognised). Heun makes ``2N - 1`` calls, so it runs
at NFE 9 and 11.

Writes ``results/flow_training.md``::

    python benchmarks/flow_training.py [--work DIR] [--cb-steps N] [--digits-steps N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from deis_jax.evaluate import draw_samples, reference_samples, score_samples
from deis_jax.training import TrainConfig, default_spec, fit, load_dataset, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
RUNS = (  # (solver, grid, NFE)
    ("euler", "uniform", 10), ("euler", "shifted", 10),
    ("heun", "uniform", 9), ("heun", "shifted", 9), ("heun", "uniform", 11),
    ("ddim", "log_snr", 10), ("tab3", "uniform", 10), ("tab3", "log_snr", 10),
    ("dpmpp_3m", "log_snr", 10), ("dpmpp_3m", "shifted", 10),
    ("unipc3", "uniform", 10), ("unipc3", "shifted", 10), ("unipc3", "log_snr", 10),
)


def evaluate(name: str, steps: int, size: str, n: int, seeds: int, work: str) -> list[str]:
    """Train (or resume) one model and return its report section."""
    data = load_dataset(name)
    spec = default_spec(data, "flow", size=size)
    batch = 512 if data.kind == "points" else 128
    config = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, warmup_steps=200,
                         log_every=max(steps // 10, 1), ckpt_every=1000, keep=2)
    t0 = time.perf_counter()
    result = fit(spec, data, config, ckpt_dir=os.path.join(work, name), progress="log")
    train_s = time.perf_counter() - t0
    model = load_model(os.path.join(work, name))
    ref_scores, ref_label = [], ""
    scores = {run: [] for run in RUNS}
    for seed in range(seeds):
        ref, ref_label = reference_samples(model, n, seed=seed)
        ref_scores.append(score_samples(ref, data))
        for solver, grid, nfe in RUNS:
            x = draw_samples(model, n, solver=solver, nfe=nfe, seed=seed, grid=grid)
            scores[(solver, grid, nfe)].append(score_samples(x, data))

    def mean(vals):
        metric = float(np.mean([v[0] for v in vals]))
        rec = None if vals[0][1] is None else float(np.mean([v[1] for v in vals]))
        return metric, rec

    ref, ref_rec = mean(ref_scores)
    images = data.kind == "images"
    metric = "Frechet distance (classifier features)" if images else "energy distance"
    lines = [
        f"## {name}", "",
        f"Model: `{spec.model}`, {int(result.state.step)} steps of batch {batch} "
        f"({train_s:.0f} s wall incl. compile); final held-out loss (EMA) "
        f"{result.history[-1]['test_loss']:.4f}. Mean over {seeds} set(s) of {n} samples.", "",
        f"| sampler | grid | NFE | {metric} | / reference |" + (" recognised |" if images
                                                                else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if images else ""),
        f"| reference ({ref_label}) | - | - | {ref:.4g} | 1.00 |"
        + (f" {100 * ref_rec:.1f}% |" if images else ""),
    ]
    for (solver, grid, nfe), vals in scores.items():
        v, rec = mean(vals)
        lines.append(f"| {solver} | {grid} | {nfe} | {v:.4g} | {v / ref:.2f} |"
                     + (f" {100 * rec:.1f}% |" if images else ""))
    if not images:
        floor = score_samples(data.train[:n], data)[0]
        lines += ["", f"Training points against held-out points score {floor:.2g}: the noise "
                  "floor of the estimator."]
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/deis_jax_flow_bench")
    parser.add_argument("--cb-steps", type=int, default=5000)
    parser.add_argument("--digits-steps", type=int, default=2000, help="0 skips the digits")
    parser.add_argument("--digits-size", default="small", choices=("small", "base"))
    parser.add_argument("--n-cb", type=int, default=4000)
    parser.add_argument("--n-digits", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="sample sets (checkerboard)")
    args = parser.parse_args(argv)
    lines = ["# Flow matching: Euler in t against our solvers on trained models", "",
             "Generated by `python benchmarks/flow_training.py`: `loss='flow_matching'` "
             "(uniform times) on `schedules.flow()`, sampled with `prediction='velocity'`; "
             "lower is better.", ""]
    lines += evaluate("checkerboard", args.cb_steps, "base", args.n_cb, args.seeds, args.work)
    if args.digits_steps:
        lines += evaluate("digits", args.digits_steps, args.digits_size, args.n_digits, 1,
                          args.work)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "flow_training.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
