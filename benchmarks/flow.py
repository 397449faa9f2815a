"""Every deterministic solver on the rectified-flow schedule, against Euler in t.

The two accuracy-benchmark problems (a 2-d ring of 8 sharp Gaussians, std 0.05, 1,000
samples; a 64-d 10-mode mixture, 500 samples) under ``schedules.flow()`` (``alpha = 1 - t``,
``sigma = t``), sampled from the exact *velocity* (``prediction="velocity"``, what a
flow-matching network predicts) by every registered deterministic solver on five grids --
uniform in ``t``, SD3-shifted (``"shifted"``, shift 3), uniform in log-SNR, EDM's rho^(1/7)
and quadratic -- at NFE 5-50, in float64, against a float64 adaptive solve of the same
probability-flow ODE from the same ``x_T`` (``testing.ode_ground_truth``, rtol = atol =
1e-10, checked against 5e-11). Per cell: RMSE, mode flips (samples ending nearest another
component than their ground truth) and the RMSE over samples that did not flip. The baseline is ``euler`` on the uniform grid: Euler in t,
``x <- x + (t_next - t) u(x, t)``, what flow users run (rectified flow; SD3's
``FlowMatchEulerDiscreteScheduler`` is the same on the shifted grid).

Writes ``results/flow.md`` and ``results/flow.json``::

    python benchmarks/flow.py            # ~10 min on 2 CPU cores
    python benchmarks/flow.py --quick    # a few solvers, fewer NFEs
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from deis_jax import as_model, get_solver, make_plan, schedules, solver_names, testing  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))  # the shared sweep helper lives with the tests
from sweep_helpers import sweep  # noqa: E402

RESULTS = ROOT / "results"
NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
GRIDS = ("uniform", "shifted", "log_snr", "edm", "quadratic")
BASELINE = ("euler", "uniform")


def problems(quick: bool):
    """(name, mixture, batch), as in ``benchmarks/accuracy.py``."""
    out = [("ring2d", testing.ring_mixture(8, std=0.05), 1000),
           ("gmm64", testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1), 500)]
    return [(n, g, b // 4) for n, g, b in out] if quick else out


def plans(sched, name, nfes):
    """``{nfe: {grid: Plan}}`` for the NFEs the solver can make exactly (DPM-Solver-fast: its
    plan for each NFE), on every grid of :data:`GRIDS`."""
    out = {}
    for nfe in nfes:
        try:
            out[nfe] = {grid: make_plan(sched, name, nfe=nfe, grid=grid) for grid in GRIDS}
        except ValueError:
            continue
    return out


def run(quick: bool):
    sched = schedules.flow()
    names = sorted(n for n in solver_names() if not get_solver(n).stochastic)
    nfes = NFES
    if quick:
        names = ["euler", "heun", "ddim", "tab3", "dpmpp_3m", "unipc3"]
        nfes = (5, 10, 20)
    records, gt_checks = [], {}
    for pname, gmm, batch in problems(quick):
        x_T = sched.prior_sample(jax.random.key(0), (batch, gmm.dim))
        t0 = time.perf_counter()
        gt, steps = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
        half, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min,
                                           rtol=5e-11, atol=5e-11)
        gt_checks[pname] = {"rmse_vs_half_tolerance": float(testing.rmse(gt, half)),
                            "max_steps": int(steps.max()),
                            "seconds": time.perf_counter() - t0}
        model = as_model(gmm.velocity_fn(sched), sched, prediction="velocity")
        for name in names:
            t1 = time.perf_counter()
            by_solver = {}  # one compiled sweep per step plan (DPM-Solver-fast: per NFE)
            for nfe, by_grid in plans(sched, name, nfes).items():
                solver = by_grid[GRIDS[0]].solver
                by_solver.setdefault(solver.final_steps, (solver, []))[1].append((nfe, by_grid))
            for solver, cells in by_solver.values():
                runs = [(nfe, grid) for nfe, _ in cells for grid in GRIDS]
                grids = [by_grid[grid].ts for _, by_grid in cells for grid in GRIDS]
                xs = np.asarray(sweep(solver, model, x_T, grids))
                for (nfe, grid), x in zip(runs, xs):
                    finite = bool(np.all(np.isfinite(x)))
                    flips = np.asarray(testing.mode_flips(gmm, x, gt)) if finite else None
                    kept = np.asarray(testing.rmse(x, gt, axis=-1))[~flips] if finite else []
                    records.append({
                        "problem": pname, "solver": name, "grid": grid, "nfe": nfe,
                        "rmse": float(testing.rmse(x, gt)) if finite else float("inf"),
                        "flips": int(flips.sum()) if finite else batch,
                        "rmse_no_flip": float(np.sqrt(np.mean(kept**2))) if len(kept)
                        else float("inf"),
                    })
            print(f"{pname} {name}: {time.perf_counter() - t1:.1f} s", flush=True)
    return records, gt_checks, nfes


def _fmt(v):
    return "inf" if not np.isfinite(v) else f"{v:.2e}"


def headline(records, nfes):
    """Per problem and NFE: the best (solver, grid), the baseline and their ratio."""
    out = {}
    for prob in sorted({r["problem"] for r in records}):
        rows = [r for r in records if r["problem"] == prob]
        for n in nfes:
            cand = sorted((r for r in rows if r["nfe"] == n), key=lambda r: r["rmse"])
            base = next((r for r in cand if (r["solver"], r["grid"]) == BASELINE), None)
            if not cand:
                continue
            best = cand[0]
            out[(prob, n)] = (best, base)
    return out


def write_markdown(records, gt_checks, nfes, path):
    heads = headline(records, nfes)
    lines = ["# Flow matching: every deterministic solver on the rectified-flow schedule", "",
             "`schedules.flow()` (alpha = 1 - t, sigma = t, t in [1e-3, 0.999]); the exact "
             "mixture velocity as the model (`prediction=\"velocity\"`); float64 solvers; RMSE "
             "against a float64 adaptive solve from the same x_T. Baseline: `euler` on the "
             "uniform grid (Euler in t, what flow-matching users run). Generated by "
             "`python benchmarks/flow.py`.", "",
             "Ground truth (RMSE between tolerance 1e-10 and 5e-11 solutions):", ""]
    for k, v in gt_checks.items():
        lines.append(f"- {k}: {v['rmse_vs_half_tolerance']:.1e} (max {v['max_steps']} "
                     "adaptive steps)")
    lines.append("")
    for prob in sorted({r["problem"] for r in records}):
        lines += [f"## {prob}: most accurate solver + grid per NFE, against Euler in t", "",
                  "| NFE | best solver | grid | RMSE | flips | RMSE no-flip | Euler (uniform t) "
                  "RMSE | flips | RMSE no-flip | Euler / best |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n in nfes:
            if (prob, n) not in heads:
                continue
            best, base = heads[(prob, n)]
            lines.append(f"| {n} | {best['solver']} | {best['grid']} | {_fmt(best['rmse'])} | "
                         f"{best['flips']} | {_fmt(best['rmse_no_flip'])} | "
                         f"{_fmt(base['rmse'])} | {base['flips']} | "
                         f"{_fmt(base['rmse_no_flip'])} | {base['rmse'] / best['rmse']:.1f} |")
        if (prob, 10) in heads:
            best, base = heads[(prob, 10)]
            lines += ["", f"NFE 10: RMSE(best: {best['solver']} / {best['grid']}) / "
                      f"RMSE(Euler, uniform t) = {best['rmse'] / base['rmse']:.3g}."]
        lines += ["", f"### {prob}: best solver per grid (RMSE)", "",
                  "| grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        rows = [r for r in records if r["problem"] == prob]
        for grid in GRIDS:
            cells = []
            for n in nfes:
                cand = [r for r in rows if r["grid"] == grid and r["nfe"] == n]
                b = min(cand, key=lambda r: r["rmse"]) if cand else None
                cells.append(f"{_fmt(b['rmse'])} ({b['solver']})" if b else "—")
            lines.append(f"| {grid} | " + " | ".join(cells) + " |")
        lines.append("")
    for prob in sorted({r["problem"] for r in records}):
        rows = [r for r in records if r["problem"] == prob]
        lines += [f"## {prob}: RMSE of every solver x grid", "",
                  "| solver | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|---|" + "---|" * len(nfes)]
        by = {}
        for r in rows:
            by.setdefault((r["solver"], r["grid"]), {})[r["nfe"]] = r["rmse"]
        for (solver, grid), vals in sorted(by.items()):
            lines.append(f"| {solver} | {grid} | " + " | ".join(
                _fmt(vals[n]) if n in vals else "—" for n in nfes) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-size run")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, gt_checks, nfes = run(args.quick)
    stem = "flow_quick" if args.quick else "flow"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"records": records, "ground_truth": gt_checks}, indent=1))
    write_markdown(records, gt_checks, nfes, args.out / f"{stem}.md")
    print(f"wrote {args.out / (stem + '.md')} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
