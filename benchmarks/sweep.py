"""A vmapped sweep in one compiled call against the same sweep as separate calls.

Two sweeps on the shipped checkerboard MLP (``deis_jax.pretrained.load("checkerboard")``, a
small model: 480k parameters), with 64 samples per value (where per-call overhead counts) and
2,048 (where the arithmetic does), the same ``x_T`` for every value:

1. *EDM grid exponent*: 32 values of rho in [1, 16], tAB3 at NFE 10; result curve: RMSE
   against the adaptive reference solve (Tsit5, tol 1e-6) from the same ``x_T``.
2. *Stochastic DDIM eta*: 16 values in [0, 1] at NFE 20; result curve: the energy distance to
   held-out data and the fraction of samples in the board's squares.

Each sweep runs three ways, all jitted: ``jax.vmap`` over the values (one call); a loop of
separate calls of one executable that takes the value as a traced argument (compiled once);
a loop that recompiles for every value (the value a Python constant: what a sweep with the
setting as a static argument costs). Times are medians of ``--repeats`` runs after the
compilation, which is timed separately (first call minus a warm call). Run one at a time:
2 cores, nothing else running, or the ratios mean nothing.

    python benchmarks/sweep.py                # ~4 min on 2 cores; writes results/sweep.md/png
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from deis_jax import adaptive, pretrained, sample, solvers, testing, timesteps
from deis_jax.training import energy_distance, in_squares, load_dataset

RESULTS = pathlib.Path(__file__).parent / "results"
SIZES = (64, 2048)  # samples per value: dispatch-bound and compute-bound
RHOS = jnp.linspace(1.0, 16.0, 32)
ETAS = jnp.linspace(0.0, 1.0, 16)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def _three_ways(one, values, repeats: int) -> dict:
    """Time ``one(value) -> result`` over ``values``: vmapped, looped over one traced
    executable, and recompiled per value. Returns the seconds and the vmapped results."""
    vmapped = jax.jit(jax.vmap(one))
    out, first = _timed(vmapped, values)
    runs = [_timed(vmapped, values)[1] for _ in range(repeats)]
    traced = jax.jit(one)
    _timed(traced, values[0])  # compile once, outside the timed loops

    def loop():
        return [traced(v) for v in values]

    loop_runs = [_timed(loop)[1] for _ in range(repeats)]
    t0 = time.perf_counter()
    for v in np.asarray(values):  # a new Python constant each time: a new compilation
        jax.block_until_ready(jax.jit(lambda v=float(v): one(jnp.asarray(v, values.dtype)))())
    recompile = time.perf_counter() - t0
    vmap_s, loop_s = statistics.median(runs), statistics.median(loop_runs)
    return {"n_values": len(values), "vmap_s": vmap_s, "vmap_compile_s": first - vmap_s,
            "loop_s": loop_s,
            "recompile_s": recompile, "loop_over_vmap": loop_s / vmap_s,
            "recompile_over_vmap": recompile / (first if first > 0 else vmap_s),
            "results": jax.tree.map(np.asarray, out)}


def _sweeps(model, n: int, repeats: int, held_out) -> tuple[dict, dict]:
    """Both sweeps at ``n`` samples per value: ``({name: timings}, curves)``."""
    sched, params = model.schedule, model.params
    x_T = sched.prior_sample(jax.random.key(0), (n, 2))
    ref = adaptive.solve_ode(model.model_fn, sched, x_T, params=params, rtol=1e-6,
                             atol=1e-6, prediction=model.prediction).x

    def rho_run(rho):
        ts = timesteps(sched, 10, "edm", rho=rho)
        x = sample(model.model_fn, sched, x_T, params=params, solver="tab3", ts=ts,
                   prediction=model.prediction)
        return testing.rmse(x, ref)

    def eta_run(eta):
        return sample(model.model_fn, sched, x_T, params=params,
                      solver=solvers.stochastic_ddim(eta), nfe=20,
                      prediction=model.prediction, key=jax.random.key(1))

    rho = _three_ways(rho_run, RHOS, repeats)
    eta = _three_ways(eta_run, ETAS, repeats)
    curves = {"rmse": rho.pop("results"),
              "energy": [energy_distance(x, held_out) for x in eta["results"]],
              "squares": [in_squares(x) for x in eta.pop("results")]}
    jax.clear_caches()
    return {f"EDM rho, tAB3 NFE 10 ({len(RHOS)} values), {n} samples": rho,
            f"stochastic DDIM eta, NFE 20 ({len(ETAS)} values), {n} samples": eta}, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = pretrained.load("checkerboard")
    held_out = load_dataset("checkerboard").test[:max(SIZES)]
    sweeps = {}
    for n in SIZES:
        timings, curves = _sweeps(model, n, args.repeats, held_out)
        sweeps.update(timings)
    rhos, etas = RHOS, ETAS
    rmse, energy, squares = curves["rmse"], curves["energy"], curves["squares"]
    lines = [
        "# Sweeps with vmap: one compiled call against separate calls",
        "",
        f"Generated by `benchmarks/sweep.py` on {platform.machine()} "
        f"({jax.default_backend()}, 2 cores); the shipped checkerboard MLP, {SIZES} samples "
        f"per value (curves from {max(SIZES)}); medians of {args.repeats} runs after "
        "compilation. *loop*: one executable with the value as a traced argument, called once per value; *recompile*: a new "
        "compilation per value (the value a constant), compile time included, against the "
        "vmapped call's first run (compile included).",
        "",
        "| sweep | vmap (s) | vmap compile (s) | loop (s) | loop / vmap | recompile per value "
        "(s, total) | recompile / vmap incl. compile |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sweeps.items():
        lines.append(f"| {name} | {r['vmap_s']:.3f} | {r['vmap_compile_s']:.2f} | "
                     f"{r['loop_s']:.3f} | {r['loop_over_vmap']:.1f} | {r['recompile_s']:.1f} "
                     f"| {r['recompile_over_vmap']:.1f} |")
    best = int(np.argmin(rmse))
    lines += ["", f"EDM rho: RMSE against the adaptive reference from {float(rmse.max()):.3g} "
              f"down to {float(rmse[best]):.3g} at rho = {float(rhos[best]):.2f} "
              f"(rho = 7: {float(np.interp(7.0, np.asarray(rhos), rmse)):.3g}, "
              "interpolated).",
              f"Stochastic DDIM: energy distance {energy[0]:.3g} at eta = 0, "
              f"{energy[-1]:.3g} at eta = 1; in the squares {100 * squares[0]:.1f}% -> "
              f"{100 * squares[-1]:.1f}%.", "", "![sweeps](sweep.png)", ""]
    (RESULTS / "sweep.md").write_text("\n".join(lines))

    fig = Figure(figsize=(12, 3.8))
    ax = fig.subplots(1, 3)
    ax[0].semilogy(np.asarray(rhos), rmse, marker="o", ms=3)
    ax[0].set(xlabel="EDM exponent rho", ylabel="RMSE vs adaptive reference",
              title="tAB3, NFE 10")
    ax[1].plot(np.asarray(etas), energy, marker="o", ms=3)
    ax[1].set(xlabel="eta", ylabel="energy distance to held-out data",
              title="stochastic DDIM, NFE 20")
    ax[2].plot(np.asarray(etas), 100 * np.asarray(squares), marker="o", ms=3)
    ax[2].set(xlabel="eta", ylabel="% in the squares", title="stochastic DDIM, NFE 20")
    for a in ax:
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "sweep.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
