"""Train the built-in models, sample them at NFE 10, and score the samples.

Writes ``benchmarks/results/training.md`` (+ PNGs) and the README images
``docs/images/digits.png`` and ``docs/images/checkerboard.png``.

* checkerboard (2-d): MLP, energy distance to held-out points;
* digits (8x8): U-Net, Frechet distance in the feature space of the shipped digit classifier
  and the fraction of samples it recognises as a digit with probability > 0.5;
* reference: the adaptive ODE solver (``deis_jax.adaptive.solve_ode``, tolerance 1e-5) from
  the same ``x_T``;
* training throughput (steps/s) of the demo's (small) and these (base) models.

Usage: ``python benchmarks/training.py [--work DIR] [--digits-steps N] [--cb-steps N]``.
Checkpoints go to ``--work`` (default ``/tmp/deis_jax_bench``); a rerun resumes them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from deis_jax.demo import DEMO_SOLVERS
from deis_jax.evaluate import draw_samples, evaluate_solvers, quality_table
from deis_jax.plots import save_image_grids, save_scatter
from deis_jax.training import (TrainConfig, default_spec, digit_quality, energy_distance, fit,
                               load_dataset, load_model)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
IMAGES = os.path.join(ROOT, "docs", "images")
BATCH = {"checkerboard": 512, "digits": 128}


def train(name: str, steps: int, work: str, size: str = "base"):
    data = load_dataset(name)
    spec = default_spec(data, size=size)
    config = TrainConfig(steps=steps, batch_size=BATCH[name], lr=2e-3, warmup_steps=200,
                         log_every=max(steps // 20, 1), ckpt_every=1000, keep=2)
    result = fit(spec, data, config, ckpt_dir=os.path.join(work, name), progress="log")
    return data, result


def throughput(name: str, size: str) -> float:
    """Steps/s of a fresh run (compilation excluded)."""
    data = load_dataset(name)
    steps = 300 if data.kind == "points" else 60
    config = TrainConfig(steps=steps, batch_size=BATCH[name], log_every=steps)
    return fit(default_spec(data, size=size), data, config, progress="none").steps_per_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/deis_jax_bench")
    parser.add_argument("--digits-steps", type=int, default=6000)
    parser.add_argument("--cb-steps", type=int, default=5000)
    parser.add_argument("--n-cb", type=int, default=4000)
    parser.add_argument("--n-digits", type=int, default=1000)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3,
                        help="independent sample sets (2-d data)")
    parser.add_argument("--note", default="", help="text appended to the report")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    os.makedirs(IMAGES, exist_ok=True)
    solvers = list(DEMO_SOLVERS)
    sections = []

    for name, steps, n in (("checkerboard", args.cb_steps, args.n_cb),
                           ("digits", args.digits_steps, args.n_digits)):
        t0 = time.perf_counter()
        data, result = train(name, steps, args.work)
        train_s = time.perf_counter() - t0
        loaded = load_model(os.path.join(args.work, name))
        seeds = args.seeds if data.kind == "points" else 1
        rows, samples = evaluate_solvers(loaded, data, solvers, nfe=args.nfe, n=n)
        for seed in range(1, seeds):  # average the metrics over independent x_T
            more, _ = evaluate_solvers(loaded, data, solvers, nfe=args.nfe, n=n, seed=seed)
            for r, m in zip(rows, more):
                r["metric"] += m["metric"]
                r["recognised"] = None if m["recognised"] is None else (
                    r["recognised"] + m["recognised"])
        for r in rows:
            r["metric"] /= seeds
            r["recognised"] = None if r["recognised"] is None else r["recognised"] / seeds
            r["ratio"] = r["metric"] / rows[0]["metric"]
        grid_note = ""
        if data.kind == "points":
            eds = [energy_distance(draw_samples(loaded, n, solver="tab3", nfe=args.nfe,
                                                seed=s, grid="log_snr"), data.test[:n])
                   for s in range(seeds)]
            grid_note = (f"tab3 at NFE {args.nfe} on a uniform-log-SNR grid instead of the "
                         f"default quadratic one: energy distance {np.mean(eds):.4g} "
                         f"({np.mean(eds) / rows[0]['metric']:.2f} x reference).\n\n")
        test = data.test[:n]
        if data.kind == "images":
            real = digit_quality(test, data.train)
            floor = (f"Held-out real digits score Frechet distance {real.frechet:.3g} "
                     f"(test vs train split) and {100 * real.recognised:.1f}% recognised.")
            save_image_grids(os.path.join(IMAGES, "digits.png"),
                             {f"tab3, NFE {args.nfe}": samples[f"tab3, NFE {args.nfe}"]},
                             cols=10)
            panels = {"held-out data": test, **samples}
            save_image_grids(os.path.join(RESULTS, "training_digits.png"), panels)
        else:
            floor = ("Training points against held-out points (same size) score energy "
                     f"distance {energy_distance(data.train[:n], test):.2g}: the noise floor "
                     "of the estimator.")
            keep = ["reference", f"ddim, NFE {args.nfe}", f"tab3, NFE {args.nfe}"]
            save_scatter(os.path.join(IMAGES, "checkerboard.png"),
                         {"held-out data": test,
                          **{k: samples[k] for k in keep if k in samples}})
            save_scatter(os.path.join(RESULTS, "training_checkerboard.png"),
                         {"held-out data": test, **samples})
        tab3 = next(r for r in rows if r["solver"] == "tab3")
        verdict = f"tab3 / reference = {tab3['ratio']:.2f} (target <= 1.5)"
        if data.kind == "images":
            verdict += f"; tab3 recognised {100 * tab3['recognised']:.1f}% (target >= 90%)"
        model = loaded.info["spec"].model
        meta = loaded.info["meta"]
        if "train_seconds" in meta:
            ran = f"{meta['train_seconds']:.0f}s of training wall time in all"
        else:
            ran = "loaded from a finished checkpoint in the work directory"
        sections.append(
            f"### {name}\n\nModel: `{model}`; {int(result.state.step)} steps of batch "
            f"{BATCH[name]} ({ran}; wall {train_s:.0f}s incl. compile and eval). "
            f"Final held-out loss (EMA): {result.history[-1]['test_loss']:.4f}."
            f" Metrics are means over {seeds} independent set(s) of {n} samples."
            f"\n\n{quality_table(name, data.kind, rows)}\n\n{floor}\n\n{grid_note}"
            f"{verdict}.\n"
        )
        print(sections[-1], flush=True)

    rates = []
    for name in ("checkerboard", "digits"):
        for size in ("small", "base"):
            model = default_spec(load_dataset(name), size=size).model
            rates.append(f"| {name} | {size} (`{model}`) | {BATCH[name]} | "
                         f"{throughput(name, size):.1f} |")
    report = (
        "# Training benchmark\n\n"
        f"Generated by `benchmarks/training.py` on {platform.machine()} "
        f"({jax.default_backend()}, {os.cpu_count()} cores shared with other jobs, so times "
        "are pessimistic), solvers at NFE "
        f"{args.nfe}: {', '.join(solvers)}. Metrics compare samples with held-out data; "
        "lower is better. The reference sampler starts from the same `x_T`.\n\n"
        + "\n".join(sections)
        + "\n### Training throughput\n\n| data | model | batch | steps/s |\n|---|---|---:|---:|\n"
        + "\n".join(rates)
        + (f"\n\n{args.note}" if args.note else "")
        + "\n\n![checkerboard](training_checkerboard.png)\n\n![digits](training_digits.png)\n"
    )
    with open(os.path.join(RESULTS, "training.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
