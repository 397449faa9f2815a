"""Learned time grids against the best fixed grids, on held-out noise.

1. *Mixtures*: the 2-d ring of 8 sharp Gaussians (std 0.05) and the 64-d 10-mode mixture of
   ``benchmarks/accuracy.py``, under VP-linear and VE, exact scores. For tAB3-DEIS, iPNDM,
   UniPC-3 and DPM-Solver++(3M) at NFE 5, 6, 8, 10, 12, 15, 20: the held-out RMSE against the
   float64 ground truth (``testing.ode_ground_truth``, rtol 1e-9) of the quadratic, log-SNR and
   EDM (rho = 7) grids, of the best of 32 EDM exponents (``sweep_grid_family``, one vmapped
   call, chosen on the calibration noise) and of the learned grid
   (``optimize_timesteps``, started from the fixed grid with the lowest validation error, Adam
   at 3e-2, at most 300 steps, early stopping after 6 validations without progress). Noises: 4,096
   calibration, 1,024 validation, 4,096 held out, all different; the teacher is the float64
   ground truth; sampling runs in float32. For the 64-d mixture also the mode flips (samples
   ending nearest another component than their ground truth) and the flip-free RMSE, with
   mini-batches of 512 (cost). Parts ``ring2d`` and ``gmm64``.
   *Tails* (part ``tails``, from the kept ring grids): the RMSE of the 2-d ring is carried by a
   few samples near the boundary between modes; for every ring cell the median per-sample
   error and the share of the squared error in the worst 10 of the 4,096 held-out samples,
   best fixed grid against the learned one.
   *Losses* (part ``losses``): every ring cell learned again with ``loss="mean_error"`` (the
   mean of the per-sample RMS errors), same statistics.
   *Starts* (part ``starts``): the ring's cells at NFE 5-10 below 2x learned again from each
   of the four fixed grids (``init_grid=[...]``), the outcome best on validation kept.
2. *Transfer*: grids learned on the ring used on another 2-d mixture (6 modes, std 0.1,
   random means) under the same schedule, against that mixture's fixed and own learned grids.
   (Grids applied to new noise: every number of part 1 is on held-out noise.)
3. *Digits*: the small U-Net trained 2,000 steps (checkpoints at 1,000 and 2,000); tAB3 and
   DPM-Solver++(3M) at NFE 5 and 6; teacher: adaptive Tsit5 at tol 1e-5 from 1,024
   calibration and 256 validation noises (mini-batches of 128, at most 100 steps); Frechet
   distance and recognised rate (shipped classifier) of 1,000 held-out samples, learned
   against fixed grids; and (tAB3, NFE 5) the grid learned on the step-1,000 checkpoint
   applied to step 2,000.

Writes ``results/learned_grids.md``, ``.json`` and ``.png``. Parts are kept in ``--work``::

    python benchmarks/learned_grids.py                        # everything (~2 h, 2 cores)
    python benchmarks/learned_grids.py --parts gmm64          # one part
    python benchmarks/learned_grids.py --parts ''             # rewrite from the kept parts
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import as_model, sample, schedules, testing, timesteps
from deis_jax.learned_grids import optimize_timesteps, sweep_grid_family

RESULTS = pathlib.Path(__file__).parent / "results"
SOLVERS = ("tab3", "ipndm", "unipc3", "dpmpp_3m")
NFES = (5, 6, 8, 10, 12, 15, 20)
# The 64-d mixture costs ~30x the ring per optimiser step (2 s per full-batch step on 2 busy
# cores): mini-batches of 512.
BATCH_64 = 512
PARTS = ("ring2d", "gmm64", "tails", "losses", "starts", "transfer", "digits")
FIXED = ("quadratic", "log_snr", "edm")
SIZES = {"calibration": 4096, "validation": 1024, "held_out": 4096}
OPT = dict(steps=300, eval_every=10, patience=6, learning_rate=3e-2)
SCHEDULES = {"vp_linear": schedules.vp_linear, "ve": schedules.ve}


def problems():
    return {"ring2d": testing.ring_mixture(8, std=0.05),
            "gmm64": testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1),
            "other2d": testing.gaussian_mixture(2, 6, std=0.1, scale=1.0, seed=3)}


def noises(gmm, sched, seed=0):
    """Calibration, validation and held-out noises with their float64 ground truth (cast to
    float32)."""
    out = {}
    keys = jax.random.split(jax.random.key(seed), len(SIZES))
    for key, (name, n) in zip(keys, SIZES.items()):
        with jax.enable_x64(True):
            gmm64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), gmm)
            sched64 = SCHEDULES[sched.name]()
            x = sched64.prior_sample(key, (n, gmm.dim))
            gt, _ = testing.ode_ground_truth(gmm64, sched64, x, sched64.t_max, sched64.t_min,
                                             rtol=1e-9, atol=1e-9)
            gt = np.asarray(gt, np.float32)
        out[name] = (jnp.asarray(np.asarray(x, np.float32)), jnp.asarray(gt))
    return out


def measure(gmm, model, solver, ts, x, gt):
    out = sample(model, x, solver=solver, ts=ts)
    row = {"rmse": float(testing.rmse(out, gt))}
    if gmm.dim > 2:
        flips = np.asarray(testing.mode_flips(gmm, out, gt))
        row["flips"] = int(flips.sum())
        row["flip_free_rmse"] = float(testing.rmse(out[~flips], gt[~flips]))
    return row


def learn_cell(gmm, sched, data, solver, nfe, batch_size=None, every_start=False, loss="mse"):
    """Fixed grids, the sweep and the learned grid for one (solver, NFE): started from the
    fixed grid best on validation, or (``every_start``) from each fixed grid, the best
    outcome on validation kept."""
    model = as_model(gmm.eps_fn(sched), sched)
    (xc, yc), (xv, yv), (xh, yh) = data["calibration"], data["validation"], data["held_out"]
    n_steps = nfe  # all four solvers take one model call per step
    grids = {k: timesteps(sched, n_steps, k) for k in FIXED}
    sweep = sweep_grid_family(model, xc, yc, solver=solver, nfe=nfe)
    grids["sweep"] = sweep.ts
    val = {k: float(testing.rmse(sample(model, xv, solver=solver, ts=ts), yv))
           for k, ts in grids.items()}
    names = list(grids) if every_start else [min(val, key=val.get)]
    res = optimize_timesteps(model, solver=solver, nfe=nfe, x_T_calibration=xc,
                             x_T_validation=xv, teacher=(yc, yv),
                             init_grid=[grids[k] for k in names], batch_size=batch_size,
                             key=jax.random.key(nfe), loss=loss, progress="none", **OPT)
    runs = [r["validation_error"] for r in res.ts.metadata["starts"]]
    start = names[int(np.argmin(runs))]
    row = {"solver": solver, "nfe": nfe, "sweep_rho": sweep.best_value, "init": start,
           "seconds": res.seconds, "best_step": res.best_step, "steps_run": res.steps_run,
           "ts": [float(t) for t in np.asarray(res.ts)]}
    for k, ts in {**grids, "learned": res.ts}.items():
        row[k] = measure(gmm, model, solver, ts, xh, yh)
    fixed_best = min(row[k]["rmse"] for k in (*FIXED, "sweep"))
    row["gain"] = fixed_best / row["learned"]["rmse"]
    print(f"{solver} nfe {nfe}: fixed best {fixed_best:.3e} learned "
          f"{row['learned']['rmse']:.3e} ({row['gain']:.2f}x) in {res.seconds:.1f}s "
          f"(step {res.best_step}/{res.steps_run})", flush=True)
    return row


def mixture(pname):
    """Part 1 for one problem: every (solver, NFE) under each schedule."""
    out = {}
    gmm = problems()[pname]
    big = gmm.dim > 2
    for sname, make in SCHEDULES.items():
        sched = make()
        t0 = time.perf_counter()
        data = noises(gmm, sched)
        gt_s = time.perf_counter() - t0
        print(f"{pname} {sname}: ground truth {gt_s:.0f}s", flush=True)
        out[f"{pname}/{sname}"] = {"ground_truth_s": gt_s, "rows": [
            learn_cell(gmm, sched, data, s, n, BATCH_64 if big else None)
            for s in SOLVERS for n in NFES]}
        (pathlib.Path("/tmp") / f"learned_grids_{pname}_partial.json").write_text(
            json.dumps(out))
        jax.clear_caches()
    return out


def tails(mix):
    """Per-sample errors on the ring's held-out noise: median and the worst 10's share."""
    gmm = problems()["ring2d"]
    out = []
    for sname, make in SCHEDULES.items():
        sched = make()
        model = as_model(gmm.eps_fn(sched), sched)
        xh, yh = noises(gmm, sched)["held_out"]
        for row in mix[f"ring2d/{sname}"]["rows"]:
            best = min((*FIXED, "sweep"), key=lambda k: row[k]["rmse"])
            ts = {"fixed": _fixed_grid(sched, row, best),
                  "learned": row["ts"]}
            cell = {"schedule": sname, "solver": row["solver"], "nfe": row["nfe"],
                    "best_fixed": best}
            for k, grid in ts.items():
                cell[k] = _tail_stats(model, row["solver"], grid, xh, yh)
            out.append(cell)
        jax.clear_caches()
    return out


def _tail_stats(model, solver, ts, x, y):
    """RMSE, median per-sample error and the worst 10 samples' share of the squared error;
    the per-sample error is the RMS over the coordinates (the RMSE is their RMS)."""
    err = np.sort(np.sqrt(np.mean(np.square(np.asarray(
        sample(model, x, solver=solver, ts=jnp.asarray(np.asarray(ts), jnp.float32))
        - y)), axis=-1)))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "median": float(np.median(err)),
            "worst10_share": float(np.sum(err[-10:] ** 2) / np.sum(err ** 2))}


def losses(mix):
    """Every ring cell learned again with ``loss="mean_error"`` (one start, as part 1)."""
    gmm = problems()["ring2d"]
    out = []
    for sname, make in SCHEDULES.items():
        sched = make()
        model = as_model(gmm.eps_fn(sched), sched)
        data = noises(gmm, sched)
        for row in mix[f"ring2d/{sname}"]["rows"]:
            new = learn_cell(gmm, sched, data, row["solver"], row["nfe"], loss="mean_error")
            out.append({"schedule": sname, "solver": row["solver"], "nfe": row["nfe"],
                        "seconds": new["seconds"], "init": new["init"],
                        **_tail_stats(model, row["solver"], new["ts"],
                                      *data["held_out"])})
        jax.clear_caches()
    return out


def starts(mix):
    """The ring's cells at NFE 5-10 where one start gained less than 2x, learned again from
    each of the four fixed grids (the best on validation kept)."""
    gmm = problems()["ring2d"]
    out = []
    for sname, make in SCHEDULES.items():
        sched = make()
        rows = [r for r in mix[f"ring2d/{sname}"]["rows"] if r["nfe"] <= 10 and r["gain"] < 2]
        if not rows:
            continue
        data = noises(gmm, sched)
        for row in rows:
            new = learn_cell(gmm, sched, data, row["solver"], row["nfe"], every_start=True)
            out.append({"schedule": sname, "solver": row["solver"], "nfe": row["nfe"],
                        "one_start": row, "every_start": new})
        jax.clear_caches()
    return out


def _fixed_grid(sched, row, kind):
    if kind == "sweep":
        return timesteps(sched, row["nfe"], "edm", rho=row["sweep_rho"])
    return timesteps(sched, row["nfe"], kind)


def transfer(kept):
    """Grids learned on the ring (part 1) used on another 2-d mixture."""
    other = problems()["other2d"]
    out = []
    for sname, make in SCHEDULES.items():
        sched = make()
        data = noises(other, sched, seed=5)
        model = as_model(other.eps_fn(sched), sched)
        xh, yh = data["held_out"]
        for row in kept[f"ring2d/{sname}"]["rows"]:
            if row["solver"] not in ("tab3", "dpmpp_3m") or row["nfe"] not in (5, 8, 10):
                continue
            solver, nfe = row["solver"], row["nfe"]
            own = learn_cell(other, sched, data, solver, nfe)
            ring_grid = jnp.asarray(row["ts"], jnp.float32)
            out.append({"schedule": sname, "solver": solver, "nfe": nfe,
                        "fixed_best": min(own[k]["rmse"] for k in (*FIXED, "sweep")),
                        "own_learned": own["learned"]["rmse"],
                        "ring_learned": measure(other, model, solver, ring_grid, xh,
                                                yh)["rmse"]})
            print("transfer", out[-1], flush=True)
        jax.clear_caches()
    return out


def digits(steps: int, work: pathlib.Path):
    from deis_jax.training import (TrainConfig, default_spec, digit_quality, fit,
                                   load_dataset, load_model)

    data = load_dataset("digits")
    ckpt = work / "digits_ckpt"
    config = TrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup_steps=100,
                         log_every=max(steps // 10, 1), ckpt_every=steps // 2, keep=3)
    fit(default_spec(data), data, config, ckpt_dir=str(ckpt), progress="log")
    models = {s: load_model(str(ckpt), step=s) for s in (steps // 2, steps)}
    final = models[steps]
    train_s = final.info["meta"]["train_seconds"]  # cumulative, also when resumed from --work
    sched, shape = final.schedule, tuple(data.shape)
    kc, kv, kh = jax.random.split(jax.random.key(21), 3)
    xc = sched.prior_sample(kc, (1024, *shape))
    xv = sched.prior_sample(kv, (256, *shape))
    xh = sched.prior_sample(kh, (1000, *shape))
    out = {"train_steps": steps, "train_s": train_s, "rows": []}
    # (solver, NFE, also learn on the half-way checkpoint): the U-Net's backward pass costs
    # ~2 s per mini-batch step of 128 on 2 busy cores, so four optimisations in all.
    for solver, nfe, transfer in (("tab3", 5, True), ("tab3", 6, False),
                                  ("dpmpp_3m", 5, False), ("dpmpp_3m", 6, False)):
        learned = {}
        for step in (steps, steps // 2) if transfer else (steps,):
            m = models[step]
            learned[step] = optimize_timesteps(
                m, solver=solver, nfe=nfe, x_T_calibration=xc, x_T_validation=xv,
                batch_size=128, key=jax.random.key(3), init_grid="log_snr", progress="log",
                model_info={"step": step}, steps=100, eval_every=10, patience=4)
        res = learned[steps]
        grids = {k: timesteps(sched, nfe, k) for k in FIXED}
        grids["learned"] = res.ts
        if transfer:
            grids[f"learned at step {steps // 2}"] = learned[steps // 2].ts
        row = {"solver": solver, "nfe": nfe, "seconds": res.seconds,
               "teacher_seconds": res.teacher_seconds, "validation_error": res.validation_error,
               "init_validation_error": res.init_validation_error}
        for k, ts in grids.items():
            x = sample(final, xh, solver=solver, ts=jnp.asarray(np.asarray(ts), jnp.float32))
            q = digit_quality(np.asarray(x), data.test)
            row[k] = {"frechet": q.frechet, "recognised": q.recognised}
        print("digits", row, flush=True)
        out["rows"].append(row)
        (work / "digits_partial.json").write_text(json.dumps(out))
    return out


# --------------------------------------------------------------------------- report


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def plot(mix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mix), figsize=(4.2 * len(mix), 3.6), squeeze=False)
    for ax, (name, part) in zip(axes[0], mix.items()):
        for i, solver in enumerate(SOLVERS):
            rows = [r for r in part["rows"] if r["solver"] == solver]
            nfe = [r["nfe"] for r in rows]
            best = [min(r[k]["rmse"] for k in (*FIXED, "sweep")) for r in rows]
            ax.loglog(nfe, best, "--", color=f"C{i}", alpha=0.7)
            ax.loglog(nfe, [r["learned"]["rmse"] for r in rows], "o-", color=f"C{i}",
                      label=solver)
        ax.set_title(name)
        ax.set_xlabel("NFE")
        ax.set_xticks(NFES, [str(n) for n in NFES])
    axes[0][0].set_ylabel("held-out RMSE (solid: learned, dashed: best fixed)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "learned_grids.png", dpi=110)


def write(kept):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learned_grids.json").write_text(json.dumps(kept, indent=1))
    lines = ["# Learned time grids", "",
             "Produced by `python benchmarks/learned_grids.py` (see its docstring for the "
             "set-up). Held-out RMSE against the float64 ground truth; `best fixed` is the "
             "lowest of the quadratic, log-SNR, EDM (rho 7) and swept-EDM grids on the same "
             "held-out noise; `gain` = best fixed / learned. Seconds: optimisation wall time "
             "including compilation, on 2 CPU cores shared with other jobs.", ""]
    mix = kept.get("mixtures", {})
    for name, part in mix.items():
        flips = name.startswith("gmm64")
        lines += [f"## {name} (ground truth {part['ground_truth_s']:.0f}s)", ""]
        head = ["solver", "NFE", "quadratic", "log-SNR", "EDM 7", "sweep (rho)", "learned",
                "gain", "init", "seconds"]
        if flips:
            head += ["flips fixed-best / learned (of 4096)", "flip-free RMSE best / learned"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in part["rows"]:
            cells = [r["solver"], r["nfe"], r["quadratic"]["rmse"], r["log_snr"]["rmse"],
                     r["edm"]["rmse"], f"{r['sweep']['rmse']:.3g} ({r['sweep_rho']:.3g})",
                     r["learned"]["rmse"], f"{r['gain']:.2f}", r["init"],
                     f"{r['seconds']:.0f}"]
            if flips:
                best = min((*FIXED, "sweep"), key=lambda k: r[k]["rmse"])
                fewest = min(r[k]["flips"] for k in (*FIXED, "sweep"))
                cells += [f"{r[best]['flips']} (fewest fixed {fewest}) / "
                          f"{r['learned']['flips']}",
                          f"{r[best]['flip_free_rmse']:.3g} / "
                          f"{r['learned']['flip_free_rmse']:.3g}"]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    if kept.get("tails"):
        lines += ["## Where the ring's RMSE comes from", "",
                  "Per-sample error (RMS over the coordinates of x - x_gt) on the 4,096 held-out "
                  "noises: median, and the "
                  "share of the squared error carried by the worst 10 samples (0.24% of them), "
                  "best fixed grid / learned grid.", "",
                  "| schedule | solver | NFE | best fixed | RMSE | median | worst-10 share |",
                  "|---|---|---|---|---|---|---|"]
        for r in kept["tails"]:
            f, l = r["fixed"], r["learned"]
            lines.append(f"| {r['schedule']} | {r['solver']} | {r['nfe']} | {r['best_fixed']} "
                         f"| {f['rmse']:.3g} / {l['rmse']:.3g} | {f['median']:.3g} / "
                         f"{l['median']:.3g} | {100 * f['worst10_share']:.0f}% / "
                         f"{100 * l['worst10_share']:.0f}% |")
        lines.append("")
    if kept.get("losses") and kept.get("tails"):
        lines += ["## The ring learned with `loss=\"mean_error\"`", "",
                  "Every ring cell learned again minimising the mean of the per-sample RMS "
                  "errors instead of the mean squared error (one start, as above). Held-out "
                  "noise; best fixed grid / learned with mse / learned with mean_error.", "",
                  "| schedule | solver | NFE | RMSE | median | worst-10 share | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for t, m in zip(kept["tails"], kept["losses"]):
            f, l = t["fixed"], t["learned"]
            lines.append(f"| {m['schedule']} | {m['solver']} | {m['nfe']} | "
                         f"{f['rmse']:.3g} / {l['rmse']:.3g} / {m['rmse']:.3g} | "
                         f"{f['median']:.3g} / {l['median']:.3g} / {m['median']:.3g} | "
                         f"{100 * f['worst10_share']:.0f}% / {100 * l['worst10_share']:.0f}% / "
                         f"{100 * m['worst10_share']:.0f}% | {m['seconds']:.0f} |")
        lines.append("")
    if kept.get("starts"):
        lines += ["## Several starts (the ring, NFE 5-10, cells below 2x)", "",
                  "The optimisation has local minima. The cells of the tables above at NFE "
                  "5-10 that gained less than 2x, learned again from each of the quadratic, "
                  "log-SNR, EDM-7 and swept grids (`init_grid=[...]`), the outcome best on "
                  "validation kept; held-out RMSE.", "",
                  "| schedule | solver | NFE | best fixed | one start (init) | gain | "
                  "every start (winner) | gain | seconds (all starts) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in kept["starts"]:
            a, b = r["one_start"], r["every_start"]
            fixed = min(a[k]["rmse"] for k in (*FIXED, "sweep"))
            lines.append(f"| {r['schedule']} | {r['solver']} | {r['nfe']} | {fixed:.3g} | "
                         f"{a['learned']['rmse']:.3g} ({a['init']}) | {a['gain']:.2f} | "
                         f"{b['learned']['rmse']:.3g} ({b['init']}) | {b['gain']:.2f} | "
                         f"{b['seconds']:.0f} |")
        lines.append("")
    if "transfer" in kept:
        lines += ["## Transfer: grids learned on the ring, used on another 2-d mixture", "",
                  "| schedule | solver | NFE | best fixed | own learned | ring's learned |",
                  "|---|---|---|---|---|---|"]
        for r in kept["transfer"]:
            lines.append(f"| {r['schedule']} | {r['solver']} | {r['nfe']} | "
                         f"{r['fixed_best']:.3g} | {r['own_learned']:.3g} | "
                         f"{r['ring_learned']:.3g} |")
        lines.append("")
    if kept.get("digits"):
        d = kept["digits"]
        lines += [f"## Digits (U-Net, {d['train_steps']} steps, trained in "
                  f"{d['train_s']:.0f}s)", "",
                  "Frechet distance in the shipped classifier's features / recognised rate of "
                  "1,000 held-out samples.", ""]
        keys = list(dict.fromkeys(k for r in d["rows"] for k in r if isinstance(r[k], dict)))
        lines += ["| solver | NFE | " + " | ".join(keys) + " | teacher s | optimisation s |",
                  "|---|---|" + "---|" * (len(keys) + 2)]
        for r in d["rows"]:
            lines.append(f"| {r['solver']} | {r['nfe']} | " + " | ".join(
                f"{r[k]['frechet']:.3g} / {100 * r[k]['recognised']:.1f}%" if k in r else "-"
                for k in keys)
                + f" | {r['teacher_seconds']:.0f} | {r['seconds']:.0f} |")
        lines.append("")
    if mix:
        plot(mix)
        lines += ["![learned grids](learned_grids.png)", ""]
    (RESULTS / "learned_grids.md").write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/deis_jax_learned_grids")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--digits-steps", type=int, default=2000)
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def kept():
        out = {p: json.loads((work / f"{p}.json").read_text()) for p in PARTS
               if (work / f"{p}.json").exists()}
        out["mixtures"] = {**out.pop("ring2d", {}), **out.pop("gmm64", {})}
        return out

    steps = {"ring2d": lambda: mixture("ring2d"), "gmm64": lambda: mixture("gmm64"),
             "tails": lambda: tails(kept()["mixtures"]),
             "losses": lambda: losses(kept()["mixtures"]),
             "starts": lambda: starts(kept()["mixtures"]),
             "transfer": lambda: transfer(kept()["mixtures"]),
             "digits": lambda: digits(args.digits_steps, work)}
    for part in filter(None, args.parts.split(",")):
        if part not in steps:
            parser.error(f"unknown part {part!r}; the parts are {', '.join(PARTS)}")
        (work / f"{part}.json").write_text(json.dumps(steps[part]()))
    write(kept())


if __name__ == "__main__":
    main()
