"""Mixed precision: a bfloat16 model sampled with the solver state and time kept in float32.

1. *Analytic*: the exact-score mixtures (2-d ring of 8 sharp Gaussians, 64-d 10-mode mixture)
   under VP-linear, evaluated "in bfloat16" (the model receives ``x`` rounded to bfloat16 and
   its output is rounded to bfloat16: the unavoidable rounding of a bf16 network's input and
   output) and in float32, sampled with tAB3, DPM-Solver++(3M), UniPC-3 and EDM Heun at NFE 10
   and 20 from float32 and from bfloat16 ``x_T``; RMSE against the float64 ground truth
   (``testing.ode_ground_truth``) from the same (bf16-representable) ``x_T``. Target: bf16
   error <= 1.25 x float32 error.
2. *No NaN*: the bf16 model at NFE 5-12, 15, 20, 25, 30, 40, 50 (EDM Heun: the odd NFE
   below) on every schedule family, for the same solvers.
3. *Digits*: the small U-Net trained with float32 and with bfloat16 compute (float32
   parameters, optimizer state and loss) for the same steps and seed; Frechet distance and
   recognised rate of NFE-10 tAB3 samples; training throughput; and the float32-trained
   parameters sampled with the network computing in bfloat16.
4. *U-Net*: a float32-trained digits U-Net sampled with float32 and bfloat16 compute by the
   four solvers at NFE 10 and 20, against a tight adaptive solve.

Writes ``results/precision.md`` and ``results/precision.json``.

    python benchmarks/precision.py                  # ~15-25 min on 2 CPU cores
    python benchmarks/precision.py --digits-steps 0 # analytic parts only (~3 min)
    python benchmarks/precision.py --parts digits   # one part; parts are kept in --work and
                                                    # the tables are written from all kept parts
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import as_model, sample, schedules, testing
from deis_jax.schedules import FAMILIES

RESULTS = pathlib.Path(__file__).parent / "results"
SOLVERS = ("tab3", "dpmpp_3m", "unipc3", "edm_heun")
NFES = (10, 20)
# NFEs of the non-finite sweep: every NFE where the last steps are long, then a spread to 50
# (each NFE compiles its own scan; all 46 would take ~1 h on 2 busy cores).
SWEEP_NFES = tuple(range(5, 13)) + (15, 20, 25, 30, 40, 50)
BF16 = jnp.bfloat16


def bf16_model(eps_fn):
    """The exact model with its output rounded to bfloat16 (its input arrives in bfloat16
    through ``as_model(..., dtype="bfloat16")``, or from a bfloat16 ``x_T``)."""

    def fn(x, t):
        return eps_fn(x, t).astype(BF16)

    return fn


def grid_for(solver, nfe):
    """``(nfe used, grid kind)``: EDM Heun makes 2 calls per step less one (odd NFEs)."""
    grid = "edm" if solver == "edm_heun" else "log_snr"
    return (nfe - 1 if solver == "edm_heun" else nfe), grid


def analytic(batch: int = 1000):
    sched = schedules.vp_linear()
    rows = []
    for pname, gmm in (("ring2d", testing.ring_mixture(8, std=0.05, dtype=jnp.float32)),
                       ("gmm64", testing.gaussian_mixture(64, 10, std=0.3, seed=1,
                                                          dtype=jnp.float32))):
        x_T = sched.prior_sample(jax.random.key(0), (batch, gmm.dim)).astype(BF16)
        with jax.enable_x64(True):
            gt, _ = testing.ode_ground_truth(gmm, sched, np.asarray(x_T, np.float64),
                                             sched.t_max, sched.t_min)
            gt = np.asarray(gt)
        eps = gmm.eps_fn(sched)
        model32 = as_model(eps, sched)
        bf_fn = bf16_model(eps)
        model_bf = as_model(bf_fn, sched, dtype="bfloat16")
        model_bf_from_x = as_model(bf_fn, sched)  # computes in x_T's dtype: bfloat16 below
        for solver in SOLVERS:
            for nfe in NFES:
                n, grid = grid_for(solver, nfe)
                run = dict(solver=solver, nfe=n, grid=grid)
                x32 = sample(model32, x_T.astype(jnp.float32), **run)
                xb_from32 = sample(model_bf, x_T.astype(jnp.float32), **run)
                xb_frombf = sample(model_bf_from_x, x_T, **run)
                x32, xb = np.asarray(x32, np.float64), np.asarray(xb_from32, np.float64)
                f32, fb = (np.asarray(testing.mode_flips(gmm, x, gt)) for x in (x32, xb))
                kept = ~(f32 | fb)
                e32, eb = (float(testing.rmse(x, gt)) for x in (x32, xb))
                k32, kb = (float(testing.rmse(x[kept], gt[kept])) for x in (x32, xb))
                rows.append({"problem": pname, "solver": solver, "nfe": n, "grid": grid,
                             "rmse_f32": e32, "rmse_bf16": eb, "ratio_all": eb / e32,
                             "flips_f32": int(f32.sum()), "flips_bf16": int(fb.sum()),
                             "rmse_f32_kept": k32, "rmse_bf16_kept": kb, "ratio": kb / k32,
                             "same_for_bf16_xT": bool(np.array_equal(
                                 np.asarray(xb_from32), np.asarray(xb_frombf)))})
                print(f"{pname} {solver} nfe {n}: f32 {e32:.3e} bf16 {eb:.3e} flips "
                      f"{f32.sum()}/{fb.sum()} flip-free ratio {kb / k32:.3f}", flush=True)
    return rows


def nan_sweep():
    """First (schedule, solver, NFE) with a non-finite bf16 sample, per schedule family."""
    gmm = testing.ring_mixture(8, std=0.05, dtype=jnp.float32)
    out = {}
    for family in FAMILIES:
        sched = schedules.from_name(family)
        model = as_model(bf16_model(gmm.eps_fn(sched)), sched)
        x_T = sched.prior_sample(jax.random.key(1), (64, 2)).astype(BF16)
        bad, runs = [], 0
        for solver in SOLVERS:
            for nfe in SWEEP_NFES:
                n, grid = grid_for(solver, nfe)
                if solver == "edm_heun" and n % 2 == 0:  # Heun reaches odd NFEs only
                    n -= 1
                x = sample(model, x_T, solver=solver, nfe=n, grid=grid, check_finite=False)
                runs += 1
                if not bool(jnp.all(jnp.isfinite(x))):
                    bad.append(f"{solver}@{n}")
        out[family] = {"runs": runs, "nonfinite": bad}
        print(f"{family}: {runs} runs, non-finite: {bad}", flush=True)
        jax.clear_caches()  # hundreds of executables exhaust the process's memory maps
    return out


def digits(steps: int):
    from deis_jax.training import (TrainConfig, default_spec, digit_quality, fit,
                                   load_dataset)

    data = load_dataset("digits")
    out = {}
    x_T = None
    for precision in ("float32", "bfloat16"):
        spec = default_spec(data, precision=precision)
        config = TrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup_steps=100,
                             log_every=max(steps // 10, 1), ckpt_every=0)
        t0 = time.perf_counter()
        result = fit(spec, data, config, progress="log")
        wall = time.perf_counter() - t0
        model = spec.as_model(result.state.ema_params)
        sched = model.schedule
        if x_T is None:
            x_T = sched.prior_sample(jax.random.key(7), (1000, *data.shape))
        x = sample(model, x_T, solver="tab3", nfe=10)
        q = digit_quality(np.asarray(x), data.test)
        out[precision] = {"steps_per_s": result.steps_per_s, "wall_s": wall,
                          "frechet": q.frechet, "recognised": q.recognised}
        if precision == "float32":
            # The same model and parameters, its network computing in bfloat16.
            bf_model = model.replace(network=spec.build_model().clone(dtype=BF16).apply)
            xb = sample(bf_model, x_T, solver="tab3", nfe=10)
            qb = digit_quality(np.asarray(xb), data.test)
            out["float32_params_bf16_compute"] = {
                "frechet": qb.frechet, "recognised": qb.recognised,
                "rmse_vs_float32_samples": float(testing.rmse(xb, x))}
        print(precision, out[precision], flush=True)
    return out


def unet(steps: int):
    """The digits U-Net trained in float32, sampled with float32 and bfloat16 compute (float32
    parameters) by every solver at NFE 10 and 20; RMSE against a tight adaptive solve
    (float32, rtol = atol = 1e-6) of the float32-compute network from the same ``x_T``."""
    from deis_jax.adaptive import solve_ode
    from deis_jax.training import TrainConfig, default_spec, fit, load_dataset

    data = load_dataset("digits")
    spec = default_spec(data)
    config = TrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup_steps=100,
                         log_every=steps, ckpt_every=0)
    params = fit(spec, data, config, progress="none").state.ema_params
    net = spec.build_model()
    sched = spec.build_schedule()
    model = as_model(net, sched, params=params)  # the Linen module: net.apply
    model_bf = as_model(net.clone(dtype=BF16), sched, params=params)
    x_T = sched.prior_sample(jax.random.key(11), (500, *data.shape))
    ref = solve_ode(model, x_T, rtol=1e-6, atol=1e-6).x
    # Each network's own reference: the bf16-compute network is another vector field (its
    # input and output rounded), whose solution differs from the float32 one by the network's
    # rounding alone. tAB3 at NFE 400 on the log-SNR grid solves both (the float32 one agrees
    # with the adaptive reference to ``ref_gap_f32``).
    high = dict(solver="tab3", nfe=400, grid="log_snr")
    own_ref = {"f32": sample(model, x_T, **high), "bf16": sample(model_bf, x_T, **high)}
    rows = []
    for solver in SOLVERS:
        for nfe in NFES:
            n, grid = grid_for(solver, nfe)
            run = dict(solver=solver, nfe=n, grid=grid)
            x32 = sample(model, x_T, **run)
            xbf = sample(model_bf, x_T, **run)
            e32, ebf = float(testing.rmse(x32, ref)), float(testing.rmse(xbf, ref))
            own32 = float(testing.rmse(x32, own_ref["f32"]))
            ownbf = float(testing.rmse(xbf, own_ref["bf16"]))
            rows.append({"solver": solver, "nfe": n, "grid": grid, "rmse_f32": e32,
                         "rmse_bf16": ebf, "ratio": ebf / e32, "own_rmse_f32": own32,
                         "own_rmse_bf16": ownbf, "own_ratio": ownbf / own32,
                         "reference_gap": float(testing.rmse(own_ref["bf16"], own_ref["f32"])),
                         "ref_gap_f32": float(testing.rmse(own_ref["f32"], ref))})
            print(f"unet {solver} nfe {n}: f32 {e32:.3e} bf16 {ebf:.3e} ratio {ebf / e32:.3f}"
                  f"; own references {own32:.3e} / {ownbf:.3e} = {ownbf / own32:.3f}",
                  flush=True)
    return rows


def write(rows, nans, dig, net=()):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision.json").write_text(json.dumps(
        {"analytic": rows, "nan_sweep": nans, "digits": dig, "unet": list(net)}, indent=1))
    lines = ["# Mixed precision (bfloat16 model, float32 solver state and time)", "",
             "Produced by `python benchmarks/precision.py`. RMSE against the float64 ground "
             "truth from the same `x_T` (VP-linear, 1,000 samples; log-SNR grid, EDM grid for "
             "EDM Heun). *bf16* = the exact model with input and output rounded to bfloat16 "
             "(`as_model(..., dtype=\"bfloat16\")`); target ratio bf16 / float32 <= 1.25. *Flips*: "
             "samples ending nearest another mixture component than their ground truth (a "
             "sample on a mode boundary goes either way under any perturbation, the bf16 "
             "rounding included); the flip-free columns drop the samples that flip in either "
             "run. *Same from bf16 x_T*: the bf16 run from a bfloat16 `x_T` is bit-identical "
             "to the one from the same values in float32.", "",
             "| problem | solver | NFE | RMSE f32 | RMSE bf16 | ratio | flips f32 / bf16 | "
             "flip-free f32 | flip-free bf16 | flip-free ratio | same from bf16 x_T |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['solver']} | {r['nfe']} | {r['rmse_f32']:.3e} | "
                     f"{r['rmse_bf16']:.3e} | {r['ratio_all']:.3f} | {r['flips_f32']} / "
                     f"{r['flips_bf16']} | {r['rmse_f32_kept']:.3e} | "
                     f"{r['rmse_bf16_kept']:.3e} | {r['ratio']:.3f} | "
                     f"{'yes' if r['same_for_bf16_xT'] else 'NO'} |")
    worst = max(rows, key=lambda r: r["ratio"])
    worst_all = max(rows, key=lambda r: r["ratio_all"])
    lines += ["", f"Flip-free: worst ratio {worst['ratio']:.3f} ({worst['problem']}, "
              f"{worst['solver']}, NFE {worst['nfe']}); {sum(r['ratio'] > 1.25 for r in rows)} "
              f"of {len(rows)} cells above 1.25. All samples: worst ratio "
              f"{worst_all['ratio_all']:.3f} ({worst_all['problem']}, {worst_all['solver']}, "
              f"NFE {worst_all['nfe']}, flips {worst_all['flips_f32']} / "
              f"{worst_all['flips_bf16']}); {sum(r['ratio_all'] > 1.25 for r in rows)} cells "
              "above 1.25.", "",
              "## Non-finite samples, bf16 model, NFE 5-12, 15, 20, 25, 30, 40, 50", "",
              "| schedule | runs | non-finite |", "|---|---:|---|"]
    for family, v in nans.items():
        lines.append(f"| {family} | {v['runs']} | {', '.join(v['nonfinite']) or 'none'} |")
    if dig:
        f32, bf = dig["float32"], dig["bfloat16"]
        mixed = dig["float32_params_bf16_compute"]
        lines += ["", "## Digits (small U-Net), tAB3 at NFE 10, 1,000 samples", "",
                  "| training compute | steps/s | Frechet | recognised |", "|---|---:|---:|---:|",
                  f"| float32 | {f32['steps_per_s']:.1f} | {f32['frechet']:.3f} | "
                  f"{f32['recognised']:.1%} |",
                  f"| bfloat16 | {bf['steps_per_s']:.1f} | {bf['frechet']:.3f} | "
                  f"{bf['recognised']:.1%} |", "",
                  f"bf16 / float32: Frechet {bf['frechet'] / f32['frechet']:.3f}, recognised "
                  f"{bf['recognised'] / f32['recognised']:.3f}, throughput "
                  f"{bf['steps_per_s'] / f32['steps_per_s']:.2f} (CPU: bfloat16 is emulated, "
                  "so slower here; the GPU figure is the one that matters).", "",
                  f"The float32-trained parameters sampled with the network computing in "
                  f"bfloat16: Frechet {mixed['frechet']:.3f}, recognised "
                  f"{mixed['recognised']:.1%}, RMSE to the float32-compute samples "
                  f"{mixed['rmse_vs_float32_samples']:.2e}."]
    if net:
        lines += ["", "## Digits U-Net (float32 parameters) computing in bfloat16, 500 samples",
                  "", "Small U-Net trained 1,000 steps in float32; RMSE against a tight "
                  "adaptive solve (float32, rtol = atol = 1e-6) of the float32-compute network "
                  "from the same `x_T`.", "",
                  "| solver | NFE | RMSE float32 compute | RMSE bf16 compute | ratio |"
                  + (" each against its own network's reference: float32 / bf16 / ratio |"
                     if "own_ratio" in net[0] else ""),
                  "|---|---:|---:|---:|---:|" + ("---:|" if "own_ratio" in net[0] else "")]
        lines += [f"| {r['solver']} | {r['nfe']} | {r['rmse_f32']:.3e} | "
                  f"{r['rmse_bf16']:.3e} | {r['ratio']:.3f} |"
                  + (f" {r['own_rmse_f32']:.3e} / {r['own_rmse_bf16']:.3e} / "
                     f"{r['own_ratio']:.3f} |" if "own_ratio" in r else "") for r in net]
        if "own_ratio" in net[0]:
            lines += ["", "Own references: tAB3 at NFE 400 (log-SNR grid) of the float32- and "
                      "of the bf16-compute network, from the same `x_T`. The two references "
                      f"differ by RMSE {net[0]['reference_gap']:.2e}: the bf16 network's "
                      "rounding moves the ODE's solution that far, whatever the solver (the "
                      "float32 one is "
                      f"{net[0]['ref_gap_f32']:.1e} from the adaptive reference). Against its "
                      "own network's solution, the bf16 run's solver error is the ratio in "
                      "the last column."]
    (RESULTS / "precision.md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-steps", type=int, default=2000)
    parser.add_argument("--work", default="/tmp/deis_jax_precision")
    parser.add_argument("--parts", default="analytic,nans,digits,unet",
                        help="comma-separated parts to (re)compute: analytic, nans, digits, "
                             "unet ('' rewrites the tables from the kept parts)")
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = {"analytic": analytic, "nans": nan_sweep,
             "digits": lambda: digits(args.digits_steps) if args.digits_steps else {},
             "unet": lambda: unet(args.digits_steps // 2) if args.digits_steps else []}
    for part in filter(None, args.parts.split(",")):
        (work / f"{part}.json").write_text(json.dumps(steps[part]()))
    kept = {part: json.loads((work / f"{part}.json").read_text())
            for part in steps if (work / f"{part}.json").exists()}
    if "analytic" in kept and "nans" in kept:
        write(kept["analytic"], kept["nans"], kept.get("digits", {}), kept.get("unet", []))


if __name__ == "__main__":
    main()
