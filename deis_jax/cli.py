"""The ``deis-jax`` command line: ``train``, ``sample``, ``demo`` and ``bench``.

Thin wrappers over :mod:`deis_jax.training` and :func:`deis_jax.sample`::

    deis-jax train --data checkerboard --steps 3000 --out runs/cb
    deis-jax sample --ckpt runs/cb --solver tab3 --nfe 10 --n 2000 --out cb.png
    deis-jax demo                      # train, sample with 4 solvers, write ./demo_out
    deis-jax bench                     # run benchmarks/accuracy.py

Every subcommand has ``--help``. Errors (unknown dataset or solver, bad numbers, a missing
checkpoint) exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

__all__ = ["main", "build_parser"]

SCHEDULE_CHOICES = ("vp_linear", "vp_cosine", "sub_vp", "ve", "edm", "vp_discrete")
DEMO_SOLVERS = ("ddim", "tab3", "dpmpp_3m", "unipc3")
DDPM_STEPS = 1000


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# ---------------------------------------------------------------------------- helpers


def make_schedule(name: str):
    """A schedule by CLI name (``vp_discrete``: DDPM's 1000 linear betas 1e-4..0.02)."""
    from deis_jax import schedules

    if name == "vp_discrete":
        return schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, DDPM_STEPS))
    return getattr(schedules, name)()


def default_spec(data, schedule_name: str = "vp_linear", *, loss: str | None = None,
                 prediction: str = "eps", weighting: str = "simple", size: str = "small"):
    """The built-in model for a dataset: an MLP for points, a U-Net for 8x8 images.

    ``loss`` defaults to ``"edm"`` for the EDM schedule, ``"ddpm"`` for ``vp_discrete`` and
    ``"dsm"`` otherwise. ``size`` is ``"small"`` (demo, tests) or ``"base"`` (benchmarks).
    """
    from deis_jax.training import DiffusionSpec, schedule_to_dict

    if loss is None:
        loss = {"edm": "edm", "vp_discrete": "ddpm"}.get(schedule_name, "dsm")
    time_scale = 1.0 if loss == "ddpm" else 1000.0
    if data.kind == "images":
        channels = [16, 32] if size == "small" else [32, 64]
        model = {"name": "unet", "channels": channels, "time_scale": time_scale}
    else:
        model = {"name": "mlp", "hidden": 128 if size == "small" else 256, "depth": 3,
                 "time_scale": time_scale}
    return DiffusionSpec(
        model=model, schedule=schedule_to_dict(make_schedule(schedule_name)), loss=loss,
        prediction=prediction, weighting=weighting,
        data={"name": data.name, "shape": list(data.shape), "kind": data.kind},
    )


def _prior(loaded, n: int, seed: int):
    import jax

    shape = tuple(loaded.spec.data["shape"])
    key_prior, key_solver = jax.random.split(jax.random.key(seed))
    return loaded.schedule.prior_sample(key_prior, (n, *shape)), key_solver


def draw_samples(loaded, n: int, *, solver: str, nfe: int, seed: int = 0,
                 grid: str = "quadratic"):
    """``n`` samples from a :class:`~deis_jax.training.LoadedModel` (float32 numpy)."""
    import deis_jax

    x_T, key = _prior(loaded, n, seed)
    x = deis_jax.sample(loaded.model_fn, loaded.schedule, x_T, solver=solver, nfe=nfe,
                        grid=grid, prediction=loaded.prediction, key=key)
    return np.asarray(x, np.float32)


def reference_samples(loaded, n: int, *, seed: int = 0, tol: float = 1e-5):
    """Near-exact probability-flow ODE solutions from the same ``x_T`` as
    :func:`draw_samples`: ``deis_jax.adaptive.solve_ode`` (Tsit5, ``rtol = atol = tol``)
    when that module is available, else 1000-step DDIM.

    Returns:
      ``(samples, label)``.
    """
    try:
        from deis_jax.adaptive import solve_ode
    except ImportError:
        return draw_samples(loaded, n, solver="ddim", nfe=1000, seed=seed), "ddim, NFE 1000"
    x_T, _ = _prior(loaded, n, seed)
    sol = solve_ode(loaded.model_fn, loaded.schedule, x_T, rtol=tol, atol=tol,
                    prediction=loaded.prediction)
    return np.asarray(sol.x, np.float32), f"adaptive Tsit5 tol {tol:g}, NFE {int(sol.nfe)}"


def save_scatter(path: str, panels: dict, *, lim: float = 3.0) -> None:
    """One scatter plot per ``{title: points (n, 2)}`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5, color="k", rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid(images, cols: int | None = None) -> np.ndarray:
    """Tile ``(n, h, w, 1)`` images in ``[-1, 1]`` into one ``[0, 1]`` array (ink = 1) with
    1-px blank gaps."""
    images = np.clip((np.asarray(images)[..., 0] + 1) / 2, 0, 1)
    n, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = img
    return grid


def save_image_grids(path: str, panels: dict, *, cols: int = 8) -> None:
    """One image grid per ``{title: images (n, h, w, 1)}`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (title, imgs) in zip(axes[0], panels.items()):
        ax.imshow(image_grid(imgs[: cols * cols], cols), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_solvers(loaded, data, solvers: Sequence[str], *, nfe: int, n: int,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """Sample with each solver at ``nfe`` and with the reference; score against held-out data.

    Returns:
      ``(rows, samples)``: one dict per sampler (``solver``, ``nfe``, ``metric``, ``ratio`` to
      the reference, ``recognised`` for digits, ``seconds``) and ``{label: samples}``.
    """
    from deis_jax.training import digit_quality, energy_distance

    def score(x):
        if data.kind == "images":
            q = digit_quality(x, data.test)
            return q.frechet, q.recognised
        return energy_distance(x, data.test), None

    t0 = time.perf_counter()
    ref, ref_label = reference_samples(loaded, n, seed=seed)
    ref_metric, ref_rec = score(ref)
    rows = [{"solver": f"reference ({ref_label})", "nfe": None, "metric": ref_metric,
             "ratio": 1.0, "recognised": ref_rec, "seconds": time.perf_counter() - t0}]
    samples = {"reference": ref}
    for name in solvers:
        t0 = time.perf_counter()
        x = draw_samples(loaded, n, solver=name, nfe=nfe, seed=seed)
        metric, rec = score(x)
        rows.append({"solver": name, "nfe": nfe, "metric": metric,
                     "ratio": metric / ref_metric if ref_metric > 0 else float("nan"),
                     "recognised": rec, "seconds": time.perf_counter() - t0})
        samples[f"{name}, NFE {nfe}"] = x
    return rows, samples


def quality_table(dataset: str, kind: str, rows: list[dict]) -> str:
    """Markdown table of :func:`evaluate_solvers` rows."""
    metric = "Frechet distance (classifier features)" if kind == "images" else "energy distance"
    head = f"| {dataset}: sampler | NFE | {metric} | / reference |"
    sep = "|---|---:|---:|---:|"
    if kind == "images":
        head += " recognised digits |"
        sep += "---:|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['solver']} | {r['nfe'] if r['nfe'] is not None else '-'} | "
                f"{r['metric']:.4g} | {r['ratio']:.2f} |")
        if kind == "images":
            line += f" {100 * r['recognised']:.1f}% |"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- commands


def _load_data(name: str):
    from deis_jax.training import load_dataset

    return load_dataset(name)


def sample_quality_eval(spec, data, *, n: int, nfe: int = 10, solver: str = "tab3"):
    """An ``eval_fn(state)`` for :func:`~deis_jax.training.fit`: ``n`` samples of the EMA
    model with ``solver`` at ``nfe``, scored against held-out data."""
    import jax

    import deis_jax
    from deis_jax.training import digit_quality, energy_distance

    schedule = spec.build_schedule()
    model = spec.build_model()

    def eval_fn(state):
        model_fn, prediction = spec.sampling_model(state.ema_params, model)
        x_T = schedule.prior_sample(jax.random.key(0), (n, *data.shape))
        x = np.asarray(deis_jax.sample(model_fn, schedule, x_T, solver=solver, nfe=nfe,
                                       prediction=prediction))
        if data.kind == "images":
            q = digit_quality(x, data.test)
            return {f"{solver}_frechet": q.frechet, f"{solver}_recognised": q.recognised}
        return {f"{solver}_energy": energy_distance(x, data.test)}

    return eval_fn


def cmd_train(args) -> int:
    from deis_jax.training import TrainConfig, fit

    data = _load_data(args.data)
    spec = default_spec(data, args.schedule, loss=args.loss, prediction=args.prediction,
                        weighting=args.weighting, size=args.size)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=min(100, args.steps // 10), seed=args.seed,
                         log_every=args.log_every, eval_every=args.eval_every,
                         ckpt_every=args.ckpt_every, keep=args.keep)
    mesh = None
    if args.devices > 1:
        from deis_jax.training import make_mesh

        mesh = make_mesh(args.devices)
    eval_fn = None
    if args.eval_every and (data.kind == "points" or data.name == "digits"):
        eval_fn = sample_quality_eval(spec, data, n=1000 if data.kind == "points" else 256)
    result = fit(spec, data, config, ckpt_dir=args.out, mesh=mesh, eval_fn=eval_fn,
                 progress=args.progress)
    print(f"trained {args.data} to step {int(result.state.step)} in {result.seconds:.1f}s "
          f"({result.steps_per_s:.1f} steps/s); checkpoint in {args.out}")
    return 0


def cmd_sample(args) -> int:
    from deis_jax.training import load_model

    loaded = load_model(args.ckpt)
    x = draw_samples(loaded, args.n, solver=args.solver, nfe=args.nfe, seed=args.seed,
                     grid=args.grid)
    stem, ext = os.path.splitext(args.out)
    if ext not in (".png", ".npz"):
        raise CliError(f"--out must end in .png or .npz, got out={args.out!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(stem + ".npz", samples=x, solver=args.solver, nfe=args.nfe, seed=args.seed,
             step=loaded.step)
    written = [stem + ".npz"]
    if ext == ".png":
        title = f"{loaded.spec.data.get('name', '')}: {args.solver}, NFE {args.nfe}"
        if x.ndim == 4:
            save_image_grids(args.out, {title: x}, cols=int(np.ceil(np.sqrt(min(len(x), 256)))))
        else:
            save_scatter(args.out, {title: x.reshape(len(x), -1)[:, :2]})
        written.append(args.out)
    print(f"{args.n} samples ({args.solver}, NFE {args.nfe}, step {loaded.step}) -> "
          + ", ".join(written))
    return 0


def run_demo(out: str, *, steps_2d: int, steps_digits: int, n: int, nfe: int,
             budget_s: float, progress: str = "auto") -> str:
    """Train, sample with the demo solvers, write a figure and a markdown table to ``out``.

    Digits are trained only if the checkerboard part left time in ``budget_s``; their training
    stops early (and says so) when the budget would be exceeded.

    Returns:
      The markdown report.
    """
    from deis_jax import solver_names
    from deis_jax.training import TrainConfig, fit, load_model

    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    solvers = [s for s in DEMO_SOLVERS if s in solver_names()]
    skipped = [s for s in DEMO_SOLVERS if s not in solver_names()]
    sections, figures = [], {}
    plan = [("checkerboard", steps_2d, 512)]
    if steps_digits > 0:
        plan.append(("digits", steps_digits, 128))
    for name, steps, batch in plan:
        elapsed = time.perf_counter() - t_start
        if name == "digits" and elapsed > 0.45 * budget_s:
            sections.append(f"digits skipped: {elapsed:.0f}s of the {budget_s:.0f}s budget "
                            "already used")
            continue
        data = _load_data(name)
        spec = default_spec(data)
        config = TrainConfig(steps=steps, batch_size=batch, lr=2e-3,
                             warmup_steps=min(100, steps // 10), log_every=max(steps // 10, 1))
        ckpt = os.path.join(out, f"ckpt_{name}")
        limit = None if name == "checkerboard" else 0.55 * budget_s - elapsed
        result = fit(spec, data, config, ckpt_dir=ckpt, progress=progress,
                     max_seconds=limit)
        loaded = load_model(ckpt)
        n_eval = n if data.kind == "points" else min(n, 500)
        rows, samples = evaluate_solvers(loaded, data, solvers, nfe=nfe, n=n_eval)
        header = (f"### {name}: {int(result.state.step)} training steps in "
                  f"{result.seconds:.0f}s ({result.steps_per_s:.1f} steps/s), "
                  f"{n_eval} samples per sampler")
        sections.append(header + "\n\n" + quality_table(name, data.kind, rows))
        figures[name] = (data, samples)
    fig_path = os.path.join(out, "comparison.png")
    _comparison_figure(fig_path, figures)
    note = f"solvers not registered (skipped): {', '.join(skipped)}\n\n" if skipped else ""
    report = (f"## deis-jax demo (NFE {nfe})\n\n{note}" + "\n\n".join(sections)
              + f"\n\nfigure: {fig_path}\ntotal time: {time.perf_counter() - t_start:.0f}s\n")
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(report)
    return report


def _comparison_figure(path: str, figures: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = max(len(s) + 1 for _, s in figures.values())
    fig, axes = plt.subplots(len(figures), ncol, figsize=(2.6 * ncol, 2.8 * len(figures)),
                             squeeze=False)
    for row, (name, (data, samples)) in zip(axes, figures.items()):
        panels = {f"{name}: held-out data": data.test[: len(next(iter(samples.values())))],
                  **samples}
        for ax, (title, x) in zip(row, panels.items()):
            if data.kind == "images":
                ax.imshow(image_grid(x[:64], 8), cmap="gray_r", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.scatter(x[:, 0], x[:, 1], s=0.4, alpha=0.5, color="k", rasterized=True)
                ax.set_xlim(-3, 3)
                ax.set_ylim(-3, 3)
                ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        for ax in row[len(panels):]:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_demo(args) -> int:
    report = run_demo(args.out, steps_2d=args.steps_2d, steps_digits=args.steps_digits,
                      n=args.n, nfe=args.nfe, budget_s=args.budget, progress=args.progress)
    print(report)
    return 0


def cmd_bench(args) -> int:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [args.root] if args.root is not None else [os.getcwd(), package_root]
    for root in roots:
        script = os.path.join(root, "benchmarks", "accuracy.py")
        if os.path.exists(script):
            print(f"running {script}", flush=True)
            return subprocess.call([sys.executable, script, *args.extra], cwd=root)
    raise CliError(f"benchmarks/accuracy.py not found under {' or '.join(roots)} (it ships "
                   "with a source checkout, not the installed package): run from the "
                   "repository root or pass --root")


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from deis_jax import GRID_KINDS, solver_names
    from deis_jax.parameterization import PREDICTIONS
    from deis_jax.training import DATASETS, LOSSES, WEIGHTINGS
    from deis_jax.training.trainer import PROGRESS

    parser = argparse.ArgumentParser(
        prog="deis-jax", description="Train diffusion models and sample them with DEIS and "
        "friends.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a score model on a built-in dataset",
                       description="Train a score model; resumes when --out holds a "
                       "checkpoint.")
    p.add_argument("--data", required=True, choices=DATASETS)
    p.add_argument("--steps", type=_int_at_least(1), required=True)
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--schedule", default="vp_linear", choices=SCHEDULE_CHOICES)
    p.add_argument("--loss", choices=LOSSES, default=None,
                   help="default: edm for --schedule edm, ddpm for vp_discrete, else dsm")
    p.add_argument("--prediction", default="eps",
                   choices=[c for c in PREDICTIONS if c != "edm"])
    p.add_argument("--weighting", default="simple", choices=WEIGHTINGS)
    p.add_argument("--size", default="small", choices=("small", "base"))
    p.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="default 512 for 2-d data, 128 for digits")
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--log-every", type=_int_at_least(1), default=100)
    p.add_argument("--eval-every", type=_int_at_least(0), default=0,
                   help="held-out loss and tab3/NFE-10 sample quality every N steps")
    p.add_argument("--ckpt-every", type=_int_at_least(0), default=0,
                   help="0: save at the end only")
    p.add_argument("--keep", type=_int_at_least(1), default=3)
    p.add_argument("--devices", type=_int_at_least(1), default=1,
                   help="data-parallel over this many devices")
    p.add_argument("--progress", default="auto", choices=PROGRESS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a trained checkpoint",
                       description="Sample a checkpoint; writes .npz (and a PNG grid or "
                       "scatter plot when --out ends in .png).")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--solver", default="tab3", choices=solver_names())
    p.add_argument("--nfe", type=_int_at_least(1), default=10)
    p.add_argument("--grid", default="quadratic", choices=GRID_KINDS,
                   help="time grid (log_snr suits vp_cosine and EDM better)")
    p.add_argument("--n", type=_int_at_least(1), default=64)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="train small models and compare samplers at NFE 10",
                       description="Train on 2-d checkerboard (and 8x8 digits if time "
                       "allows), sample with ddim / tab3 / dpmpp_3m / unipc3, write a figure "
                       "and a quality table.")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps-2d", type=_int_at_least(1), default=3000)
    p.add_argument("--steps-digits", type=_int_at_least(0), default=2000,
                   help="0 skips the digits")
    p.add_argument("--n", type=_int_at_least(2), default=2000, help="samples per sampler")
    p.add_argument("--nfe", type=_int_at_least(1), default=10)
    p.add_argument("--budget", type=_positive_float, default=240.0,
                   help="seconds; digits training stops early to stay within it")
    p.add_argument("--progress", default="auto", choices=PROGRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run benchmarks/accuracy.py",
                       description="Run the solver accuracy benchmark (benchmarks/accuracy.py "
                       "of a source checkout); other arguments are passed to the script.")
    p.add_argument("--root", default=None,
                   help="repository root (default: the current directory, then the checkout "
                   "this package is installed from)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deis-jax``; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if getattr(args, "batch_size", 0) is None:
        args.batch_size = 128 if args.data == "digits" else 512
    try:
        return args.func(args)
    except (CliError, FileNotFoundError, ValueError) as err:
        print(f"deis-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
