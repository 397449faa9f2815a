"""Applications on exact Gaussian mixtures: likelihood accuracy and cost, Hutchinson variance,
inversion round-trip error.

1. *Likelihood*: ``log_likelihood`` with the exact divergence on 64 exact draws of
   ``p_{t_min}`` (VP-linear, 4-mode mixtures in d = 2 and 16, float64) against the mixture's
   closed-form ``log p_{t_min}``, for rtol = atol = 1e-3 ... 1e-7: the mean absolute error per
   dimension of the reported ``logp`` (prior in place of ``p_{t_max}``) and of the ODE part
   alone (exact ``log p_{t_max}(x_T)`` in place of the prior), with the NFE and time of the
   solve; and ``fixed_grid_log_likelihood`` (DDIM, tAB3 at NFE 10-80) on the same points.
2. *Hutchinson*: d = 64, 8 points, 32 probe draws per K: the standard deviation of the
   ``logp`` estimate per point (averaged over points) and the bias of the mean over draws
   against the exact divergence, for Rademacher and Gaussian probes, K = 1, 2, 4, 8, 16.
3. *Inversion*: ``reconstruction_error`` (encode with the solver on the reversed grid, decode)
   on 64 draws of the d = 2 mixture for DDIM and tAB3, log-SNR and quadratic grids, 10-160
   steps, float64; the slope of log2(error) per doubling of the steps; and each direction
   alone against the float64 ground truth of the ODE.

Writes ``results/applications.md`` and ``results/applications.json``.

    python benchmarks/applications.py     # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import schedules, testing, timesteps
from deis_jax.inversion import decode, encode, reconstruction_error
from deis_jax.likelihood import fixed_grid_log_likelihood, log_likelihood

RESULTS = pathlib.Path(__file__).parent / "results"
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
KS = (1, 2, 4, 8, 16)
STEPS = (10, 20, 40, 80, 160)


def _data(d, n, seed=0):
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(d, 4, std=0.5, seed=seed)
    x = gmm.sample_marginal(jax.random.key(seed), n, sched.t_min, sched)
    return sched, gmm, gmm.eps_fn(sched), x


def likelihood_rows():
    rows = []
    for d in (2, 16):
        sched, gmm, model, x = _data(d, 64)
        exact = gmm.marginal_logp(x, sched.t_min, sched)
        for tol in TOLS:
            out = jax.block_until_ready(log_likelihood(model, sched, x, rtol=tol, atol=tol))
            start = time.perf_counter()  # compiled once (the tolerances are traced): timed
            out = jax.block_until_ready(log_likelihood(model, sched, x, rtol=tol, atol=tol))
            seconds = time.perf_counter() - start
            ode = out.delta_logp + gmm.marginal_logp(out.x_T, sched.t_max, sched)
            rows.append(dict(d=d, rtol=tol, nfe=int(out.nfe),
                             err_per_dim=float(jnp.mean(jnp.abs(out.logp - exact))) / d,
                             ode_err_per_dim=float(jnp.mean(jnp.abs(ode - exact))) / d,
                             seconds=seconds))
            print(rows[-1], flush=True)
    return rows


def fixed_grid_rows():
    rows = []
    for d in (2, 16):
        sched, gmm, model, x = _data(d, 64)
        exact = gmm.marginal_logp(x, sched.t_min, sched)
        for solver in ("ddim", "tab3"):
            for nfe in (10, 20, 40, 80):
                run = jax.jit(lambda x, solver=solver, nfe=nfe: fixed_grid_log_likelihood(
                    model, sched, x, solver=solver, nfe=nfe, grid="log_snr").logp)
                jax.block_until_ready(run(x))
                start = time.perf_counter()
                logp = jax.block_until_ready(run(x))
                seconds = time.perf_counter() - start
                rows.append(dict(d=d, solver=solver, nfe=nfe, seconds=seconds,
                                 err_per_dim=float(jnp.mean(jnp.abs(logp - exact))) / d))
                print(rows[-1], flush=True)
    return rows


def hutchinson_rows():
    sched, _, model, x = _data(64, 8, seed=3)
    exact = log_likelihood(model, sched, x).logp
    rows = []
    keys = jax.random.split(jax.random.key(11), 32)
    for probe in ("rademacher", "gaussian"):
        for k in KS:
            run = jax.jit(jax.vmap(lambda key, k=k, probe=probe: log_likelihood(
                model, sched, x, divergence="hutchinson", probe=probe, n_probes=k,
                key=key).logp))
            draws = run(keys)  # (32, 8)
            std = jnp.std(draws, axis=0, ddof=1)
            bias = jnp.mean(draws, axis=0) - exact
            rows.append(dict(probe=probe, K=k, std=float(jnp.mean(std)),
                             bias_in_se=float(jnp.mean(bias / (std / np.sqrt(32))))))
            print(rows[-1], flush=True)
    return rows


def inversion_rows():
    sched, gmm, model, x = _data(2, 64)
    z_true, _ = testing.ode_ground_truth(gmm, sched, x, sched.t_min, sched.t_max)
    rows = []
    for solver in ("ddim", "tab3"):
        for grid in ("log_snr", "quadratic"):
            errs, enc, dec = [], [], []
            for n in STEPS:
                ts = timesteps(sched, n, grid)
                _, err = reconstruction_error(model, sched, x, solver=solver, ts=ts)
                errs.append(float(jnp.mean(err)))
                enc.append(float(testing.rmse(encode(model, sched, x, solver=solver, ts=ts),
                                              z_true)))
                dec.append(float(testing.rmse(decode(model, sched, z_true, solver=solver,
                                                     ts=ts), x)))
            slopes = [float(np.log2(a / b)) for a, b in zip(errs, errs[1:])]
            rows.append(dict(solver=solver, grid=grid, errors=errs, slopes=slopes,
                             encode_errors=enc, decode_errors=dec))
            print(rows[-1], flush=True)
    return rows


def write(lik, fixed, hut, inv):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "applications.json").write_text(json.dumps(
        dict(likelihood=lik, fixed_grid=fixed, hutchinson=hut, inversion=inv), indent=1))
    lines = ["# Applications on exact Gaussian mixtures", "",
             "Written by `benchmarks/applications.py` (float64, VP-linear, 4-mode mixtures; "
             "see its docstring).", "",
             "## Likelihood: error against the closed-form log p_{t_min}", "",
             "Mean absolute error per dimension of the reported `logp` (the prior stands in for "
             "p_{t_max}) and of the ODE part alone (exact log p_{t_max}(x_T) in its place); "
             "exact divergence, Tsit5, 64 points, shared steps.", "",
             "| d | rtol = atol | NFE | error / dim | ODE-part error / dim | seconds (compiled) |",
             "|---|---|---|---|---|---|"]
    for r in lik:
        lines.append(f"| {r['d']} | {r['rtol']:.0e} | {r['nfe']} | {r['err_per_dim']:.2e} | "
                     f"{r['ode_err_per_dim']:.2e} | {r['seconds']:.3f} |")
    lines += ["", "### Fixed-grid likelihood (change of variables of the solver's map)", "",
              "`fixed_grid_log_likelihood` on log-SNR grids, same points; the Jacobian of the "
              "whole solve by forward mode (d tangents). Error / dim of the reported `logp`.", "",
              "| d | solver | NFE | error / dim | seconds (compiled) |", "|---|---|---|---|---|"]
    for r in fixed:
        lines.append(f"| {r['d']} | {r['solver']} | {r['nfe']} | {r['err_per_dim']:.2e} | "
                     f"{r['seconds']:.3f} |")
    lines += ["", "## Hutchinson: spread of the estimate against K (d = 64)", "",
              "Standard deviation of one estimate of log p per point (nats, mean over 8 "
              "points) over 32 probe draws; bias of the mean of the draws against the exact "
              "divergence, in standard errors (mean over points).", "",
              "| probes | K | std of log p (nats) | bias / standard error |", "|---|---|---|---|"]
    for r in hut:
        lines.append(f"| {r['probe']} | {r['K']} | {r['std']:.3f} | {r['bias_in_se']:+.2f} |")
    lines += ["", "## Inversion: encode-then-decode RMSE against steps (d = 2)", "",
              "| solver | grid | " + " | ".join(f"{n} steps" for n in STEPS)
              + " | slopes (log2 per doubling) |",
              "|---|---|" + "---|" * len(STEPS) + "---|"]
    for r in inv:
        lines.append(f"| {r['solver']} | {r['grid']} | "
                     + " | ".join(f"{e:.2e}" for e in r["errors"]) + " | "
                     + ", ".join(f"{s:.2f}" for s in r["slopes"]) + " |")
    lines += ["", "Each direction alone against the float64 ground truth of the ODE "
              "(`testing.ode_ground_truth`): encode x -> x_T, decode the exact x_T -> x "
              "(RMSE).", "",
              "| solver | grid | direction | " + " | ".join(f"{n} steps" for n in STEPS) + " |",
              "|---|---|---|" + "---|" * len(STEPS)]
    for r in inv:
        for name in ("encode", "decode"):
            lines.append(f"| {r['solver']} | {r['grid']} | {name} | "
                         + " | ".join(f"{e:.2e}" for e in r[f"{name}_errors"]) + " |")
    (RESULTS / "applications.md").write_text("\n".join(lines) + "\n")


def main():
    jax.config.update("jax_enable_x64", True)
    write(likelihood_rows(), fixed_grid_rows(), hutchinson_rows(), inversion_rows())


if __name__ == "__main__":
    main()
