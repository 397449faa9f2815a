r"""An optax trainer for score networks: ``TrainState`` pytree, jitted ``train_step``, EMA,
warm-up + cosine learning rate, periodic evaluation, progress bar or log lines, checkpoints.

One step (AdamW, Loshchilov & Hutter 2019, after global-norm clipping):

.. math::
   g = \mathrm{clip}(\nabla_\theta L(\theta; x_{batch}, key)),\quad
   \theta \leftarrow \mathrm{AdamW}(\theta, g, \eta_k),\quad
   \bar\theta \leftarrow \beta_k \bar\theta + (1-\beta_k)\theta

with ``eta_k`` a linear warm-up then cosine decay and the EMA decay
``beta_k = min(ema_decay, (1+k)/(10+k))`` (short runs are not dominated by the init).

Non-finite values: a step whose loss, gradient norm or updated parameters are not finite
changes nothing (the state is kept, in the compiled step, without a host sync), and
:func:`fit` then stops with a ``FloatingPointError`` that names the step and the batch, after
saving the last finite state. It does not skip the batch and go on, as
``optax.apply_if_finite`` would: that hides a poisoned row or a diverging learning rate
behind a run that "succeeds" (every later draw of the row is skipped too), and after
``max_consecutive_errors`` skips it applies the non-finite update anyway -- the parameters
then turn NaN and every later checkpoint with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deis_jax._checks import (
    all_finite, check_choice, check_int, check_scalar, check_type)
from deis_jax._progress import PROGRESS, Progress
from deis_jax.training.checkpoint import (
    RefusedError, checkpoint_manager, latest_step, restore_checkpoint, save_checkpoint,
    writer_lock)
from deis_jax.training.data import Dataset, batch_indices, check_dataset
from deis_jax.training.losses import drop_labels, make_loss
from deis_jax.training.sharding import replicate, shard_batch
from deis_jax.training.spec import DiffusionSpec

__all__ = [
    "PROGRESS",
    "SCHEDULE_FIELDS",
    "TRAJECTORY_FIELDS",
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

TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "clip_norm", "ema_decay", "seed")
"""``TrainConfig`` fields that shape every update: a resumed run must use the recorded ones."""
SCHEDULE_FIELDS = ("steps", "warmup_steps")
"""``TrainConfig`` fields that set the learning-rate schedule's length: a resumed run may
change them (to train longer), with a warning."""


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
      lr: peak learning rate (finite, > 0); warmup_steps: linear warm-up length.
      weight_decay: AdamW decay (finite, >= 0); clip_norm: global gradient-norm clip
        (> 0; ``inf`` disables clipping).
      ema_decay: EMA decay of the parameters used for sampling, in ``[0, 1)``.
      seed: initialisation, noise and batch-order seed.
      log_every: progress / log-line period (steps).
      eval_every: held-out evaluation period (0: only at the end).
      ckpt_every: checkpoint period (0: only at the end); keep: checkpoints kept.

    Resuming a checkpoint (:func:`fit`) compares this config with the recorded one: the
    fields of :data:`TRAJECTORY_FIELDS` must match (refused otherwise, listing the
    differences), those of :data:`SCHEDULE_FIELDS` may change with a warning, the rest
    (logging, evaluation, checkpoint period and count) freely.
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
        # Stored as Python ints and floats, so that the record is JSON and compares exactly.
        for name in ("steps", "batch_size", "log_every", "keep"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1))
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=0))
        for name, bounds in (("lr", dict(lower=0.0, lower_open=True)),
                             ("weight_decay", dict(lower=0.0)),
                             ("clip_norm", dict(lower=0.0, lower_open=True, allow_inf=True)),
                             ("ema_decay", dict(lower=0.0, upper=1.0, upper_open=True))):
            object.__setattr__(self, name, float(check_scalar(name, getattr(self, name),
                                                              **bounds)))


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


def _network(model, params, label=None) -> Callable:
    """The network as the loss sees it: ``(x, t) -> prediction`` in the dtype of the data
    ``x`` (float32), whatever the network's compute dtype, so the loss and its gradient are
    accumulated in float32 under mixed precision. A class-conditional network sees
    ``label`` (one per row of ``x``)."""

    extra = () if label is None else (label,)  # any (x, t) network, or a conditional one

    def fn(x, t):
        return model.apply(params, x, t, *extra).astype(x.dtype)

    return fn


def _objective(model, loss_fn: Callable, label_dropout: float = 0.0) -> Callable:
    """``objective(params, batch, key) -> loss``. ``batch`` is the data ``x0``, or ``(x0,
    labels)`` for a class-conditional ``model`` (``model.num_classes`` set), whose labels are
    replaced by the null label with probability ``label_dropout`` (:func:`drop_labels`, with
    a key folded from ``key``: the loss's own draws are those of an unconditional run)."""
    num_classes = getattr(model, "num_classes", None)

    def objective(params, batch, key):
        if num_classes is None:
            return loss_fn(_network(model, params), batch, key)
        x0, labels = batch
        if label_dropout:
            labels = drop_labels(jax.random.fold_in(key, 1), labels, label_dropout,
                                 num_classes)
        return loss_fn(_network(model, params, labels), x0, key)

    return objective


def _step_fn(model, loss_fn: Callable, optimizer: optax.GradientTransformation,
             ema_decay: float, label_dropout: float = 0.0) -> Callable:
    """The unguarded step ``(state, batch) -> (new state, metrics)``; ``metrics["finite"]``
    says whether the loss, the gradient norm and the new parameters are all finite."""
    objective = _objective(model, loss_fn, label_dropout)

    def step_fn(state: TrainState, batch):
        key, sub = jax.random.split(state.key)
        loss, grads = jax.value_and_grad(objective)(state.params, batch, sub)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        stepf = step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + stepf) / (10.0 + stepf))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
        return TrainState(params, opt_state, ema, step, key), metrics

    return step_fn


def _keep_if(ok, new, old):
    """``new`` where the scalar ``ok`` holds, else ``old`` (a select in the compiled step)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_train_step(model, loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, label_dropout: float = 0.0) -> Callable:
    """Return jitted ``train_step(state, batch) -> (state, metrics)``.

    Args:
      model: a Flax Linen module; the loss sees ``partial(model.apply, params)``.
      loss_fn: ``loss_fn(model_fn, x0, key) -> scalar`` (see :func:`losses.make_loss`).
      optimizer: an optax transformation (see :func:`make_optimizer`).
      ema_decay: maximal EMA decay.
      label_dropout: for a class-conditional ``model`` (``batch = (x0, labels)``), the
        probability of replacing a label by the null label (:func:`losses.drop_labels`).

    ``metrics`` holds ``loss``, ``grad_norm`` (before clipping) and ``finite``: whether the
    loss, the gradient norm and the updated parameters are all finite. A step where they are
    not returns the input state unchanged (see the module docstring).
    """
    step_fn = _step_fn(model, loss_fn, optimizer, ema_decay, label_dropout)

    @jax.jit
    def train_step(state: TrainState, batch):
        new, metrics = step_fn(state, batch)
        return _keep_if(metrics["finite"], new, state), metrics

    return train_step


def make_eval_loss(model, loss_fn: Callable) -> Callable:
    """Jitted ``eval_loss(params, batch, key) -> scalar`` (no update; the labels of a
    class-conditional model's ``(x0, labels)`` batch are kept)."""
    return jax.jit(_objective(model, loss_fn))


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
      data: the dataset (batches are drawn from ``data.train``); checked before anything
        else (:func:`~deis_jax.training.check_dataset`: finite, floating point, the sample
        shape ``spec.data["shape"]`` records).
      config: hyper-parameters.
      ckpt_dir: checkpoint directory (save every ``config.ckpt_every`` steps and at the end,
        keep ``config.keep``), checked writable and ours before any work, and held by this
        run alone until it returns or raises (a second run on it is refused before it
        trains; see :func:`~deis_jax.training.checkpoint.writer_lock`). An existing
        checkpoint there is resumed exactly, from its newest intact step (newer unreadable
        steps are moved aside to ``<step>.damaged``, with a warning); its recorded spec and
        config are compared first (see :class:`TrainConfig`). The metadata records the
        training config and the cumulative training wall time.
      until: stop after this step (default ``config.steps``), e.g. to split a run. A
        checkpoint already past it is refused; one exactly at it trains nothing.
      max_seconds: also stop (and checkpoint) once this much wall time has passed.
      mesh: optional ``jax.sharding.Mesh``: batches are sharded over its ``"batch"`` axis and
        the state replicated (data parallelism).
      eval_fn: optional ``eval_fn(state) -> dict`` run at every evaluation (e.g. samples and
        a quality metric); the held-out loss of the EMA parameters is always computed.
      progress: ``"auto"`` (tqdm bar on a terminal, log lines otherwise), ``"bar"``,
        ``"log"`` or ``"none"``.
      stream: where progress goes (default ``sys.stdout``).

    Raises:
      FloatingPointError: the loss, the gradients or the parameters became non-finite; the
        message names the step and the batch, and the last finite state is saved first.
      ValueError, TypeError: bad arguments, data or checkpoint directory, or a checkpoint
        directory another run is writing (``LockedError``), before any work.
    """
    check_type("spec", spec, DiffusionSpec, "a DiffusionSpec")
    check_type("config", config, TrainConfig, "a TrainConfig")
    check_choice("progress", progress, PROGRESS)
    until = config.steps if until is None else check_int("until", until, minimum=1)
    if until > config.steps:
        raise ValueError(f"until={until} exceeds config.steps={config.steps}")
    if max_seconds is not None:
        max_seconds = check_scalar("max_seconds", max_seconds, lower=0.0, allow_inf=True)
    check_dataset(data, spec.data.get("shape"))
    _check_conditional(spec, data)
    # One writer per directory, from before the resume check until the run returns or raises.
    with contextlib.nullcontext() if ckpt_dir is None else writer_lock(ckpt_dir):
        return _fit(spec, data, config, ckpt_dir=ckpt_dir, until=until,
                    max_seconds=max_seconds, mesh=mesh, eval_fn=eval_fn, progress=progress,
                    stream=stream)


def _fit(spec: DiffusionSpec, data: Dataset, config: TrainConfig, *, ckpt_dir, until: int,
         max_seconds: float | None, mesh, eval_fn: Callable | None, progress: str,
         stream) -> FitResult:
    """:func:`fit` after its argument checks (holding the lock of ``ckpt_dir``, if any)."""
    stream = sys.stdout if stream is None else stream
    model = spec.build_model()
    loss_fn = make_loss(spec.loss, spec.build_schedule(), prediction=spec.prediction,
                        weighting=spec.weighting, sigma_data=spec.sigma_data,
                        time_sampling=spec.time_sampling)
    optimizer = make_optimizer(config)
    state = init_state(model, optimizer, data.train[:1], jax.random.key(config.seed))
    manager, prior_seconds, last_saved = None, 0.0, -1
    if ckpt_dir is not None:
        if latest_step(ckpt_dir) is not None:
            state, meta = restore_checkpoint(
                ckpt_dir, state, check_meta=lambda m: _check_resume(spec, config, ckpt_dir, m))
            last_saved = int(state.step)
            if last_saved > until:
                name = "until" if until != config.steps else "steps"
                raise ValueError(
                    f"ckpt_dir='{ckpt_dir}' already holds step {last_saved}, beyond "
                    f"{name}={until}: nothing to train (pass {name} > {last_saved} to "
                    "continue, or a new directory)")
            _move_aside(ckpt_dir, meta["skipped"])
            _warn_schedule_change(config, ckpt_dir, meta)
            prior_seconds = float(meta.get("train_seconds", 0.0))
        manager = checkpoint_manager(ckpt_dir, keep=config.keep)
    if mesh is not None:
        state = replicate(state, mesh)
    step_fn = _step_fn(model, loss_fn, optimizer, config.ema_decay, spec.label_dropout)

    @jax.jit
    def train_step(state, batch, halted):
        """One update; ``halted`` (-1 while every update was finite, else the first
        non-finite step) freezes the state from the first non-finite update on."""
        new, metrics = step_fn(state, batch)
        running = halted < 0
        halted = jnp.where(running & ~metrics["finite"], state.step + 1, halted)
        return _keep_if(running & metrics["finite"], new, state), metrics, halted

    eval_loss = make_eval_loss(model, loss_fn)
    test_batch = _rows(data, "test", np.arange(min(len(data.test), 2048)), spec.num_classes)
    config_record = dataclasses.asdict(config)

    def evaluate(state):
        out = {"step": int(state.step),
               "test_loss": float(eval_loss(state.ema_params, test_batch, jax.random.key(1)))}
        if eval_fn is not None:
            out.update(eval_fn(state))
        return out

    start = int(state.step)
    bar = Progress(progress, until, start, stream)
    history, t_first, n_timed = [], None, 0
    t_start = time.perf_counter()
    last_log = start
    halted = jnp.int32(-1)
    for step in range(start, until):
        batch = _rows(data, "train", batch_indices(len(data.train), step, config.batch_size,
                                                   config.seed), spec.num_classes)
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        state, metrics, halted = train_step(state, batch, halted)
        done = step + 1
        if t_first is None:  # exclude compilation from the throughput
            jax.block_until_ready(state.step)
            t_first, n_timed = time.perf_counter(), 0
        else:
            n_timed += 1
        stop = done == until or (
            max_seconds is not None and time.perf_counter() - t_start > max_seconds)
        periodic = config.ckpt_every and done % config.ckpt_every == 0
        evaluating = config.eval_every and done % config.eval_every == 0 and not stop
        if (stop or periodic or evaluating or done % config.log_every == 0) and int(halted) >= 0:
            # Checked where the loop syncs anyway (no per-step host round trip).
            bar.close()
            if manager is not None and int(state.step) > max(last_saved, 0):
                save_checkpoint(manager, state, spec, extra={
                    "config": config_record,
                    "train_seconds": prior_seconds + time.perf_counter() - t_start})
            if manager is not None:
                manager.close()
            raise _nonfinite_error(int(halted), data, config,
                                   ckpt_dir if manager is not None else None)
        if done % config.log_every == 0 or stop:
            loss = float(metrics["loss"])
            rate = n_timed / max(time.perf_counter() - t_first, 1e-9)
            bar.update(done, until, {"loss": loss, "steps/s": rate,
                                     "ex/s": rate * config.batch_size}, done - last_log)
            last_log = done
            history.append({"step": done, "loss": loss, "steps_per_s": rate})
        if evaluating:
            ev = evaluate(state)
            history.append(ev)
            bar.write("eval " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()))
        if manager is not None and (stop or periodic):
            seconds = prior_seconds + time.perf_counter() - t_start
            save_checkpoint(manager, state, spec,
                            extra={"config": config_record, "train_seconds": seconds})
            last_saved = done
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


def _check_conditional(spec: DiffusionSpec, data: Dataset) -> None:
    """A class-conditional spec needs labelled data with labels below its ``num_classes``."""
    if spec.num_classes is None:
        return
    if data.train_labels is None:
        raise ValueError(f"the model is class-conditional (num_classes={spec.num_classes}) "
                         f"but the dataset {data.name!r} has no labels; train it "
                         "unconditionally, or use labelled data (e.g. 'digits')")
    if data.n_classes > spec.num_classes:
        raise ValueError(f"the data has labels up to {data.n_classes - 1}, outside the "
                         f"model's [0, num_classes) = [0, {spec.num_classes})")


def _rows(data: Dataset, part: str, rows, num_classes):
    """The batch of ``rows`` of ``data.<part>``: the data, or ``(data, labels)`` for a
    class-conditional model."""
    x = getattr(data, part)[rows]
    return x if num_classes is None else (x, getattr(data, f"{part}_labels")[rows])


def _json(record):
    """``record`` as it reads back from JSON (tuples become lists), for exact comparisons."""
    return json.loads(json.dumps(record))


def _differences(old, new, prefix: str = "") -> list[str]:
    """``"key: old in the checkpoint, new now"`` for every leaf where two records differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k, "<missing>"), new.get(k, "<missing>"),
                                f"{prefix}{k}.")
        return out
    if old == new:
        return []
    return [f"{prefix[:-1]}: {old!r:.60} in the checkpoint, {new!r:.60} now"]


def _check_resume(spec: DiffusionSpec, config: TrainConfig, ckpt_dir, meta: dict) -> None:
    """Refuse to resume a checkpoint of another spec, or of another value of a
    :data:`TRAJECTORY_FIELDS` setting, listing the differences (before any array is read)."""
    # Checkpoints written before a spec field existed lack it: theirs had its default
    # (time_sampling before flow matching was uniform, label_dropout before labels was 0).
    defaults = {f.name: f.default for f in dataclasses.fields(DiffusionSpec)
                if f.default is not dataclasses.MISSING}
    recorded_spec = {**defaults, **meta["spec"]}
    diffs = _differences(_json(recorded_spec), _json(spec.to_dict()), "spec.")
    if diffs:
        raise RefusedError(f"ckpt_dir='{ckpt_dir}' holds a run of a different "
                           f"model/schedule/loss ({'; '.join(diffs)}); use a new directory")
    recorded = meta.get("config", {})
    now = _json(dataclasses.asdict(config))
    changed = [f"{k}: {recorded[k]!r} in the checkpoint, {now[k]!r} now"
               for k in TRAJECTORY_FIELDS if k in recorded and recorded[k] != now[k]]
    if changed:
        raise RefusedError(
            f"ckpt_dir='{ckpt_dir}' was trained with other settings ({'; '.join(changed)}); "
            "resuming with them would give a run that is neither: pass the recorded values, "
            "or use a new directory")


def _warn_schedule_change(config: TrainConfig, ckpt_dir, meta: dict) -> None:
    recorded = meta.get("config", {})
    changed = [f"{k}: {recorded[k]!r} -> {getattr(config, k)!r}" for k in SCHEDULE_FIELDS
               if k in recorded and recorded[k] != getattr(config, k)]
    if changed:
        warnings.warn(
            f"resuming ckpt_dir='{ckpt_dir}' at step {meta['step']} with another learning-rate "
            f"schedule length ({'; '.join(changed)}): the rest of the run follows the new "
            "schedule, so it differs from an uninterrupted run of this length", stacklevel=4)


def _move_aside(ckpt_dir, skipped) -> None:
    """Rename unreadable steps newer than the one resumed to ``<step>.damaged`` (orbax
    ignores them), so that training can save those steps again; nothing is deleted."""
    for step, why in skipped:
        src = os.path.join(os.path.abspath(ckpt_dir), str(step))
        dst, k = src + ".damaged", 1
        while os.path.exists(dst):
            dst, k = f"{src}.damaged{k}", k + 1
        os.rename(src, dst)
        warnings.warn(f"moved the unreadable checkpoint step {step} ({why}) aside to "
                      f"'{dst}'; training continues from an older step", stacklevel=4)


def _nonfinite_error(bad: int, data: Dataset, config: TrainConfig, saved_in) -> Exception:
    """The error of a run halted at step ``bad``: its batch, the batch's largest entry."""
    rows = batch_indices(data.train.shape[0], bad - 1, config.batch_size, config.seed)
    size = np.abs(data.train[rows].reshape(len(rows), -1)).max(axis=1)
    worst = int(rows[int(np.argmax(size))])
    saved = (f"; they are saved as step {bad - 1} in ckpt_dir='{saved_in}'"
             if saved_in is not None and bad > 1 else "")
    return FloatingPointError(
        f"training stopped: the loss, the gradients or the updated parameters became "
        f"non-finite (NaN/inf) at step {bad}, the update with batch {bad - 1} "
        f"(get_batch(data.train, {bad - 1}, batch_size={config.batch_size}, "
        f"seed={config.seed}); its largest entry, {float(size.max()):.3g}, is in row "
        f"{worst}). The parameters of step {bad - 1} are the last finite ones{saved}. Lower "
        f"lr={config.lr!r} or check those rows.")
