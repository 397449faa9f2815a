"""The ``deis-jax`` command line: ``train``, ``sample``, ``tune-grid``, ``demo`` and ``bench``.

Argument parsing over :mod:`deis_jax.training`, :mod:`deis_jax.evaluate`,
:mod:`deis_jax.plots` and :mod:`deis_jax.demo`::

    deis-jax train --data checkerboard --steps 3000 --out runs/cb
    deis-jax sample --ckpt runs/cb --solver tab3 --nfe 10 --n 2000 --out cb.png
    deis-jax tune-grid --ckpt runs/cb --solver tab3 --nfe 5 --out grid.json
    deis-jax sample --ckpt runs/cb --grid grid.json --out cb5.png
    deis-jax train --data digits --conditional --steps 5000 --out runs/cd
    deis-jax sample --ckpt runs/cd --label 3 --guidance 2.0 --out threes.png
    deis-jax demo                      # shipped models x 5 solvers, train one, ./demo_out
    deis-jax bench                     # run benchmarks/accuracy.py

Every subcommand has ``--help``. Errors a user can cause (unknown dataset or solver, bad
numbers, a missing or foreign checkpoint, an output path that is a file or not writable, a
diverging run) exit with status 2 and a one-line message; output paths are checked before any
work. Warnings (a skipped damaged checkpoint step, a resumed run with another schedule length)
are one line each on stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from typing import Sequence

import jax
import numpy as np

from deis_jax import GRID_KINDS, evaluate, get_solver, plots, schedules, solver_names, training
from deis_jax._checks import check_writable_dir, check_writable_file
from deis_jax._files import atomic_write
from deis_jax._progress import PROGRESS
from deis_jax.demo import run_demo
from deis_jax.grid_files import load_grid, save_grid
from deis_jax.learned_grids import LOSSES, optimize_timesteps
from deis_jax.parameterization import PREDICTIONS

__all__ = ["main", "build_parser"]


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


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# ---------------------------------------------------------------------------- commands


def train_plan(args) -> tuple[training.Dataset, training.DiffusionSpec, training.TrainConfig]:
    """The dataset, model spec and training config that ``deis-jax train`` builds from its
    parsed arguments (also how :mod:`deis_jax.pretrained` checks an asset against its
    recipe)."""
    data = training.load_dataset(args.data)
    if args.conditional and data.n_classes is None:
        raise CliError(f"--conditional needs a labelled dataset, and --data {args.data} has "
                       "no labels (labelled: digits)")
    spec = training.default_spec(data, args.schedule, loss=args.loss,
                                 prediction=args.prediction, weighting=args.weighting,
                                 time_sampling=args.time_sampling, size=args.size,
                                 precision=args.precision, conditional=args.conditional,
                                 label_dropout=args.label_dropout)
    config = training.TrainConfig(
        steps=args.steps, lr=args.lr, warmup_steps=min(100, args.steps // 10), seed=args.seed,
        batch_size=(training.default_batch_size(data) if args.batch_size is None
                    else args.batch_size),
        log_every=args.log_every, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
        keep=args.keep)
    return data, spec, config


def cmd_train(args) -> int:
    check_writable_dir("--out", args.out)
    data, spec, config = train_plan(args)
    training.checkpoint_dir(args.out, create=True)
    start = training.latest_step(args.out)
    mesh = training.make_mesh(args.devices) if args.devices > 1 else None
    eval_fn = evaluate.sample_quality_eval(spec, data) if args.eval_every else None
    result = training.fit(spec, data, config, ckpt_dir=args.out, mesh=mesh, eval_fn=eval_fn,
                          progress=args.progress)
    if start is not None and int(result.state.step) == start:
        print(f"{args.out} already holds step {start} = --steps: nothing to train (pass a "
              "larger --steps to continue)")
        return 0
    print(f"trained {args.data} to step {int(result.state.step)} in {result.seconds:.1f}s "
          f"({result.steps_per_s:.1f} steps/s); checkpoint in {args.out}")
    return 0


def cmd_sample(args) -> int:
    stem, ext = os.path.splitext(args.out)
    if ext not in (".png", ".npz"):
        raise CliError(f"--out must end in .png or .npz, got out={args.out!r}")
    for path in {stem + ".npz", args.out}:
        check_writable_file("--out", path)
    model = training.load_model(args.ckpt)
    grid = "quadratic" if args.grid is None else args.grid
    if grid not in GRID_KINDS:
        if not grid.endswith(".json"):
            raise CliError(f"--grid must be a grid kind {list(GRID_KINDS)} or a grid file "
                           f"(.json, from deis-jax tune-grid), got grid={grid!r}")
        path = grid
        grid = load_grid(path)
        made = grid.metadata
        args.solver = made["solver"] if args.solver is None else args.solver
        args.nfe = made["nfe"] if args.nfe is None else args.nfe
        source = made.get("model") or {}
        if source.get("step") not in (None, model.info["step"]):
            warnings.warn(f"{path} was tuned on step {source.get('step')} of "
                          f"{source.get('ckpt')}; sampling step {model.info['step']} of "
                          f"{args.ckpt}")
    args.solver = "tab3" if args.solver is None else args.solver
    args.nfe = 10 if args.nfe is None else args.nfe
    guidance = 0.0 if args.guidance is None else args.guidance
    x = evaluate.draw_samples(model, args.n, solver=args.solver, nfe=args.nfe,
                              seed=args.seed, grid=grid, label=args.label,
                              guidance=guidance)
    extra = {} if args.label is None else {"label": args.label, "guidance": guidance}
    with atomic_write(stem + ".npz", "wb") as f:
        np.savez(f, samples=x, solver=args.solver, nfe=args.nfe, seed=args.seed,
                 step=model.info["step"], **extra)
    written = [stem + ".npz"]
    what = f"{args.solver}, NFE {args.nfe}" + (
        f", label {args.label}, guidance {guidance:g}" if args.label is not None else "")
    if ext == ".png":
        plots.save_samples(args.out, x, f"{model.info['spec'].data.get('name', '')}: {what}")
        written.append(args.out)
    print(f"{args.n} samples ({what}, step {model.info['step']}) -> " + ", ".join(written))
    return 0


def cmd_tune_grid(args) -> int:
    check_writable_file("--out", args.out)
    if not args.out.endswith(".json"):
        raise CliError(f"--out must end in .json, got out={args.out!r}")
    model = training.load_model(args.ckpt)
    key = jax.random.fold_in(jax.random.key(args.seed), 1)  # not the noise `sample` draws
    k_cal, k_val, k_batch = jax.random.split(key, 3)
    shape = tuple(model.info["spec"].data["shape"])
    result = optimize_timesteps(
        model, solver=args.solver, nfe=args.nfe,
        x_T_calibration=model.schedule.prior_sample(k_cal, (args.n_calibration, *shape)),
        x_T_validation=model.schedule.prior_sample(k_val, (args.n_validation, *shape)),
        teacher_tol=args.teacher_tol, init_grid=args.init, steps=args.steps, loss=args.loss,
        learning_rate=args.lr, batch_size=args.batch_size,
        key=None if args.batch_size is None else k_batch,
        model_info={"ckpt": os.path.abspath(args.ckpt), "step": model.info["step"]},
        progress=args.progress)
    save_grid(args.out, result.ts, schedule=model.schedule)
    what = "RMSE" if args.loss == "mse" else "mean error"
    print(f"{args.solver} at NFE {args.nfe}: validation {what} "
          f"{result.init_validation_error:.4g} (best of {', '.join(args.init)}) -> {result.validation_error:.4g} (learned from "
          f"{result.ts.metadata['init_grid']}, step "
          f"{result.best_step}/{result.steps_run}) in {result.seconds:.1f}s + "
          f"{result.teacher_seconds:.1f}s teacher; grid -> {args.out}")
    return 0


def cmd_demo(args) -> int:
    check_writable_dir("--out", args.out)
    settings = dict(nfes=(10,), n_digits=64, n_points=500, train_steps=200) if args.quick else {}
    if args.nfe:
        settings["nfes"] = tuple(args.nfe)
    if args.train_steps is not None:
        settings["train_steps"] = args.train_steps
    report = run_demo(args.out, progress=args.progress, **settings)
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
    parser = argparse.ArgumentParser(
        prog="deis-jax", description="Train diffusion models and sample them with DEIS and "
        "friends.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a score model on a built-in dataset",
                       description="Train a score model; resumes when --out holds a "
                       "checkpoint.")
    p.add_argument("--data", required=True, choices=training.DATASETS)
    p.add_argument("--steps", type=_int_at_least(1), required=True)
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--schedule", default="vp_linear", choices=tuple(schedules.FAMILIES))
    p.add_argument("--loss", choices=training.LOSSES, default=None,
                   help="default: edm for --schedule edm, ddpm for vp_discrete, "
                   "flow_matching for flow, else dsm")
    p.add_argument("--prediction", default=None,
                   choices=[c for c in PREDICTIONS if c != "edm"],
                   help="what the network predicts (--loss dsm; default eps, velocity for "
                   "--loss flow_matching)")
    p.add_argument("--time-sampling", default="uniform", choices=training.TIME_SAMPLINGS,
                   help="training times of --loss flow_matching (logit_normal: SD3's "
                   "t = sigmoid(N(0, 1)))")
    p.add_argument("--weighting", default="simple", choices=training.WEIGHTINGS,
                   help="loss weighting (--loss dsm only)")
    p.add_argument("--size", default="small", choices=training.SIZES)
    p.add_argument("--precision", default="float32", choices=training.PRECISIONS + ("bf16",),
                   help="network compute dtype (bf16 = bfloat16: mixed precision; parameters, "
                        "optimizer state and loss stay float32); recorded in the checkpoint")
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
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional model (labelled data: digits), trained with label "
                   "dropout so it also gives the unconditional prediction; sample it with "
                   "--label and --guidance")
    p.add_argument("--label-dropout", type=_probability, default=0.1,
                   help="probability of training on the null label (--conditional)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a trained checkpoint",
                       description="Sample a checkpoint; writes .npz (and a PNG grid or "
                       "scatter plot when --out ends in .png).")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--solver", default=None, choices=solver_names(),
                   help="default tab3, or the --grid file's solver")
    p.add_argument("--nfe", type=_int_at_least(1), default=None,
                   help="default 10, or the --grid file's NFE")
    p.add_argument("--grid", default=None,
                   help=f"time grid: a kind {{{','.join(GRID_KINDS)}}} (default quadratic; "
                   "log_snr suits vp_cosine and EDM better) or a learned grid file (.json, "
                   "from tune-grid: sets --solver and --nfe, and is checked against them and "
                   "the schedule)")
    p.add_argument("--n", type=_int_at_least(1), default=64)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--label", type=_int_at_least(0), default=None,
                   help="class of a --conditional checkpoint (digits: 0-9)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w with --label: (1 + w) eps(x, t, "
                   "label) - w eps(x, t, null); 0 (default) samples the conditional model")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("tune-grid", help="learn the time grid of a solver for a checkpoint",
                       description="Fit the sampling grid of --solver at --nfe to an "
                       "adaptive high-accuracy solve from the same noise (gradient descent "
                       "through the sampler, early stopping on validation noise); writes a "
                       "JSON grid file for `deis-jax sample --grid FILE`.")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--solver", default="tab3",
                   choices=[n for n in solver_names() if not get_solver(n).stochastic])
    p.add_argument("--nfe", type=_int_at_least(2), required=True)
    p.add_argument("--out", required=True, help="the grid file (.json)")
    p.add_argument("--init", default=["log_snr"], nargs="+", choices=GRID_KINDS + ("sweep",),
                   help="initial grid (sweep: the best EDM exponent of 32); several: one "
                        "optimisation from each, the best on validation kept")
    p.add_argument("--steps", type=_int_at_least(1), default=300)
    p.add_argument("--loss", default="mse", choices=LOSSES,
                   help="mse, or mean_error: the mean of each sample's RMS error, less "
                        "driven by the few samples between modes")
    p.add_argument("--lr", type=_positive_float, default=3e-2)
    p.add_argument("--n-calibration", type=_int_at_least(2), default=2048)
    p.add_argument("--n-validation", type=_int_at_least(2), default=512)
    p.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="calibration noises per step (default all)")
    p.add_argument("--teacher-tol", type=_positive_float, default=1e-5)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--progress", default="auto", choices=PROGRESS)
    p.set_defaults(func=cmd_tune_grid)

    p = sub.add_parser("demo", help="sample the shipped models with five solvers, train one",
                       description="Sample the shipped digits and checkerboard models with "
                       "ddim / tab3 / ipndm / dpmpp_3m / unipc3 at NFE 5 and 10 against the "
                       "adaptive reference, train a small checkerboard model from scratch "
                       "(about a minute), write figures and a quality table.")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--nfe", type=_int_at_least(3), nargs="+", default=None,
                   help="NFEs to compare (default 5 10; --quick: 10)")
    p.add_argument("--train-steps", type=_int_at_least(1), default=None,
                   help="steps of the model trained from scratch (default 8000; --quick: 200)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in well under a minute: fewer samples, NFE 10 only, 200 "
                   "training steps (the quality bars are not expected to hold)")
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

    def one_line(message, category, *rest, **kwargs):
        text = " ".join(str(message).split())
        print(f"deis-jax {args.command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            return args.func(args)
        except (CliError, OSError, ValueError, TypeError, FloatingPointError) as err:
            text = " ".join(str(err).split())
            print(f"deis-jax {args.command}: error: {text}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
