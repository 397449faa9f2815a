"""Accuracy of every deterministic solver against a float64 ground truth.

For each problem (a 2-d ring of 8 sharp Gaussians, std 0.05, and a 64-d mixture) under
VP-linear and VE, every registered deterministic solver runs on every grid at NFE
5, 6, 8, 10, 12, 15, 20, 25, 50 from the same ``x_T`` as a tight-tolerance float64 solve of
the same probability-flow ODE (``deis_jax.testing.ode_ground_truth``, rtol = atol = 1e-10,
checked against 5e-11). Solvers run in float64 here so the table shows discretisation error,
not float32 round-off (float32 is compared separately in the tests).

Reported per cell: RMSE over all samples, the number of *mode flips* (samples ending nearest
another mixture component than their ground-truth endpoint) and the RMSE over samples that
did not flip. Writes ``results/accuracy.md``, ``results/accuracy.json`` and
``results/accuracy.png``.

    python benchmarks/accuracy.py            # full run (~10-20 min on 2 CPU cores)
    python benchmarks/accuracy.py --quick    # 2 problems x 2 grids x 4 NFE, a few solvers
    python benchmarks/accuracy.py --solvers unipc3,unipc3_bh1   # re-measure some solvers,
                                             # replacing their rows in results/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from deis_jax import (as_model, get_solver, make_plan, sample, schedules,  # noqa: E402
                      solver_names, testing)

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
GRIDS = ("quadratic", "log_snr", "edm", "uniform")
RESULTS = pathlib.Path(__file__).parent / "results"


def problems(quick: bool):
    """(name, mixture, batch) for the benchmark problems."""
    out = [("ring2d", testing.ring_mixture(8, std=0.05), 1000)]
    out.append(("gmm64", testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1), 500))
    if quick:
        out = [(n, g, b // 4) for n, g, b in out]
    return out


def deterministic_solvers():
    return [n for n in solver_names() if not get_solver(n).stochastic]


def reachable(sched, name, nfe, grid):
    """The :class:`deis_jax.Plan` making exactly ``nfe`` calls on ``grid`` (DPM-Solver-fast:
    its plan for ``nfe``), or None."""
    try:
        return make_plan(sched, name, nfe=nfe, grid=grid)
    except ValueError:
        return None


@jax.jit
def _run(model, x, plan):
    """One executable per solver plan and grid length: the model, ``x_T`` and the plan's
    grid and coefficients are data."""
    return sample(model, x, plan, check_finite=False)


def run(quick: bool = False, only=None):
    sched_makers = {"vp_linear": schedules.vp_linear, "ve": schedules.ve}
    names = list(only) if only else deterministic_solvers()
    nfes, grids = NFES, GRIDS
    if quick:
        names = [n for n in ("ddim", "tab3", "ipndm", "dpmpp_3m", "unipc3") if n in names]
        nfes, grids = (5, 10, 20, 50), ("quadratic", "log_snr")
    records = []
    gt_checks = {}
    for pname, gmm, batch in problems(quick):
        for sname, make in sched_makers.items():
            sched = make()
            x_T = sched.prior_sample(jax.random.key(0), (batch, gmm.dim))
            t0 = time.perf_counter()
            gt, steps = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
            gt_half, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min,
                                                  rtol=5e-11, atol=5e-11)
            gt_checks[f"{pname}/{sname}"] = {
                "rmse_vs_half_tolerance": float(testing.rmse(gt, gt_half)),
                "max_steps": int(steps.max()),
                "seconds": time.perf_counter() - t0,
            }
            model = as_model(gmm.eps_fn(sched), sched)
            for name in names:
                for nfe in nfes:
                    for grid in grids:
                        plan = reachable(sched, name, nfe, grid)
                        if plan is None:
                            continue
                        x = _run(model, x_T, plan)
                        flips = np.asarray(testing.mode_flips(gmm, x, gt))
                        err = np.asarray(testing.rmse(x, gt, axis=-1))
                        finite = bool(np.all(np.isfinite(np.asarray(x))))
                        records.append({
                            "problem": pname, "schedule": sname, "solver": name, "grid": grid,
                            "nfe": nfe,
                            "rmse": float(testing.rmse(x, gt)) if finite else float("inf"),
                            "flips": int(flips.sum()),
                            "rmse_no_flip": float(np.sqrt(np.mean(err[~flips] ** 2)))
                            if finite and (~flips).any() else float("inf"),
                        })
            gt_checks[f"{pname}/{sname}"]["float32"] = float32_check(gmm, sched, x_T, gt)
            print(f"done {pname}/{sname}", flush=True)
    return records, gt_checks, nfes, grids


def float32_check(gmm, sched, x_T, gt):
    """RMSE of tAB3 at NFE 10 run in float32 vs in float64, against the same ground truth."""
    err64 = float(testing.rmse(sample(as_model(gmm.eps_fn(sched), sched), x_T, solver="tab3",
                                      nfe=10), gt))
    gt_np, x_np = np.asarray(gt), np.asarray(x_T, np.float32)
    with jax.enable_x64(False):
        gmm32 = testing.GaussianMixture(*(jnp.asarray(np.asarray(a), jnp.float32) for a in gmm))
        sched32 = type(sched)(sched.family, {k: jnp.asarray(np.asarray(v), jnp.float32)
                                             for k, v in sched.params.items()},
                              sched.t_min, sched.t_max)
        x32 = sample(as_model(gmm32.eps_fn(sched32), sched32), jnp.asarray(x_np), solver="tab3",
                     nfe=10)
        assert x32.dtype == jnp.float32
        err32 = float(np.sqrt(np.mean((np.asarray(x32, np.float64) - gt_np) ** 2)))
    return {"rmse_float64": err64, "rmse_float32": err32}


def _fmt(v):
    return "inf" if not np.isfinite(v) else f"{v:.2e}"


def write_markdown(records, gt_checks, nfes, path):
    lines = ["# Accuracy against a float64 ground truth", "",
             "RMSE between each solver's output and a float64 adaptive solve of the same "
             "probability-flow ODE from the same x_T (deis_jax.testing.ode_ground_truth, "
             "rtol = atol = 1e-10). Solvers run in float64. Generated by "
             "`python benchmarks/accuracy.py`.", "",
             "Ground-truth checks (RMSE between tolerance 1e-10 and 5e-11 solutions):", ""]
    for k, v in gt_checks.items():
        lines.append(f"- {k}: {v['rmse_vs_half_tolerance']:.1e} "
                     f"(max {v['max_steps']} adaptive steps)")
    lines += ["", "Float32 vs float64 (tAB3-DEIS, NFE 10, quadratic grid, same x_T and ground "
              "truth):", ""]
    for k, v in gt_checks.items():
        f32 = v["float32"]
        lines.append(f"- {k}: RMSE float64 {f32['rmse_float64']:.4e}, float32 "
                     f"{f32['rmse_float32']:.4e} "
                     f"({100 * (f32['rmse_float32'] / f32['rmse_float64'] - 1):+.2f}%)")
    lines.append("")
    combos = sorted({(r["problem"], r["schedule"]) for r in records})
    for prob, sched in combos:
        rows = [r for r in records if r["problem"] == prob and r["schedule"] == sched]
        lines += _best_table(rows, nfes, f"{prob} / {sched}: most accurate solver + grid")
        lines += _ratio_lines(rows)
    for prob, sched in combos:
        rows = [r for r in records if r["problem"] == prob and r["schedule"] == sched]
        for key, title in (("rmse", "RMSE"), ("flips", "mode flips"),
                           ("rmse_no_flip", "RMSE over samples that did not flip")):
            lines += [f"## {prob} / {sched}: {title}", "",
                      "| solver | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)]
            by = {}
            for r in rows:
                by.setdefault((r["solver"], r["grid"]), {})[r["nfe"]] = r[key]
            for (solver, grid), vals in sorted(by.items()):
                cells = [("—" if n not in vals else
                          (str(vals[n]) if key == "flips" else _fmt(vals[n]))) for n in nfes]
                lines.append(f"| {solver} | {grid} | " + " | ".join(cells) + " |")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _best_table(rows, nfes, title):
    out = [f"## {title}", "", "| NFE | best solver | grid | RMSE | flips | runner-up | RMSE |",
           "|---|---|---|---|---|---|---|"]
    for n in nfes:
        cand = sorted((r for r in rows if r["nfe"] == n), key=lambda r: r["rmse"])
        if not cand:
            continue
        best = cand[0]
        second = next((r for r in cand[1:] if r["solver"] != best["solver"]), None)
        out.append(f"| {n} | {best['solver']} | {best['grid']} | {_fmt(best['rmse'])} | "
                   f"{best['flips']} | {second['solver'] + ' / ' + second['grid'] if second else ''}"
                   f" | {_fmt(second['rmse']) if second else ''} |")
    return out + [""]


def _ratio_lines(rows):
    out = []
    for grid in GRIDS:
        sel = {r["solver"]: r for r in rows if r["nfe"] == 10 and r["grid"] == grid}
        if "ddim" in sel and "tab3" in sel and sel["tab3"]["rmse"] > 0:
            d, t = sel["ddim"], sel["tab3"]
            out.append(f"- NFE 10, {grid} grid: RMSE(DDIM) / RMSE(tAB3-DEIS) = "
                       f"{d['rmse'] / t['rmse']:.2f} (all samples), "
                       f"{d['rmse_no_flip'] / t['rmse_no_flip']:.2f} (samples that did not "
                       f"flip; flips {d['flips']} vs {t['flips']})")
    return out + [""]


def plot(records, nfes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["problem"], r["schedule"]) for r in records})
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4.2), squeeze=False)
    show = ["euler", "ddim", "ipndm", "tab3", "rhoab3", "rho_rk4", "dpmpp_3m", "unipc3",
            "dpm_fast", "logrho3"]
    for ax, (prob, sched) in zip(axes[0], combos):
        for name in show:
            # Best grid per solver at NFE 10 (or the first available).
            rows = [r for r in records if r["problem"] == prob and r["schedule"] == sched
                    and r["solver"] == name]
            if not rows:
                continue
            grid = min(rows, key=lambda r: (r["nfe"] != 10, r["rmse"]))["grid"]
            pts = sorted((r["nfe"], r["rmse"]) for r in rows if r["grid"] == grid)
            ax.loglog(*zip(*pts), marker="o", ms=3, label=f"{name} ({grid})")
        ax.set_title(f"{prob} / {sched}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMSE vs float64 ground truth")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-size run")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
    parser.add_argument("--solvers", help="comma-separated solvers to re-measure; their rows "
                        "replace those in the existing JSON, the others are kept")
    args = parser.parse_args(argv)
    only = tuple(args.solvers.split(",")) if args.solvers else None
    valid = deterministic_solvers()
    if only and set(only) - set(valid):
        parser.error(f"unknown --solvers {sorted(set(only) - set(valid))}; valid: {valid}")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, gt_checks, nfes, _ = run(args.quick, only)
    stem = "accuracy_quick" if args.quick else "accuracy"
    if only:  # merge into the previous full run (same problems, x_T and ground truth)
        old = json.loads((args.out / f"{stem}.json").read_text())
        records = [r for r in old["records"] if r["solver"] not in only] + records
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"records": records, "ground_truth": gt_checks}, indent=1))
    write_markdown(records, gt_checks, nfes, args.out / f"{stem}.md")
    plot(records, nfes, args.out / f"{stem}.png")
    print(f"wrote {args.out / (stem + '.md')} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
