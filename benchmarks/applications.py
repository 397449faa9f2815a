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

4-8. *Digits*: the small digits U-Net trained unconditionally and class-conditionally
   (label dropout 0.1) into ``--work`` (reused when finished there): bits/dim of the test
   split (:func:`bits_per_dim`), encode-then-decode error against NFE and a slerp
   interpolation (:func:`digits_inversion`), classifier-free guidance at 8 scales in one
   vmapped call (:func:`cfg`), classifier guidance with a noise-conditional classifier
   trained here (:func:`classifier`), inpainting the lower half (:func:`inpainting`).

Writes ``results/applications.md``, ``results/applications.json`` and the PNGs
``results/applications_{interpolation,cfg,inpainting}.png``. Each part's result is kept in
``--work``; the tables are written from every kept part.

    python benchmarks/applications.py                       # everything (see the wall times
                                                            # in the results file)
    python benchmarks/applications.py --parts cfg           # one part, the others kept
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import as_model, schedules, testing, timesteps
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
    return sched, gmm, as_model(gmm.eps_fn(sched), sched), x


def likelihood_rows():
    rows = []
    for d in (2, 16):
        sched, gmm, model, x = _data(d, 64)
        exact = gmm.marginal_logp(x, sched.t_min, sched)
        for tol in TOLS:
            out = jax.block_until_ready(log_likelihood(model, x, rtol=tol, atol=tol))
            start = time.perf_counter()  # compiled once (the tolerances are traced): timed
            out = jax.block_until_ready(log_likelihood(model, x, rtol=tol, atol=tol))
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
                    model, x, solver=solver, nfe=nfe, grid="log_snr").logp)
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
    exact = log_likelihood(model, x).logp
    rows = []
    keys = jax.random.split(jax.random.key(11), 32)
    for probe in ("rademacher", "gaussian"):
        for k in KS:
            run = jax.jit(jax.vmap(lambda key, k=k, probe=probe: log_likelihood(
                model, x, divergence="hutchinson", probe=probe, n_probes=k,
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
                _, err = reconstruction_error(model, x, solver=solver, ts=ts)
                errs.append(float(jnp.mean(err)))
                enc.append(float(testing.rmse(encode(model, x, solver=solver, ts=ts), z_true)))
                dec.append(float(testing.rmse(decode(model, z_true, solver=solver, ts=ts), x)))
            slopes = [float(np.log2(a / b)) for a, b in zip(errs, errs[1:])]
            rows.append(dict(solver=solver, grid=grid, errors=errs, slopes=slopes,
                             encode_errors=enc, decode_errors=dec))
            print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- digits

DIGIT_STEPS = 5000
N_BINS = 17  # scikit-learn's digits take the integer values 0..16


def digits_model(work: pathlib.Path, conditional: bool, steps: int = DIGIT_STEPS):
    """The small digits U-Net (class-conditional with label dropout 0.1, or not) trained for
    ``steps`` into ``work/digits_{cond,uncond}``; a finished checkpoint there is loaded.

    Returns ``(model, data, train_seconds)``: the loaded :class:`deis_jax.Model` (its
    ``info`` holds the spec, step and metadata)."""
    from deis_jax.training import (
        TrainConfig, default_spec, fit, latest_step, load_dataset, load_model)

    data = load_dataset("digits")
    ckpt = work / ("digits_cond" if conditional else "digits_uncond")
    if latest_step(ckpt) != steps:
        spec = default_spec(data, conditional=conditional)
        config = TrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup_steps=200,
                             log_every=500, ckpt_every=1000, keep=1)
        fit(spec, data, config, ckpt_dir=ckpt, progress="log")
    model = load_model(ckpt)
    return model, data, float(model.info["meta"]["train_seconds"])


INV_NFES = (10, 20, 50, 100, 200)
CFG_SCALES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Digits: the integer levels k = 0..16 are stored as x = k/8 - 1; cells of width 1/8 centred
# on them span (-1 - 1/16, 1 + 1/16), cut into 17 bins.
DIGITS_RANGE = (-1.0 - 1.0 / 16, 1.0 + 1.0 / 16)


def _levels(x):
    return np.rint((np.asarray(x) + 1.0) * 8.0).astype(np.int32)


def bits_per_dim(work: pathlib.Path, n_exact: int = 32):
    """Bits/dim of the unconditional digits model on the 359 test digits: uniform
    dequantisation into the 17 cells centred on the training values, Tsit5 at rtol = atol =
    1e-5 (one solve for the batch). The divergence: Hutchinson with 2 Rademacher probes on
    the whole split, two draws (dequantisation and probes); and exact (64 tangents per
    evaluation, ~20x the cost) on the first ``n_exact`` digits with the first draw's
    dequantisation, against Hutchinson on the same digits."""
    from deis_jax.likelihood import dequantize, log_likelihood

    model, data, train_s = digits_model(work, conditional=False)
    k = _levels(data.test)

    def run(x, key, divergence, **kw):
        start = time.perf_counter()
        out = log_likelihood(model, x, data_range=DIGITS_RANGE, n_bins=N_BINS, rtol=1e-5,
                             atol=1e-5, divergence=divergence, key=key, **kw)
        bpd = np.asarray(jax.block_until_ready(out.bpd))
        return dict(divergence=divergence, n=int(x.shape[0]), bpd=float(bpd.mean()),
                    bpd_std=float(bpd.std()), nfe=int(out.nfe),
                    seconds=time.perf_counter() - start)

    rows = []
    for draw in range(2):
        key_u, key_p = jax.random.split(jax.random.key(draw))
        x = dequantize(key_u, k, n_bins=N_BINS, data_range=DIGITS_RANGE, dtype=jnp.float32)
        rows.append(dict(draw=draw, **run(x, key_p, "hutchinson", n_probes=2)))
        print("bpd", rows[-1], flush=True)
        if draw == 0:
            for divergence in ("exact", "hutchinson"):
                rows.append(dict(draw=draw, **run(x[:n_exact], key_p, divergence,
                                                  n_probes=2)))
                print("bpd", rows[-1], flush=True)
    return dict(rows=rows, train_seconds=train_s, uniform_bpd=float(np.log2(N_BINS)))


def digits_inversion(work: pathlib.Path):
    """Encode-then-decode RMSE of the 359 test digits (DDIM, tAB3; log-SNR grid) against NFE
    per direction; each direction alone against a tAB3 NFE-400 latent; and a slerp
    interpolation between encoded test digits of consecutive classes (tAB3, NFE 100)."""
    from deis_jax.inversion import decode, encode, reconstruction_error, slerp
    from deis_jax.plots import save_image_grids

    model, data, _ = digits_model(work, conditional=False)
    x = jnp.asarray(data.test)
    kw = dict(grid="log_snr")
    z_ref = encode(model, x, solver="tab3", nfe=400, **kw)
    rows = []
    for solver in ("ddim", "tab3"):
        for nfe in INV_NFES:
            start = time.perf_counter()
            _, err = reconstruction_error(model, x, solver=solver, nfe=nfe, **kw)
            err = np.asarray(err)
            seconds = time.perf_counter() - start
            z = encode(model, x, solver=solver, nfe=nfe, **kw)
            x_dec = decode(model, z_ref, solver=solver, nfe=nfe, **kw)
            rows.append(dict(solver=solver, nfe=nfe, rmse=float(err.mean()),
                             mse=float(np.mean(err**2)), seconds=seconds,
                             encode_rmse=float(testing.rmse(z, z_ref)),
                             decode_rmse=float(testing.rmse(x_dec, x))))
            print("inversion", rows[-1], flush=True)
        jax.clear_caches()
    first = [int(np.flatnonzero(data.test_labels == c)[0]) for c in range(10)]
    ends = x[np.asarray(first)]  # pairs 0-1, 2-3, 4-5, 6-7, 8-9: the first of each class
    z = encode(model, ends, solver="tab3", nfe=100, **kw)
    z0, z1 = z[0::2], z[1::2]
    weights = jnp.linspace(0.0, 1.0, 9)
    path = jax.vmap(lambda w: slerp(z0, z1, w))(weights)  # (9, pairs, ...)
    path = jnp.swapaxes(path, 0, 1).reshape((-1, *data.shape))
    frames = decode(model, path, solver="tab3", nfe=100, **kw)
    save_image_grids(str(RESULTS / "applications_interpolation.png"),
                     {"slerp of tAB3 latents (NFE 100), decoded": np.asarray(frames)}, cols=9)
    return dict(rows=rows, n=int(x.shape[0]))


def _class_stats(clf, samples, labels):
    """Per class: agreement of the classifier's top digit with the label, Frechet distance
    and feature-spread ratio against all real digits of that class (train + test)."""
    from deis_jax.training import frechet_distance, load_dataset

    real = load_dataset("digits")
    real_x = np.concatenate([real.train, real.test])
    real_y = np.concatenate([real.train_labels, real.test_labels])
    probs = np.asarray(clf.probs(samples))
    feats, real_f = np.asarray(clf.features(samples)), np.asarray(clf.features(real_x))
    agree = float(np.mean(probs[:, :10].argmax(-1) == labels))
    fd, spread = [], []
    for c in range(10):
        a, b = feats[labels == c], real_f[real_y == c]
        fd.append(frechet_distance(a, b))
        spread.append(float(np.trace(np.cov(a, rowvar=False))
                            / np.trace(np.cov(b, rowvar=False))))
    return dict(agreement=agree, class_frechet=float(np.mean(fd)),
                spread_ratio=float(np.mean(spread)))


def _scale_sweep(model, guide, scales, n_per_class, shape, extra=None):
    """Samples of ``guide(model, labels, scale, extra)`` (a guided :class:`deis_jax.Model`)
    with tAB3 at NFE 10 for every scale, ``n_per_class`` per class from one ``x_T``, in one
    jitted ``jax.vmap`` over the scale (the model -- its parameters -- and ``extra`` are
    data). Returns ``(samples (S, n, ...), rows of :func:`_class_stats` per scale, seconds of
    the first call, seconds of a second, compiled, call)``."""
    from deis_jax import sample
    from deis_jax.training import digit_classifier

    labels = jnp.arange(10 * n_per_class) % 10
    x_T = model.schedule.prior_sample(jax.random.key(5), (labels.shape[0], *shape))

    @jax.jit
    def run(scales, model, extra):
        def one(w):
            return sample(guide(model, labels, w, extra), x_T, solver="tab3", nfe=10)
        return jax.vmap(one)(scales)

    scales = jnp.asarray(scales, jnp.float32)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        out = jax.block_until_ready(run(scales, model, extra))
        seconds.append(time.perf_counter() - start)
    out, clf = np.clip(np.asarray(out), -1, 1), digit_classifier()
    rows = [dict(scale=float(w), **_class_stats(clf, x, np.asarray(labels)))
            for w, x in zip(np.asarray(scales), out)]
    for r in rows:
        print("guidance", r, flush=True)
    return out, rows, *seconds


def cfg(work: pathlib.Path, n_per_class: int = 100):
    """Classifier-free guidance of the conditional digits U-Net, tAB3 at NFE 10, 100 samples
    per class from the same ``x_T`` at every scale, all scales in one ``jax.vmap``-ed call."""
    from deis_jax.guidance import classifier_free
    from deis_jax.plots import save_image_grids

    model, data, train_s = digits_model(work, conditional=True)

    def guide(model, labels, w, _):  # null label: class 10 (of 10 classes)
        return classifier_free(model.replace(cond=labels), w,
                               null_cond=jnp.full_like(labels, 10))

    out, rows, first, again = _scale_sweep(model, guide, CFG_SCALES, n_per_class, data.shape)
    panels = {f"w = {w:g}": x[:80] for w, x in zip(CFG_SCALES, out) if w in (0.0, 1.0, 3.0, 6.0)}
    save_image_grids(str(RESULTS / "applications_cfg.png"), panels, cols=10)
    return dict(rows=rows, n_per_class=n_per_class, seconds_first_call=first,
                seconds_compiled=again, train_seconds=train_s)


CLF_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)
CLF_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def classifier(work: pathlib.Path, steps: int = 3000, n_per_class: int = 100):
    """A noise-conditional digit classifier (MLP 256 x 3, :mod:`deis_jax.training.classifier`)
    trained on the VP-linear marginals of the digits; its accuracy on noised test digits, and
    classifier guidance of the unconditional U-Net with it (tAB3, NFE 10, the scales in one
    vmapped call)."""
    from deis_jax.guidance import classifier_guidance
    from deis_jax.training.classifier import train_noisy_classifier

    model, data, _ = digits_model(work, conditional=False)
    start = time.perf_counter()
    clf = train_noisy_classifier(data, model.schedule, steps=steps, seed=0)
    train_s = time.perf_counter() - start
    x0 = jnp.asarray(data.test)
    accuracy = []
    for t in CLF_TIMES:
        tt = jnp.full((x0.shape[0],), t)
        noise = jax.random.normal(jax.random.key(9), x0.shape)
        x_t = model.schedule.alpha(tt)[:, None, None, None] * x0 + model.schedule.sigma(
            tt)[:, None, None, None] * noise
        pred = jnp.argmax(clf.classifier_fn(clf.params, x_t, tt), -1)
        accuracy.append(float(jnp.mean(pred == data.test_labels)))

    def guide(model, labels, s, clf_params):
        return classifier_guidance(model, clf.classifier_fn, s, label=labels,
                                   classifier_params=clf_params)

    _, rows, seconds, _ = _scale_sweep(model, guide, CLF_SCALES, n_per_class, data.shape,
                                       clf.params)
    return dict(rows=rows, accuracy=accuracy, train_seconds=train_s, steps=steps,
                seconds=seconds, n_per_class=n_per_class)


def inpainting(work: pathlib.Path):
    """Inpaint the lower half of the 359 test digits (the top 4 rows known) with the
    unconditional model: Score-SDE's predictor-corrector sampler and tAB3 with the
    replacement hook; MSE over the generated half and the classifier's agreement with the
    true label; as a baseline, the lower half of the training digit nearest in the upper
    half."""
    from deis_jax.conditioning import inpaint
    from deis_jax.plots import save_image_grids
    from deis_jax.training import digit_classifier

    model, data, _ = digits_model(work, conditional=False)
    y = jnp.asarray(data.test)
    mask = jnp.zeros(data.shape).at[:4].set(1.0)  # rows 0-3 known
    x_T = model.schedule.prior_sample(jax.random.key(3), y.shape)
    clf = digit_classifier()
    rows, panels = [], {"truth": np.asarray(y[:64]), "known top half": np.asarray(
        jnp.where(mask > 0, y, -1.0)[:64])}
    for solver, nfe in (("pc", 20), ("pc", 100), ("pc", 1000), ("tab3", 10), ("tab3", 20),
                        ("tab3", 50)):
        start = time.perf_counter()
        x = inpaint(model, x_T, y, mask, key=jax.random.key(4), solver=solver, nfe=nfe)
        x = np.clip(np.asarray(jax.block_until_ready(x)), -1, 1)
        seconds = time.perf_counter() - start
        probs = np.asarray(clf.probs(x))
        rows.append(dict(solver=solver, nfe=nfe, seconds=seconds,
                         mse=float(np.mean((x - np.asarray(y))[:, 4:] ** 2)),
                         agreement=float(np.mean(probs[:, :10].argmax(-1) == data.test_labels))))
        print("inpaint", rows[-1], flush=True)
        if nfe in (1000, 10):
            panels[f"{solver}, NFE {nfe}"] = x[:64]
        jax.clear_caches()
    # Baseline: the lower half of the training digit whose upper half is nearest.
    top = lambda a: np.asarray(a)[:, :4].reshape(len(a), -1)  # noqa: E731
    nearest = np.argmin(((top(y)[:, None] - top(data.train)[None]) ** 2).sum(-1), axis=1)
    x = np.concatenate([np.asarray(y)[:, :4], data.train[nearest][:, 4:]], axis=1)
    rows.append(dict(solver="nearest training digit (upper half)", nfe=0, seconds=0.0,
                     mse=float(np.mean((x - np.asarray(y))[:, 4:] ** 2)),
                     agreement=float(np.mean(np.asarray(clf.probs(x))[:, :10].argmax(-1)
                                             == data.test_labels))))
    print("inpaint", rows[-1], flush=True)
    truth_probs = np.asarray(clf.probs(np.asarray(y)))
    save_image_grids(str(RESULTS / "applications_inpainting.png"), panels)
    return dict(rows=rows, n=int(y.shape[0]), truth_agreement=float(
        np.mean(truth_probs[:, :10].argmax(-1) == data.test_labels)))


def mixtures():
    """Parts 1-3 (exact mixtures, float64)."""
    with jax.enable_x64(True):
        return dict(likelihood=likelihood_rows(), fixed_grid=fixed_grid_rows(),
                    hutchinson=hutchinson_rows(), inversion=inversion_rows())


def mixture_lines(lik, fixed, hut, inv):
    lines = ["## Exact Gaussian mixtures", "",
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
    return lines


def _scale_table(symbol, rows):
    return ([f"| {symbol} | agreement | within-class Frechet | feature spread / real |",
             "|---:|---:|---:|---:|"]
            + [f"| {r['scale']:g} | {r['agreement']:.1%} | {r['class_frechet']:.2f} | "
               f"{r['spread_ratio']:.2f} |" for r in rows])


def digits_lines(kept):
    lines = ["## Digits (8x8, small U-Net, VP-linear)", "",
             f"Models: the small digits U-Net trained {DIGIT_STEPS} steps (batch 128) "
             "unconditionally, and class-conditionally with label dropout 0.1 (one network "
             "for eps(x, t, y) and eps(x, t, null)); checkpoints kept in `--work`."]
    if "bpd" in kept:
        b = kept["bpd"]
        lines += ["", "### Bits/dim on the test split", "",
                  "The 359 test digits; levels k = 0..16 (x = k/8 - 1) dequantised uniformly "
                  "into 17 cells of width 1/8 centred on the training values, i.e. "
                  "`data_range = (-1 - 1/16, 1 + 1/16)`, `n_bins = 17` (scaling offset "
                  "64 log(2.125)); Tsit5, rtol = atol = 1e-5, one solve for the batch; "
                  "Hutchinson with 2 Rademacher probes, or the exact divergence on the first "
                  "digits (same dequantisation and probes). A uniform model over the 17 levels "
                  f"scores {b['uniform_bpd']:.3f} bits/dim. Unconditional model trained in "
                  f"{b['train_seconds']:.0f} s.", "",
                  "| dequantisation draw | divergence | digits | bits/dim (mean) | "
                  "std over digits | NFE | seconds |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['draw']} | {r['divergence']} | {r['n']} | {r['bpd']:.3f} | "
                  f"{r['bpd_std']:.3f} | {r['nfe']} | {r['seconds']:.1f} |" for r in b["rows"]]
    if "inversion" in kept:
        v = kept["inversion"]
        lines += ["", "### Inversion: encode then decode the test digits", "",
                  f"{v['n']} test digits encoded to x_T and decoded with the same solver and "
                  "NFE per direction (log-SNR grid); RMSE per digit (data in [-1, 1]), mean "
                  "over digits, and the per-dimension MSE (as in DDIM's Table 2).", "",
                  "| solver | " + " | ".join(f"NFE {n}" for n in INV_NFES) + " |",
                  "|---|" + "---:|" * len(INV_NFES)]
        for solver in ("ddim", "tab3"):
            rs = [r for r in v["rows"] if r["solver"] == solver]
            lines.append(f"| {solver} RMSE | " + " | ".join(f"{r['rmse']:.2e}" for r in rs)
                         + " |")
            lines.append(f"| {solver} MSE | " + " | ".join(f"{r['mse']:.2e}" for r in rs)
                         + " |")
        lines += ["", "Each direction alone: the encoding's RMSE against the tAB3 NFE-400 "
                  "latent of the same digits, and the RMSE of decoding that latent against "
                  "the digits.", "", "| solver | direction | "
                  + " | ".join(f"NFE {n}" for n in INV_NFES) + " |",
                  "|---|---|" + "---:|" * len(INV_NFES)]
        for solver in ("ddim", "tab3"):
            rs = [r for r in v["rows"] if r["solver"] == solver]
            for name in ("encode", "decode"):
                lines.append(f"| {solver} | {name} | " + " | ".join(
                    f"{r[name + '_rmse']:.2e}" for r in rs) + " |")
        lines += ["", "Interpolation: five pairs of test digits (the first 0 and 1, 2 and 3, ..., "
                  "8 and 9 of the test split) encoded with tAB3 (NFE 100), "
                  "their latents slerped at 9 weights and decoded: "
                  "`applications_interpolation.png`.", "",
                  "![interpolation](applications_interpolation.png)"]
    if "cfg" in kept:
        c = kept["cfg"]
        best = max(c["rows"], key=lambda r: r["agreement"])
        lines += ["", "### Classifier-free guidance, conditional U-Net, tAB3 at NFE 10", "",
                  f"{c['n_per_class']} samples per class (the same x_T at every scale); all "
                  f"{len(c['rows'])} scales in one `jax.vmap`-ed call over the scale "
                  f"({c['seconds_first_call']:.1f} s with compilation, "
                  f"{c['seconds_compiled']:.1f} s compiled). Agreement: the shipped digit "
                  "classifier's top digit equals the requested label. Within-class Frechet: "
                  "classifier features of the samples of a class against all 1,797 real digits "
                  "of that class, mean over classes. Spread: trace of the samples' feature "
                  "covariance over the real class's (1 = as diverse as the data), mean over "
                  "classes.", "",
                  *_scale_table("w", c["rows"])]
        lines += ["", f"Best agreement {best['agreement']:.1%} at w = {best['scale']:g} "
                  f"(target >= 95%). Conditional model trained in {c['train_seconds']:.0f} s.",
                  "", "![cfg](applications_cfg.png)"]
    if "classifier" in kept:
        c = kept["classifier"]
        lines += ["", "### Classifier guidance with a noise-conditional classifier", "",
                  f"`deis_jax.training.classifier.train_noisy_classifier` (MLP 256 x 3 on the "
                  f"flattened digits, time embedding as the score networks), {c['steps']} "
                  f"steps on the VP-linear marginals of the digits train split "
                  f"({c['train_seconds']:.0f} s). Accuracy on the test digits noised to "
                  "x_t: " + ", ".join(f"t = {t:g}: {a:.1%}" for t, a in
                                       zip(CLF_TIMES, c["accuracy"])) + ".", "",
                  "Guiding the unconditional U-Net (`guidance.classifier_guidance`), tAB3 at "
                  f"NFE 10, {c['n_per_class']} samples per class, all scales in one vmapped "
                  f"call ({c['seconds']:.1f} s with compilation); columns as in the "
                  "classifier-free table (agreement judged by the shipped, noise-free "
                  "classifier).", "",
                  *_scale_table("s", c["rows"])]
    if "inpainting" in kept:
        q = kept["inpainting"]
        lines += ["", "### Inpainting the lower half of the test digits", "",
                  f"{q['n']} test digits, rows 0-3 known, rows 4-7 generated by the "
                  "unconditional model with the replacement hook "
                  "(`deis_jax.conditioning.inpaint`); MSE over the generated half (data in "
                  "[-1, 1]) and the classifier's agreement with the true label (on the real "
                  f"test digits: {q['truth_agreement']:.1%}).", "",
                  "| sampler | NFE | MSE (lower half) | agreement with the true label | "
                  "seconds |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['solver']} | {r['nfe'] or '-'} | {r['mse']:.4f} | "
                  f"{r['agreement']:.1%} | {r['seconds']:.1f} |" for r in q["rows"]]
        lines += ["", "![inpainting](applications_inpainting.png)"]
    return lines


def write(kept):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "applications.json").write_text(json.dumps(kept, indent=1))
    lines = ["# Applications", "", "Written by `benchmarks/applications.py` (see its "
             "docstring); wall time of each part in the last run: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in kept.get("wall_s", {}).items()) + ".",
             ""]
    if "mixtures" in kept:
        m = kept["mixtures"]
        lines += mixture_lines(m["likelihood"], m["fixed_grid"], m["hutchinson"],
                               m["inversion"]) + [""]
    lines += digits_lines(kept)
    (RESULTS / "applications.md").write_text("\n".join(lines) + "\n")


PARTS = {"mixtures": lambda work: mixtures(), "bpd": bits_per_dim,
         "inversion": digits_inversion, "cfg": cfg, "classifier": classifier,
         "inpainting": inpainting}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/deis_jax_applications",
                        help="trained models and the results of each part")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts to (re)compute: " + ", ".join(PARTS)
                        + " ('' rewrites the tables from the kept parts)")
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    wall_file = work / "wall_s.json"
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    for part in filter(None, args.parts.split(",")):
        start = time.perf_counter()
        (work / f"{part}.json").write_text(json.dumps(PARTS[part](work)))
        wall[part] = time.perf_counter() - start
        wall_file.write_text(json.dumps(wall))
        jax.clear_caches()
    kept = {part: json.loads((work / f"{part}.json").read_text())
            for part in PARTS if (work / f"{part}.json").exists()}
    write({**kept, "wall_s": wall})


if __name__ == "__main__":
    main()
