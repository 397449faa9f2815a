"""No-cliff sweep: does any multistep solver get worse when it is given more steps?

For every multistep solver, on the ``log_snr``, ``quadratic`` and ``edm`` grids, the two
benchmark problems (2-d ring of 8 Gaussians, std 0.05; a 64-d 10-mode mixture) under VP-linear
and VE, the RMSE against a float64 ground truth is computed at every NFE from 5 to 50 (float64
solvers, so only discretisation error shows). A *cliff* is ``RMSE(n + 2) > 1.10 RMSE(n)``.
Writes ``results/cliffs.md`` (worst ratio per solver x grid x problem, every cliff listed) and
``results/cliffs.json``. ``dpmpp_3m_reference`` is 3M with the reference implementation's
final-step rule (lower order on the last two steps only below 15 steps), for comparison.

    python benchmarks/cliffs.py            # full sweep (~1 h on 2 busy CPU cores)
    python benchmarks/cliffs.py --quick    # 3 solvers, 1 problem

Results are appended to the JSON after every solver and the run resumes from it (delete
``results/cliffs.json`` to start over); the markdown is rewritten after every solver too.
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

from deis_jax import get_solver, schedules, testing, timesteps  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))  # the shared sweep helper lives with the tests
from sweep_helpers import reference_3m, sweep  # noqa: E402

RESULTS = ROOT / "results"
NFES = tuple(range(5, 51))
GRIDS = ("log_snr", "quadratic", "edm")
SOLVERS = ("dpmpp_3m", "dpmpp_2m", "unipc3", "logrho3", "tab3", "rhoab3", "ipndm",
           "dpmpp_3m_reference", "tab1", "tab2", "rhoab1", "rhoab2", "logrho1", "logrho2",
           "unipc1", "unipc2", "unipc3_bh1", "unipc3_eps")
RATIO = 1.10


def problems(quick):
    out = [("ring2d", testing.ring_mixture(8, std=0.05), 200),
           ("gmm64", testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1), 100)]
    return out[:1] if quick else out


def run(quick=False):
    solvers = ("tab1", "dpmpp_3m", "dpmpp_3m_reference") if quick else SOLVERS
    sched_makers = {"vp_linear": schedules.vp_linear, "ve": schedules.ve}
    path = RESULTS / f"cliffs{'_quick' if quick else ''}.json"
    records = json.loads(path.read_text()) if path.exists() else []
    blocks = []
    for pname, gmm, batch in problems(quick):
        for sname, make in sched_makers.items():
            sched = make()
            x_T = sched.prior_sample(jax.random.key(0), (batch, gmm.dim))
            gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
            blocks.append((pname, sname, gmm, sched, x_T, np.asarray(gt)))
    # Solver-major order: the most important solvers get every block first.
    for name in solvers:
        solver = reference_3m() if name == "dpmpp_3m_reference" else get_solver(name)
        for pname, sname, gmm, sched, x_T, gt in blocks:
            if any((r["problem"], r["schedule"], r["solver"]) == (pname, sname, name)
                   for r in records):
                continue
            t0 = time.perf_counter()
            grids = [timesteps(sched, solver.steps_for_nfe(n), g) for g in GRIDS for n in NFES]
            xs = np.asarray(sweep(solver, gmm.eps_fn(sched), sched, x_T, grids))
            err = np.sqrt(np.mean((xs - gt[None]) ** 2, axis=(1, 2)))
            err = np.where(np.all(np.isfinite(xs), axis=(1, 2)), err, np.inf)
            for gi, g in enumerate(GRIDS):
                e = err[gi * len(NFES):(gi + 1) * len(NFES)]
                records.append({"problem": pname, "schedule": sname, "solver": name,
                                "grid": g, "nfe": list(NFES), "rmse": e.tolist()})
            print(f"{pname}/{sname}/{name}: {time.perf_counter() - t0:.1f}s", flush=True)
            write(records, quick)
    return records


def cliffs(rec):
    """``(n, rmse(n), rmse(n+2), ratio)`` for every cliff of one record."""
    e = dict(zip(rec["nfe"], rec["rmse"]))
    out = []
    for n in rec["nfe"]:
        if n + 2 in e:
            ratio = e[n + 2] / e[n] if e[n] > 0 else np.inf
            if not ratio <= RATIO:
                out.append((n, e[n], e[n + 2], ratio))
    return out


def worst_ratio(rec):
    e = dict(zip(rec["nfe"], rec["rmse"]))
    return max(e[n + 2] / e[n] for n in rec["nfe"] if n + 2 in e)


def write(records, quick):
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if quick else ""
    (RESULTS / f"cliffs{suffix}.json").write_text(json.dumps(records))
    blocks = {}
    for r in records:
        blocks.setdefault(r["solver"], set()).add((r["problem"], r["schedule"]))
    lines = [
        "# No-cliff sweep",
        "",
        "Written by `benchmarks/cliffs.py`. A cliff is `RMSE(n+2) > 1.10 * RMSE(n)` for NFE "
        "n = 5..48 (float64 solvers vs. a float64 ground truth, same `x_T`). Cells: the worst "
        "ratio `max_n RMSE(n+2)/RMSE(n)` (<= 1.10 means no cliff); `-`: not run.",
        "",
        "Solvers swept so far (problem/schedule blocks): "
        + "; ".join(f"{k} ({len(v)}/4)" for k, v in blocks.items()) + ".",
        "",
    ]
    problems_ = sorted({(r["problem"], r["schedule"]) for r in records})
    solvers = list(dict.fromkeys(r["solver"] for r in records))
    header = "| solver | grid | " + " | ".join(f"{p}/{s}" for p, s in problems_) + " |"
    lines += [header, "|" + "---|" * (2 + len(problems_))]
    index = {(r["problem"], r["schedule"], r["solver"], r["grid"]): r for r in records}
    for name in solvers:
        for g in GRIDS:
            cells = []
            for p, s in problems_:
                r = index.get((p, s, name, g))
                if r is None:
                    cells.append("-")
                    continue
                w = worst_ratio(r)
                cells.append(f"**{w:.2f}**" if w > RATIO else f"{w:.2f}")
            lines.append(f"| {name} | {g} | " + " | ".join(cells) + " |")
    lines += ["", "## Every cliff", "",
              "| problem | schedule | solver | grid | n | RMSE(n) | RMSE(n+2) | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    n_cliffs = 0
    for r in records:
        for n, a, b, ratio in cliffs(r):
            n_cliffs += 1
            lines.append(f"| {r['problem']} | {r['schedule']} | {r['solver']} | {r['grid']} | "
                         f"{n} | {a:.3e} | {b:.3e} | {ratio:.2f} |")
    if not n_cliffs:
        lines.append("| (none) | | | | | | | |")
    (RESULTS / f"cliffs{suffix}.md").write_text("\n".join(lines) + "\n")
    return n_cliffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = write(run(args.quick), args.quick)
    print(f"{n} cliffs; wrote {RESULTS}/cliffs{'_quick' if args.quick else ''}.md")


if __name__ == "__main__":
    main()
