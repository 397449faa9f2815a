"""Sampler speed, measured side by side in one process (ratios: absolute times drift).

For each solver family at NFE ~5, 10, 20, 50 (the nearest NFE the solver reaches) and two
models -- an MLP eps-model (d = 64, width 512, 3 hidden layers, batch 256) and the digits
U-Net (8x8x1, channels (32, 64) with attention, batch 64), both float32, built once as a
:class:`deis_jax.Model` whose parameters are data (``as_model(..., params=)``):

(a) ``t(jitted sampler) / t(compute limit)``, the limit being one jitted ``lax.scan`` that
    makes the same NFE model calls and nothing else (each call's output is the next call's
    input). Rounds of the two are interleaved, so load from other processes hits both alike;
    the minimum over rounds is reported.
(b) ``t(eager sample(model.replace(params=new), ...)) / t(the same with the same params)``:
    new parameters must reuse the executable (no retrace, no recompile), interleaved.
(c) the pattern stateful scheduler libraries force: a Python loop that calls a jitted
    "model + DDIM step" NFE times, against our single scan (DDIM and tAB3); ratio loop/scan.
(d) compile time (trace + lower + compile) against NFE.

Targets (issue "Sampler core v2"): (a) <= 1.05 for every multistep solver at NFE >= 10,
(b) <= 1.10, (d) compile(NFE 50) <= 1.5 x compile(NFE 5); (c) reported. Writes
``results/speed.md``::

    python benchmarks/speed.py            # both models, ~25 min on 2 CPU cores
    python benchmarks/speed.py --quick    # MLP only, NFE 10 and 50
    python benchmarks/speed.py --models U-Net --solvers tab3,unipc3 --rounds 40 \
        --out speed_unet_recheck.md           # re-measure a subset with more rounds
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import as_model, get_solver, make_plan, sample, schedules, timesteps
from deis_jax.models import UNet
from deis_jax.solvers.ei import exp_linear

RESULTS = pathlib.Path(__file__).parent / "results"
MULTISTEP = ("ddim", "tab3", "rhoab3", "logrho3", "ipndm", "dpmpp_2m", "dpmpp_3m", "unipc3",
             "euler")
STAGES = ("rho_rk4", "dpm3", "dpm_fast", "dpmpp_2s", "edm_heun")
STOCHASTIC = ("ddpm", "sde_ei2", "edm_sde")
NFES = (5, 10, 20, 50)


def mlp_model(key, dim=64, width=512, batch=256):
    """``(model_fn(params, x, t), params, x)`` for the MLP eps-model."""
    sizes = [dim + 64, width, width, width, dim]
    keys = jax.random.split(key, len(sizes) - 1)
    params = [(jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
              for k, m, n in zip(keys, sizes[:-1], sizes[1:])]
    freqs = jnp.exp(jnp.linspace(0.0, 6.0, 32))
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    return _mlp, {"layers": params, "freqs": freqs}, x


def _mlp(params, x, t):
    freqs = params["freqs"]
    emb = jnp.concatenate([jnp.sin(t[:, None] * freqs[None]), jnp.cos(t[:, None] * freqs[None])],
                          axis=-1)
    h = jnp.concatenate([x, emb], axis=-1)
    for w, b in params["layers"][:-1]:
        h = jax.nn.silu(h @ w + b[None])
    w, b = params["layers"][-1]
    return h @ w + b[None]


def unet_model(key, batch=64):
    """``(model.apply, params, x)`` for the digits U-Net (the CLI's ``--size base``)."""
    net = UNet(channels=(32, 64))
    x = jax.random.normal(jax.random.key(1), (batch, 8, 8, 1))
    return net.apply, net.init(key, x, jnp.ones((batch,))), x


def _perturb(params, seed):
    """Parameters of the same structure with new values (a new checkpoint)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [v + 1e-3 * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)])


def _interleaved_min(fns, rounds):
    """Best-of-``rounds`` time of each ``fn()`` (all blocking), run alternately."""
    for fn in fns:
        fn()
    best = [np.inf] * len(fns)
    for _ in range(rounds):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def _reachable(sched, solver, target):
    """The NFE nearest ``target`` (tried in the order target, +1, -1, +2, +3) that
    ``solver`` makes exactly."""
    for nfe in (target, target + 1, target - 1, target + 2, target + 3):
        try:
            return make_plan(sched, solver, nfe=nfe).nfe
        except ValueError:
            continue
    raise ValueError(f"{solver.name}: no NFE near {target}")


def _limit_fn(model_fn, batch):
    """The compute limit: ``nfe`` model calls in one scan, nothing else."""

    @jax.jit
    def limit(params, x, ts):
        def body(x, t):
            return model_fn(params, x, jnp.broadcast_to(t, (batch,))), None

        return jax.lax.scan(body, x, ts)[0]

    return limit


def _sampler_fn(model, name, nfe):
    """``run(params, x)``: the sampler of ``model`` with new parameters,
    ``sample(model.replace(params=params), x, ...)``: the parameters are the argument, as a
    training loop hands new ones to the same model."""
    solver = get_solver(name)
    key = jax.random.key(0) if solver.stochastic else None

    def run(params, x):
        return sample(model.replace(params=params), x, solver=name, nfe=nfe, key=key)

    return run


def _ddim_step_fn(model_fn, sched):
    """One jitted model call + DDIM step, as a stateful scheduler's step() runs it."""

    @jax.jit
    def step(params, x, t, t_next):
        lin = exp_linear(sched, t, t_next, "eps")
        eps = model_fn(params, x, jnp.broadcast_to(t, x.shape[:1]))
        return lin.a * x - lin.scale * jnp.expm1(lin.hh) * eps

    return step


def measure(model_name, model_fn, params, x, sched, solvers, nfes, rounds, lines):
    batch = x.shape[0]
    limit = _limit_fn(model_fn, batch)
    model = as_model(model_fn, sched, params=params)
    pool = [_perturb(params, s) for s in range(1, 4)]  # new checkpoints
    rows, compile_s = [], {}
    for name in solvers:
        solver = get_solver(name)
        for target in nfes:
            nfe = _reachable(sched, solver, target)
            run = _sampler_fn(model, name, nfe)
            t0 = time.perf_counter()
            compiled = jax.jit(run).lower(params, x).compile()
            compile_s[(name, target)] = time.perf_counter() - t0
            ts_limit = jnp.linspace(1.0, 1e-3, nfe)
            t_limit, t_sampler = _interleaved_min(
                [lambda: jax.block_until_ready(limit(params, x, ts_limit)),
                 lambda: jax.block_until_ready(compiled(params, x))], rounds)
            counter = iter(range(10**9))
            t_same, t_new = _interleaved_min(
                [lambda: jax.block_until_ready(run(params, x)),
                 lambda: jax.block_until_ready(run(pool[next(counter) % len(pool)], x))],
                max(3, rounds // 3))
            rows.append((name, nfe, t_sampler, t_limit, t_new / t_same,
                         compile_s[(name, target)]))
            lines.append(f"| {model_name} | {name} | {nfe} | {1e3 * t_sampler:.2f} | "
                         f"{1e3 * t_limit:.2f} | {t_sampler / t_limit:.3f} | "
                         f"{t_new / t_same:.3f} | {compile_s[(name, target)]:.2f} |")
            print(lines[-1], flush=True)
    return rows, compile_s


def loop_vs_scan(model_name, model_fn, params, x, sched, nfes, rounds, lines):
    step = _ddim_step_fn(model_fn, sched)
    model = as_model(model_fn, sched, params=params)
    for nfe in nfes:
        ts = timesteps(sched, nfe, "quadratic")
        ts_host = [jnp.asarray(v) for v in np.asarray(ts)]

        def loop():
            y = x
            for t, t_next in zip(ts_host[:-1], ts_host[1:]):
                y = step(params, y, t, t_next)
            return jax.block_until_ready(y)

        scans = {n: jax.jit(_sampler_fn(model, n, nfe)) for n in ("ddim", "tab3")}
        t_loop, t_ddim, t_tab3 = _interleaved_min(
            [loop] + [lambda f=f: jax.block_until_ready(f(params, x)) for f in scans.values()],
            rounds)
        lines.append(f"| {model_name} | {nfe} | {1e3 * t_loop:.2f} | {1e3 * t_ddim:.2f} | "
                     f"{1e3 * t_tab3:.2f} | {t_loop / t_ddim:.2f} | {t_loop / t_tab3:.2f} |")
        print(lines[-1], flush=True)
        np.testing.assert_allclose(np.asarray(loop()), np.asarray(scans["ddim"](params, x)),
                                   rtol=1e-4, atol=1e-4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="MLP only, NFE 10 and 50")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default="MLP,U-Net", help="comma-separated subset")
    parser.add_argument("--solvers", default=None, help="comma-separated subset")
    parser.add_argument("--out", default="speed.md", help="file name under results/")
    args = parser.parse_args()
    sched = schedules.vp_linear()
    makers = {"MLP": mlp_model, "U-Net": unet_model}
    names = ["MLP"] if args.quick else args.models.split(",")
    models = {name: makers[name](jax.random.key(0)) for name in names}
    nfes = (10, 50) if args.quick else NFES
    solvers = tuple(args.solvers.split(",")) if args.solvers else \
        MULTISTEP + STAGES + STOCHASTIC
    head = [
        "# Sampler speed, measured side by side",
        "",
        f"CPU ({jax.devices()[0].device_kind}, {jax.device_count()} device), float32, parameters "
        "passed as data (`as_model(..., params=)`). Generated by `python benchmarks/speed.py "
        + " ".join(sys.argv[1:]) + f"`; best of {args.rounds} interleaved rounds.",
        "MLP: d = 64, width 512, 3 hidden layers, batch 256. U-Net: digits 8x8x1, channels "
        "(32, 64), attention, batch 64.",
        "",
        "(a) `limit` = one jitted `lax.scan` making the same NFE model calls and nothing else; "
        "`/ limit` = sampler / limit. (b) `new/same` = eager `sample(model.replace(params=new), "
        "...)` over the same call with the same parameters. (d) compile = trace + lower + "
        "compile of the jitted sampler.",
        "",
        "| model | solver | NFE | sampler ms | limit ms | (a) / limit | (b) new/same | "
        "(d) compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines, loop_lines, summary = list(head), [], []
    for model_name, (model_fn, params, x) in models.items():
        rows, compile_s = measure(model_name, model_fn, params, x, sched, solvers, nfes,
                                  args.rounds, lines)
        multistep = [r for r in rows if r[0] in MULTISTEP and r[1] >= 10] or rows
        worst = max(multistep, key=lambda r: r[2] / r[3])
        summary.append(f"- {model_name}: (a) worst multistep solver at NFE >= 10: {worst[0]} "
                       f"NFE {worst[1]}, {worst[2] / worst[3]:.3f}; median over them "
                       f"{np.median([r[2] / r[3] for r in multistep]):.3f}. (b) worst "
                       f"{max(r[4] for r in rows):.3f}. (d) compile(NFE 50)/compile(NFE 5): "
                       + ", ".join(f"{n} {compile_s[(n, nfes[-1])] / compile_s[(n, nfes[0])]:.2f}"
                                   for n in solvers))
        loop_vs_scan(model_name, model_fn, params, x, sched, nfes, args.rounds, loop_lines)
    lines += ["", "## (c) Python loop of jitted model + DDIM step vs one scan", "",
              "| model | NFE | loop ms | DDIM scan ms | tAB3 scan ms | loop / DDIM scan | "
              "loop / tAB3 scan |", "|---|---|---|---|---|---|---|"] + loop_lines
    lines += ["", "## Summary", ""] + summary
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
