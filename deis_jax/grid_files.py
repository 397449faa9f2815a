"""Time grids saved with what they were made for, and checked against each call that uses them.

A grid tuned for one schedule, solver and number of steps (:func:`deis_jax.learned_grids.
optimize_timesteps`) is only good for that combination. :func:`save_grid` writes it as a
small JSON file -- the times (as exact decimal floats) plus metadata: the schedule (family,
parameters, ``[t_min, t_max]``), the solver, the NFE and number of steps, and whatever
identifies the model (a checkpoint directory and step) and measures the grid (its validation
error, the teacher, the date). :func:`load_grid` returns a :class:`TimeGrid` (the times and
that metadata), which :func:`deis_jax.make_plan` -- and so ``sample(model, x_T,
ts=load_grid(path))`` -- turns into the plan it was tuned for (its solver, with DPM-Solver-fast's
order mix for the recorded NFE), refused with a message naming the mismatch when the call's
schedule, solver or step count differ from the file's.

File format (``"format": "deis_jax.time_grid/1"``)::

    {"format": ..., "ts": [1.0, 0.32, ..., 0.001], "solver": "tab3", "nfe": 5,
     "n_steps": 5, "schedule": {"name": "vp_linear", "t_min": 0.001, "t_max": 1.0,
     "params": {"beta_min": 0.1, "beta_max": 20.0}}, "model": {...}, ...}

Array-valued schedule parameters (the ``vp_discrete`` table) are recorded by shape and the
SHA-256 of their float64 bytes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os

import numpy as np

from deis_jax._checks import check_writable_file
from deis_jax._files import atomic_write
from deis_jax.schedules import Schedule, check_schedule

__all__ = ["FORMAT", "TimeGrid", "check_grid_for", "load_grid", "save_grid",
           "schedule_record"]

FORMAT = "deis_jax.time_grid/1"
_REQUIRED = ("ts", "solver", "nfe", "n_steps", "schedule")


@dataclasses.dataclass(frozen=True, eq=False)
class TimeGrid:
    """A grid file's content: the times ``ts`` (1-d float64) and their ``metadata`` (see the
    module docstring).

    :func:`deis_jax.make_plan` (and so ``sample(..., ts=grid)``) takes it and checks it
    against the call; ``np.asarray(grid)`` is the bare times, which are used unchecked.
    """

    ts: np.ndarray
    metadata: dict

    def __post_init__(self):
        object.__setattr__(self, "ts", np.array(self.ts, dtype=np.float64))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.ts, dtype=dtype)

    def __len__(self):
        return len(self.ts)


def _param_record(value):
    v = np.asarray(value, np.float64)
    if v.ndim == 0:
        return float(v)
    return {"shape": list(v.shape), "sha256": hashlib.sha256(v.tobytes()).hexdigest()}


def schedule_record(schedule: Schedule) -> dict:
    """What identifies a schedule in a grid file: family name, time range and parameters."""
    check_schedule(schedule)
    return {"name": schedule.name, "t_min": float(schedule.t_min),
            "t_max": float(schedule.t_max),
            "params": {k: _param_record(v) for k, v in sorted(schedule.params.items())}}


def save_grid(path, ts, *, schedule: Schedule, solver=None, nfe: int | None = None,
              **metadata) -> TimeGrid:
    """Write ``ts`` and its metadata to the JSON file ``path``; return it as a
    :class:`TimeGrid`.

    Args:
      path: the file to write (``.json``); its directory must exist and be writable.
      ts: the time grid ``(N + 1,)``, strictly decreasing; a :class:`TimeGrid` (e.g.
        ``optimize_timesteps(...).ts``) brings its metadata, which the arguments extend.
      schedule: the schedule the grid was made for.
      solver: the solver (a name or a :class:`~deis_jax.solvers.Solver`).
      nfe: the number of model calls the grid gives that solver.
      **metadata: anything JSON-serialisable that identifies the model or measures the grid
        (``model={"ckpt": ..., "step": ...}``, ``validation_error=...``); ``created`` (UTC,
        ISO 8601) is added when absent.

    Raises:
      ValueError: ``path`` is not writable; ``ts`` is not a strictly decreasing 1-d grid of
        finite times; solver or nfe missing; a :class:`TimeGrid` made for another schedule.
    """
    path = check_writable_file("path", path)
    own = dict(getattr(ts, "metadata", None) or {})
    if own:
        mismatch = _schedule_mismatch(own.get("schedule", {}), schedule)
        if mismatch:
            raise ValueError(f"ts was made for {mismatch}")
    for key in ("format", "path", "schedule", "n_steps"):
        own.pop(key, None)
    own_solver, own_nfe = own.pop("solver", None), own.pop("nfe", None)
    solver = own_solver if solver is None else solver
    nfe = own_nfe if nfe is None else nfe
    if solver is None or nfe is None:
        raise ValueError("save_grid needs solver= and nfe= (what the grid was made for)")
    metadata = {**own, **metadata}
    v = np.asarray(ts, np.float64)
    if v.ndim != 1 or v.shape[0] < 2 or not np.all(np.isfinite(v)) or not np.all(
            np.diff(v) < 0):
        raise ValueError(f"ts must be a strictly decreasing 1-d grid of finite times, got "
                         f"ts={v}")
    record = {"format": FORMAT, "ts": [float(t) for t in v],
              "solver": getattr(solver, "name", solver), "nfe": int(nfe),
              "n_steps": int(v.shape[0] - 1), "schedule": schedule_record(schedule),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              **metadata}
    text = json.dumps(record, indent=1)
    with atomic_write(path) as f:  # an interrupted write leaves the old file whole
        f.write(text + "\n")
    record.pop("ts")
    return TimeGrid(v, {**record, "path": path})


def load_grid(path) -> TimeGrid:
    """Read a grid written by :func:`save_grid`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a grid file (not JSON, another format, missing fields, or times that
        are not a strictly decreasing grid); the message names the file and the problem.
    """
    path = os.path.abspath(os.fspath(path))
    with open(path) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a time-grid file (not JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path} is not a time-grid file: format={got!r}, expected "
                         f"{FORMAT!r} (files written by deis_jax.grid_files.save_grid)")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{path} is missing the field(s) {missing} of a time-grid file")
    v = np.asarray(record.pop("ts"), np.float64)
    if v.ndim != 1 or v.shape[0] != record["n_steps"] + 1 or not np.all(np.isfinite(v)) \
            or not np.all(np.diff(v) < 0):
        raise ValueError(f"{path}: ts must be a strictly decreasing grid of n_steps + 1 = "
                         f"{record['n_steps'] + 1} finite times, got {v}")
    return TimeGrid(v, {**record, "path": path})


def _schedule_mismatch(recorded: dict, schedule: Schedule) -> str | None:
    now = schedule_record(schedule)
    if recorded.get("name") != now["name"]:
        return f"schedule {recorded.get('name')!r} (this call: {now['name']!r})"
    for key in ("t_min", "t_max"):
        if not np.isclose(recorded.get(key, np.nan), now[key], rtol=1e-6, atol=0.0):
            return f"schedule {key}={recorded.get(key)!r} (this call: {now[key]!r})"
    rec_params = recorded.get("params", {})
    for key, value in now["params"].items():
        old = rec_params.get(key)
        same = (old == value if isinstance(value, dict) or isinstance(old, dict)
                else old is not None and np.isclose(old, value, rtol=1e-6, atol=0.0))
        if not same:
            return f"schedule parameter {key}={old!r} (this call: {value!r})"
    return None


def check_grid_for(ts, schedule: Schedule, solver) -> None:
    """Refuse a :class:`TimeGrid` made for another schedule, solver or number of steps (a
    plain array passes: it carries no record).

    Raises:
      ValueError: naming the file, what it was made for and what the call uses.
    """
    meta = getattr(ts, "metadata", None)
    if not isinstance(meta, dict):
        return
    n_steps = len(ts) - 1
    name = getattr(solver, "name", solver)
    where = meta.get("path", "this time grid")
    problems = []
    if meta.get("solver") != name:
        problems.append(f"solver {meta.get('solver')!r} (this call: {name!r})")
    if meta.get("n_steps") != n_steps:
        problems.append(f"{meta.get('n_steps')} steps, NFE {meta.get('nfe')} (this call: "
                        f"{n_steps} steps)")
    mismatch = _schedule_mismatch(meta.get("schedule", {}), schedule)
    if mismatch:
        problems.append(mismatch)
    if problems:
        raise ValueError(f"{where} was made for " + "; ".join(problems) + ": a tuned grid "
                         "only suits its schedule, solver and step count (pass "
                         "np.asarray(ts) to use it anyway)")
