"""Checkpoints with orbax: save every ``k`` steps, keep the last ``n``, atomic writes, exact
resume, and a record of the schedule, parameterisation and model config so that sampling
needs only the checkpoint path.

Layout::

    DIR/deis_jax_checkpoint.json   marker: {"format": "deis_jax checkpoint", "version": 1}
    DIR/.deis_jax.lock             while a run writes: its pid and host (see writer_lock)
    DIR/<step>/model               parameters and EMA parameters (what sampling needs)
    DIR/<step>/train               optimizer state, step counter, PRNG key (for resuming)
    DIR/<step>/meta                JSON: the DiffusionSpec, the step, the training config...

A directory without the marker is not ours: it is refused for reading and, unless empty, for
writing. Orbax writes each step into a temporary directory and renames it when complete, so
an interrupted save never shadows the previous checkpoint. Non-finite parameters are never
saved (:func:`save_checkpoint` refuses them), so the newest step is always the last finite
one and the keep-last-``n`` rotation never deletes it.

One writer per directory: a training run holds the directory's lock (:func:`writer_lock`, an
exclusive ``flock``) from before its resume check until it returns, and a second run is
refused (:class:`LockedError`, naming the holder's pid) before it trains. A save never
replaces an existing step (:func:`save_checkpoint` refuses one already on disk, which orbax
would otherwise delete to write its own).

Reading falls back: without an explicit ``step``, :func:`load_model` and
:func:`restore_checkpoint` try the newest step first and, when it cannot be read (truncated
or corrupted files, unreadable metadata, non-finite values), warn naming that step and why
and use the next older one. :func:`load_model` reads only the ``model`` and ``meta`` items,
so damage confined to the optimizer state does not block sampling.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import warnings
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from deis_jax._checks import all_finite, check_int, check_writable_dir
from deis_jax._files import atomic_write
from deis_jax.model import Model
from deis_jax.training.spec import DiffusionSpec

try:
    import fcntl
except ImportError:  # Windows: no flock (writer_lock then takes no lock)
    fcntl = None

__all__ = [
    "LOCK",
    "MARKER",
    "LockedError",
    "RefusedError",
    "checkpoint_dir",
    "checkpoint_manager",
    "latest_step",
    "load_model",
    "restore_checkpoint",
    "save_checkpoint",
    "writer_lock",
]

MARKER = "deis_jax_checkpoint.json"
"""File that marks a directory as a deis_jax checkpoint directory."""
LOCK = ".deis_jax.lock"
"""File of a checkpoint directory that the run writing it holds locked (:func:`writer_lock`)."""
_FORMAT = {"format": "deis_jax checkpoint", "version": 1}
_MODEL = ("params", "ema_params")
_TRAIN = ("opt_state", "step", "key")


class RefusedError(ValueError):
    """A readable checkpoint that does not fit the request (another model, another config):
    reported as is, never taken for damage and skipped."""


class LockedError(ValueError):
    """Another process is writing the checkpoint directory (it holds its :data:`LOCK`)."""


def checkpoint_dir(directory, *, create: bool) -> str:
    """The absolute path of a deis_jax checkpoint directory, after checking that it is one.

    Args:
      directory: the path.
      create: for writing: the directory is created if needed (and checked writable) and
        marked when new or empty; an existing non-empty directory without the marker is
        refused. For reading (``False``): it must exist and, unless empty, hold the marker.

    Raises:
      FileNotFoundError: reading a directory that does not exist.
      ValueError: the path is a file, is not writable, or is a directory that is not ours.
    """
    path = os.path.abspath(os.fspath(directory))
    if create:
        check_writable_dir("ckpt_dir", path)
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint directory at ckpt='{directory}'")
    marked = os.path.isfile(os.path.join(path, MARKER))
    if not marked and os.listdir(path):
        raise ValueError(
            f"ckpt='{directory}' is not a deis_jax checkpoint directory (it has no {MARKER}); "
            "pass a directory written by deis_jax, or a new or empty one to train into")
    if create and not marked:
        with atomic_write(os.path.join(path, MARKER)) as f:
            json.dump(_FORMAT, f)
    return path


def checkpoint_manager(directory, *, keep: int = 3) -> ocp.CheckpointManager:
    """An orbax manager writing to ``directory`` (created and marked, see
    :func:`checkpoint_dir`) and keeping the newest ``keep`` steps (the caller decides when to
    save; :func:`~deis_jax.training.fit` saves every ``ckpt_every`` steps and at the end)."""
    keep = check_int("keep", keep, minimum=1)
    path = checkpoint_dir(directory, create=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options)


def writer_lock(directory):
    """Hold the checkpoint directory ``directory`` (created and marked, see
    :func:`checkpoint_dir`) as its only writer: a context manager.

    An exclusive, non-blocking ``flock`` of ``directory/``:data:`LOCK`, which records the
    holder's pid and host while it is held and is removed on release. The kernel releases a
    flock when its holder exits, however it exits (SIGKILL included): the lock of a dead
    process never blocks, and a left-over file (with a stale pid) is simply taken over. Only
    the flock is trusted, never the pid. Without ``fcntl`` (Windows) no lock is taken.

    Example::

        with writer_lock("runs/cb"):
            ...  # resume, train and save: no other writer meanwhile

    Raises:
      LockedError: another process holds the lock; the message names the directory and the
        holder's pid.
    """
    path = checkpoint_dir(directory, create=True)
    if fcntl is None:
        return contextlib.nullcontext(path)
    return _held(os.path.join(path, LOCK), directory)


@contextlib.contextmanager
def _held(lock: str, directory):
    fd = _acquire(lock, directory)
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield os.path.dirname(lock)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # still holding it: see _acquire
        os.close(fd)


def _acquire(lock: str, directory) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"ckpt_dir='{directory}' is being written by another training run ({holder}, "
                f"holding {lock}): wait for it to finish, or train into another "
                "directory") from None
        except OSError as err:
            os.close(fd)
            raise ValueError(f"cannot lock ckpt_dir='{directory}' for writing ({lock}: "
                             f"{err.strerror or err}); use a directory on a local file "
                             "system") from None
        # A holder releasing it between our open and our flock has removed the file: we then
        # hold an orphan, and a third run may lock a new file at that path. Try again.
        try:
            current = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """``"pid P on HOST"`` from a lock file (its holder may not have written it yet)."""
    for _ in range(50):
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            record = json.loads(os.read(fd, 4096))
            return f"pid {int(record['pid'])} on {record['host']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "pid unknown"


def save_checkpoint(manager: ocp.CheckpointManager, state, spec: DiffusionSpec, *,
                    extra: dict | None = None) -> None:
    """Save ``state`` and the metadata (``spec``, ``extra``) as step ``int(state.step)``.

    Raises:
      ValueError: the parameters or EMA parameters hold NaN/inf (nothing is written, so the
        newest checkpoint stays the last finite one); the directory already holds this step
        (written by another run: it is never replaced).
    """
    step = int(state.step)
    if not bool(all_finite((state.params, state.ema_params))):
        raise ValueError(f"refusing to save step {step}: its parameters hold non-finite values "
                         "(NaN/inf); the newest checkpoint stays the last finite one")
    # Orbax's manager checks only the steps it knows (those on disk when it was opened and
    # its own saves), then deletes whatever else sits at the step's path to write it: look
    # on disk.
    directory = os.fspath(manager.directory)
    if step in manager.all_steps() or os.path.exists(os.path.join(directory, str(step))):
        raise ValueError(f"refusing to save step {step}: ckpt_dir='{directory}' already holds "
                         "that step (from another run?), and a save never replaces one")
    meta = {**_FORMAT, "spec": spec.to_dict(), "step": step, **(extra or {})}
    saved = manager.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave({k: getattr(state, k) for k in _MODEL}),
            train=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step,
                                         "key": jax.random.key_data(state.key)}),
            meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()
    if not saved:  # its save policy declined (a step not after its newest): never silently
        raise ValueError(f"orbax declined to save step {step} in ckpt_dir='{directory}' "
                         f"(its newest step is {manager.latest_step()})")


def latest_step(directory) -> int | None:
    """The newest complete checkpoint step in ``directory`` (None if the directory does not
    exist or holds none). Complete is not intact: reading falls back past damaged steps."""
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        return None
    path = checkpoint_dir(path, create=False)
    manager = ocp.CheckpointManager(path)
    try:
        return manager.latest_step()
    finally:
        manager.close()


# Python reprs that TensorStore puts into its messages (``<bound method pybind11_detail_...>``,
# ``<... object at 0x7f...>``): they say nothing to a user and fill every warning line
_REPR = re.compile(r"\s*<(?:bound method [^<>]*|[^<>]* at 0x[0-9a-fA-F]+)>")


def _reason(err: BaseException) -> str:
    text, before = str(err), None
    while text != before:  # nested reprs: the inner one first
        text, before = _REPR.sub("", text), text
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _leaf_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _check_template(manager, step: int, item: str, template, directory) -> None:
    """Compare a template's leaves (names and shapes) with what ``item`` of ``step`` holds,
    before orbax restores into it."""
    stored = {}
    for leaf in jax.tree.leaves(manager.item_metadata(step)[item].tree):
        stored[leaf.name] = tuple(leaf.shape)
    wanted = {_leaf_name(p): tuple(np.shape(x))
              for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}
    diffs = [f"{n}: {wanted.get(n, 'missing')} in the template, {stored.get(n, 'missing')} "
             "in the checkpoint" for n in sorted(set(stored) | set(wanted))
             if stored.get(n) != wanted.get(n)]
    if diffs:
        raise RefusedError(
            f"the template does not match checkpoint step {step} in ckpt='{directory}' "
            f"({len(diffs)} difference(s): {'; '.join(diffs[:4])}): it holds another model")


def _restore(directory, *, items: tuple[str, ...], template: dict | None = None,
             step: int | None = None, check_meta: Callable[[dict], None] | None = None):
    """``(out, step, skipped)``: ``out`` maps ``items`` and ``"meta"`` to what the newest
    intact step (or exactly ``step``) holds; ``skipped`` lists ``(step, reason)`` of newer
    steps that could not be read (each also warned about).

    ``check_meta(meta)`` runs on the metadata before any array is read and may raise
    :class:`RefusedError` (another spec or config): refusals propagate, any other failure of
    a step marks it damaged.
    """
    path = checkpoint_dir(directory, create=False)
    manager = ocp.CheckpointManager(path, item_handlers={
        "model": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler()})
    try:
        available = sorted(manager.all_steps(), reverse=True)
        if not available:
            raise FileNotFoundError(f"no complete checkpoint in ckpt='{directory}'")
        if step is not None:
            step = check_int("step", step, minimum=0)
            if step not in available:
                raise FileNotFoundError(f"no checkpoint for step={step} in ckpt='{directory}'; "
                                        f"available: {sorted(available)}")
        skipped = []
        for s in ([step] if step is not None else available):
            try:
                meta = manager.restore(s, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                if meta.get("format") != _FORMAT["format"]:
                    raise ValueError(f"its metadata is not a deis_jax record: {meta!r:.100}")
                if check_meta is not None:
                    check_meta(meta)
                targets = {}
                for item in items:
                    target = None if template is None else template[item]
                    if target is not None:
                        _check_template(manager, s, item, target, directory)
                    targets[item] = ocp.args.StandardRestore(target)
                out = dict(manager.restore(s, args=ocp.args.Composite(**targets)))
                if not bool(all_finite(out["model"])):
                    raise ValueError("its parameters hold non-finite values (NaN/inf)")
            except RefusedError:
                raise
            except Exception as err:  # noqa: BLE001 -- any failure to read marks the step damaged
                if step is not None:
                    raise ValueError(f"checkpoint step={step} in ckpt='{directory}' cannot be "
                                     f"read ({_reason(err)}); available steps: "
                                     f"{sorted(available)}") from err
                skipped.append((s, _reason(err)))
                continue
            for bad, why in skipped:
                warnings.warn(f"checkpoint step {bad} in ckpt='{directory}' cannot be read "
                              f"({why}); using step {s}", stacklevel=3)
            out["meta"] = meta
            return out, s, skipped
        raise ValueError(f"no intact checkpoint in ckpt='{directory}': "
                         + "; ".join(f"step {s}: {why}" for s, why in skipped))
    finally:
        manager.close()


def _merge(out) -> tuple[dict, dict]:
    tree = {**out["model"], **out.get("train", {})}
    if "key" in tree:
        tree["key"] = jax.random.wrap_key_data(tree["key"])
    meta = dict(out["meta"])
    meta["spec"] = DiffusionSpec.from_dict(meta["spec"])
    return tree, meta


def restore_checkpoint(directory, template=None, *, step: int | None = None,
                       check_meta: Callable[[dict], None] | None = None):
    """Restore ``(state, meta)`` from ``directory``: the newest intact step unless ``step``.

    Args:
      directory: checkpoint directory.
      template: a ``TrainState`` of the right structure (e.g. a fresh ``init_state``); the
        restored state then has the same pytree types (exact resume). Its shapes are
        compared with the checkpoint's first (``ValueError`` listing the differences).
        Without it the state is returned as a dict of arrays.
      step: which step to restore (no fallback: a damaged step raises).
      check_meta: called with the raw metadata record of a step before its arrays are read;
        may raise :class:`RefusedError` (see :func:`~deis_jax.training.fit`).

    Returns:
      ``(state, meta)`` with ``meta["spec"]`` a :class:`DiffusionSpec` and
      ``meta["skipped"]`` the ``(step, reason)`` of newer steps that could not be read.
    """
    targets = None
    if template is not None:
        targets = {"model": {k: getattr(template, k) for k in _MODEL},
                   "train": {"opt_state": template.opt_state, "step": template.step,
                             "key": jax.random.key_data(template.key)}}
    out, _, skipped = _restore(directory, items=("model", "train"), template=targets,
                               step=step, check_meta=check_meta)
    tree, meta = _merge(out)
    meta["skipped"] = skipped
    return (tree if template is None else type(template)(**tree)), meta


def load_model(directory, *, step: int | None = None, ema: bool = True) -> Model:
    """Load a checkpoint as a :class:`deis_jax.Model` (EMA parameters unless ``ema=False``;
    ``model.info`` holds the ``spec``, the ``step`` and the whole ``meta`` record).

    Reads only the parameters and the metadata (not the optimizer state) of the newest intact
    step, warning about any newer step it had to skip (see the module docstring), or of
    exactly ``step``.

    Example::

        model = load_model("runs/checkerboard")
        shape = model.info["spec"].data["shape"]
        x_T = model.schedule.prior_sample(jax.random.key(0), (512, *shape))
        x0 = deis_jax.sample(model, x_T, solver="tab3", nfe=10)
    """
    out, _, _ = _restore(directory, items=("model",), step=step)
    tree, meta = _merge(out)
    params = tree["ema_params"] if ema else tree["params"]
    return meta["spec"].as_model(params, step=int(meta["step"]), meta=meta)
