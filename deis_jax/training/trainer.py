r"""An optax trainer for score networks: ``TrainState`` pytree, jitted ``train_step``, EMA,
warm-up + cosine learning rate, periodic evaluation, progress bar or log lines, checkpoints.

One step (AdamW, Loshchilov & Hutter 2019, after global-norm clipping):

.. math::
   g = \mathrm{clip}(\nabla_\theta L(\theta; x_{batch}, key)),\quad
   \theta \leftarrow \mathrm{AdamW}(\theta, g, \eta_k),\quad
   \bar\theta \leftarrow \beta_k \bar\theta + (1-\beta_k)\theta

with ``eta_k`` a linear warm-up then cosine decay and the EMA decay
``beta_k = min(ema_decay, (1+k)/(10+k))`` (short runs are not dominated by the init).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from deis_jax._checks import check_choice, check_int
from deis_jax.training.checkpoint import (
    checkpoint_manager, latest_step, restore_checkpoint, save_checkpoint)
from deis_jax.training.data import Dataset, get_batch
from deis_jax.training.losses import make_loss
from deis_jax.training.sharding import replicate, shard_batch
from deis_jax.training.spec import DiffusionSpec

__all__ = [
    "PROGRESS",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "fit",
    "init_state",
    "learning_rate",
    "make_eval_loss",
    "make_optimizer",
    "make_train_step",
]

PROGRESS = ("auto", "bar", "log", "none")


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; ``step`` is an int32 array)."""

    params: Any
    opt_state: Any
    ema_params: Any
    step: Any
    key: Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (JSON-able; recorded in checkpoints).

    Attributes:
      steps: total optimisation steps (sets the cosine schedule).
      batch_size: examples per step.
      lr: peak learning rate; warmup_steps: linear warm-up length.
      weight_decay: AdamW decay; clip_norm: global gradient-norm clip.
      ema_decay: EMA decay of the parameters used for sampling.
      seed: initialisation, noise and batch-order seed.
      log_every: progress / log-line period (steps).
      eval_every: held-out evaluation period (0: only at the end).
      ckpt_every: checkpoint period (0: only at the end); keep: checkpoints kept.
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100
    eval_every: int = 0
    ckpt_every: int = 0
    keep: int = 3

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("keep", self.keep, minimum=1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got ema_decay={self.ema_decay!r}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got clip_norm={self.clip_norm!r}")


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to ``config.lr`` then cosine decay to ``lr / 100`` at the end."""
    warmup = min(config.warmup_steps, config.steps - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.lr, warmup, max(config.steps, warmup + 1), end_value=config.lr / 100
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """``chain(clip_by_global_norm, adamw)`` with the :func:`learning_rate` schedule."""
    return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                       optax.adamw(learning_rate(config), weight_decay=config.weight_decay))


def init_state(model, optimizer: optax.GradientTransformation, example, key) -> TrainState:
    """Initialise parameters from an ``example`` batch ``(B, ...)`` and a PRNG ``key``."""
    k_init, k_train = jax.random.split(key)
    example = jnp.asarray(example)
    params = model.init(k_init, example, jnp.zeros(example.shape[:1], example.dtype))
    return TrainState(params, optimizer.init(params), params, jnp.int32(0), k_train)


def make_train_step(model, loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999) -> Callable:
    """Return jitted ``train_step(state, batch) -> (state, metrics)``.

    Args:
      model: a Flax Linen module; the loss sees ``partial(model.apply, params)``.
      loss_fn: ``loss_fn(model_fn, x0, key) -> scalar`` (see :func:`losses.make_loss`).
      optimizer: an optax transformation (see :func:`make_optimizer`).
      ema_decay: maximal EMA decay.

    ``metrics`` holds ``loss`` and ``grad_norm`` (before clipping).
    """

    def objective(params, batch, key):
        return loss_fn(lambda x, t: model.apply(params, x, t), batch, key)

    @jax.jit
    def train_step(state: TrainState, batch):
        key, sub = jax.random.split(state.key)
        loss, grads = jax.value_and_grad(objective)(state.params, batch, sub)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        stepf = step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + stepf) / (10.0 + stepf))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, ema, step, key), metrics

    return train_step


def make_eval_loss(model, loss_fn: Callable) -> Callable:
    """Jitted ``eval_loss(params, batch, key) -> scalar`` (no update)."""

    @jax.jit
    def eval_loss(params, batch, key):
        return loss_fn(lambda x, t: model.apply(params, x, t), batch, key)

    return eval_loss


class _Progress:
    """tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, mode: str, total: int, initial: int, stream):
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "log"
        self.mode, self.stream = mode, stream
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, file=stream, unit="step",
                            dynamic_ncols=True)

    def update(self, step: int, total: int, fields: dict[str, float], n: int):
        text = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            print(f"step {step}/{total} {text}", file=self.stream, flush=True)

    def write(self, line: str):
        if self.bar is not None:
            self.bar.write(line)
        elif self.mode == "log":
            print(line, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class FitResult(NamedTuple):
    """Output of :func:`fit`: final state, history of logged metrics, steps/s, wall time."""

    state: TrainState
    history: list
    steps_per_s: float
    seconds: float


def fit(spec: DiffusionSpec, data: Dataset, config: TrainConfig = TrainConfig(), *,
        ckpt_dir=None, until: int | None = None, max_seconds: float | None = None, mesh=None,
        eval_fn: Callable | None = None, progress: str = "auto", stream=None) -> FitResult:
    """Train ``spec``'s model on ``data``; resume from ``ckpt_dir`` when it holds a checkpoint.

    Args:
      spec: model, schedule and loss (see :class:`DiffusionSpec`).
      data: the dataset (batches are drawn from ``data.train``).
      config: hyper-parameters.
      ckpt_dir: checkpoint directory (save every ``config.ckpt_every`` steps and at the end,
        keep ``config.keep``); an existing checkpoint there is resumed exactly. The metadata
        records the training config and the cumulative training wall time.
      until: stop after this step (default ``config.steps``), e.g. to split a run.
      max_seconds: also stop (and checkpoint) once this much wall time has passed.
      mesh: optional ``jax.sharding.Mesh``: batches are sharded over its ``"batch"`` axis and
        the state replicated (data parallelism).
      eval_fn: optional ``eval_fn(state) -> dict`` run at every evaluation (e.g. samples and
        a quality metric); the held-out loss of the EMA parameters is always computed.
      progress: ``"auto"`` (tqdm bar on a terminal, log lines otherwise), ``"bar"``,
        ``"log"`` or ``"none"``.
      stream: where progress goes (default ``sys.stdout``).
    """
    check_choice("progress", progress, PROGRESS)
    until = config.steps if until is None else check_int("until", until, minimum=1)
    if until > config.steps:
        raise ValueError(f"until={until} exceeds config.steps={config.steps}")
    stream = sys.stdout if stream is None else stream
    model = spec.build_model()
    loss_fn = make_loss(spec.loss, spec.build_schedule(), prediction=spec.prediction,
                        weighting=spec.weighting, sigma_data=spec.sigma_data)
    optimizer = make_optimizer(config)
    state = init_state(model, optimizer, data.train[:1], jax.random.key(config.seed))
    manager, prior_seconds = None, 0.0
    if ckpt_dir is not None:
        if latest_step(ckpt_dir) is not None:
            state, meta = restore_checkpoint(ckpt_dir, state)
            prior_seconds = float(meta.get("train_seconds", 0.0))
            if meta["spec"] != spec:
                raise ValueError(
                    f"ckpt_dir={str(ckpt_dir)!r} holds a run of a different model/schedule/loss "
                    f"({meta['spec']}); use a new directory"
                )
        manager = checkpoint_manager(ckpt_dir, keep=config.keep)
    if mesh is not None:
        state = replicate(state, mesh)
    train_step = make_train_step(model, loss_fn, optimizer, ema_decay=config.ema_decay)
    eval_loss = make_eval_loss(model, loss_fn)
    test_batch = data.test[: min(len(data.test), 2048)]
    config_record = dataclasses.asdict(config)

    def evaluate(state):
        out = {"step": int(state.step),
               "test_loss": float(eval_loss(state.ema_params, test_batch, jax.random.key(1)))}
        if eval_fn is not None:
            out.update(eval_fn(state))
        return out

    start = int(state.step)
    bar = _Progress(progress, until, start, stream)
    history, t_first, n_timed = [], None, 0
    t_start = time.perf_counter()
    last_log = start
    for step in range(start, until):
        batch = get_batch(data.train, step, config.batch_size, config.seed)
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        state, metrics = train_step(state, batch)
        done = step + 1
        if t_first is None:  # exclude compilation from the throughput
            jax.block_until_ready(state.step)
            t_first, n_timed = time.perf_counter(), 0
        else:
            n_timed += 1
        stop = done == until or (
            max_seconds is not None and time.perf_counter() - t_start > max_seconds)
        if done % config.log_every == 0 or stop:
            loss = float(metrics["loss"])
            rate = n_timed / max(time.perf_counter() - t_first, 1e-9)
            bar.update(done, until, {"loss": loss, "steps/s": rate,
                                     "ex/s": rate * config.batch_size}, done - last_log)
            last_log = done
            history.append({"step": done, "loss": loss, "steps_per_s": rate})
        if config.eval_every and done % config.eval_every == 0 and not stop:
            ev = evaluate(state)
            history.append(ev)
            bar.write("eval " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()))
        periodic = config.ckpt_every and done % config.ckpt_every == 0
        if manager is not None and (stop or periodic):
            seconds = prior_seconds + time.perf_counter() - t_start
            save_checkpoint(manager, state, spec,
                            extra={"config": config_record, "train_seconds": seconds})
        if stop:
            break
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t_start
    rate = n_timed / max(time.perf_counter() - t_first, 1e-9) if t_first is not None else 0.0
    ev = evaluate(state)
    history.append(ev)
    bar.write("eval " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()))
    bar.close()
    if manager is not None:
        manager.close()
    return FitResult(state, history, rate, seconds)
