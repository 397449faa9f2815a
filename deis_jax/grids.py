"""Time grids for sampling: which times ``t_0 = t_max > t_1 > ... > t_N = t_min`` to visit.

All grids are computed in ``jnp`` from (possibly traced) parameters, so a grid parameter such
as the EDM exponent can be ``jax.vmap``-ed or optimised by gradient descent.

Kinds:
  * ``"uniform"``: uniform in ``t``.
  * ``"quadratic"``: uniform in ``sqrt(t)`` (DDIM Sec. D.2, DEIS Sec. 5); ``"power"`` with any
    ``power`` generalises it.
  * ``"log_snr"``: uniform in ``lambda = log(alpha/sigma)`` (DPM-Solver Sec. 3.3).
  * ``"edm"``: uniform in ``rho^(1/p)`` with exponent ``p`` (default 7; Karras et al. 2022,
    eq. 5), mapped back to ``t`` through the schedule.
  * ``"shifted"``: the SD3 timestep shift of a uniform grid (Esser et al. 2024, Sec. 5.3.2),
    ``t = s u / (1 + (s - 1) u)`` with ``u`` uniform (default ``s = 3``; times in ``[0, 1]``):
    on :func:`deis_jax.schedules.flow` this is the sigma grid of SD3/Flux samplers, and the
    uniform grid of ``flow(shift=s)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from deis_jax._checks import check_choice, check_int, check_scalar, check_time, is_concrete
from deis_jax.schedules import Schedule, check_range, check_schedule

__all__ = ["GRID_KINDS", "timesteps", "check_grid", "check_time_in_range"]

GRID_KINDS = ("uniform", "quadratic", "power", "log_snr", "edm", "shifted")


def timesteps(
    schedule: Schedule,
    n_steps: int,
    kind: str = "quadratic",
    *,
    t_min=None,
    t_max=None,
    power=2.0,
    rho=7.0,
    shift=3.0,
):
    r"""Return ``n_steps + 1`` decreasing times from ``t_max`` to ``t_min``.

    Args:
      schedule: the noise schedule (for ``log_snr``/``edm`` grids and the default range).
      n_steps: number of solver steps ``N >= 1`` (not NFE: see ``Solver.steps_for_nfe``).
      kind: one of :data:`GRID_KINDS`.
      t_min, t_max: override the schedule's default range (Python floats); the schedule
        must be usable there (:func:`deis_jax.schedules.check_range`).
      power: exponent of the ``"power"`` grid, uniform in ``t^(1/power)``; may be traced.
      rho: exponent of the ``"edm"`` grid, uniform in ``rho_t^(1/rho)``; may be traced.
      shift: the shift ``s > 0`` of the ``"shifted"`` grid, uniform in
        ``u = t / (s - (s - 1) t)``; may be traced. On :func:`~deis_jax.schedules.flow`
        with its own shift ``s0`` the grid is the one whose noise levels ``sigma_t`` are the
        SD3 shift ``s`` of a uniform grid, i.e. ``t`` shifted by ``s / s0`` (so
        ``flow(shift=3)`` with the default ``shift=3`` is uniform in ``t``, not shifted
        twice).

    Returns:
      Array of shape ``(n_steps + 1,)`` with ``ts[0] = t_max`` and ``ts[-1] = t_min`` exactly.

    Raises:
      ValueError: a bad argument, or (for concrete arguments) a grid that is not strictly
        decreasing in the default float dtype (an extreme ``power`` or ``rho``).

    Example:
      >>> from deis_jax import schedules, timesteps
      >>> ts = timesteps(schedules.vp_linear(), 10, "log_snr")
      >>> ts.shape
      (11,)
    """
    check_schedule(schedule)
    check_choice("kind", kind, GRID_KINDS)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    t_min = schedule.t_min if t_min is None else check_time("t_min", t_min)
    t_max = schedule.t_max if t_max is None else check_time("t_max", t_max)
    if not t_min < t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    power = check_scalar("power", power, lower=0.0, lower_open=True)
    rho = check_scalar("rho", rho, lower=0.0, lower_open=True)
    shift = check_scalar("shift", shift, lower=0.0, lower_open=True)
    if kind == "shifted" and t_max > 1.0:
        raise ValueError(f"kind='shifted' maps times in [0, 1] (the SD3 shift of a flow "
                         f"schedule's noise level), got t_max={t_max!r} for the "
                         f"{schedule.name} schedule")
    if kind in ("log_snr", "edm") and t_min == 0.0:
        raise ValueError(f"kind={kind!r} needs t_min > 0 (lambda is infinite at t = 0), got "
                         f"t_min={t_min!r}")
    # t = 0 is a valid end of a t-space grid (the last step then lands on the data).
    check_range(schedule, t_min if t_min > 0 else schedule.t_min, t_max)

    u = jnp.linspace(0.0, 1.0, n_steps + 1)
    if kind == "uniform":
        ts = t_max + u * (t_min - t_max)
    elif kind in ("quadratic", "power"):
        p = 2.0 if kind == "quadratic" else power
        ts = (t_max ** (1 / p) + u * (t_min ** (1 / p) - t_max ** (1 / p))) ** p
    elif kind == "log_snr":
        lo, hi = schedule.log_snr(t_max), schedule.log_snr(t_min)
        ts = schedule.t_from_log_snr(lo + u * (hi - lo))
    elif kind == "shifted":
        if schedule.name == "flow":  # its t is already shifted: shifts compose by product
            shift = shift / schedule.params["shift"]
        lo, hi = (t / (shift - (shift - 1.0) * t) for t in (t_min, t_max))
        v = hi + u * (lo - hi)
        ts = shift * v / (1.0 + (shift - 1.0) * v)
    else:  # edm
        r_max, r_min = schedule.rho(t_max), schedule.rho(t_min)
        rhos = (r_max ** (1 / rho) + u * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
        ts = schedule.t_from_rho(rhos)
    # Pin the end points exactly (inverse maps round); interior points are untouched.
    ts = ts.at[0].set(t_max).at[-1].set(t_min)
    if is_concrete(ts):
        v = np.asarray(ts, np.float64)
        bad = np.flatnonzero(~(np.isfinite(v[1:]) & (np.diff(v) < 0)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"timesteps(kind={kind!r}, n_steps={n_steps}, power={power!r}, rho={rho!r}, "
                f"shift={shift!r}) is "
                f"not strictly decreasing in {ts.dtype.name}: ts[{i}]={v[i]!r}, "
                f"ts[{i + 1}]={v[i + 1]!r}; use a moderate grid exponent (power, rho) or fewer "
                "steps")
    return ts


def check_time_in_range(schedule: Schedule, name: str, value, tol: float = 0.0) -> None:
    """A concrete time (or the extremes of a grid) must be finite and inside the schedule's
    ``[t_min, t_max]`` up to a relative ``tol`` (rounding); traced values pass."""
    if not is_concrete(value):
        return
    v = np.asarray(value, np.float64)
    lo, hi = schedule.t_min, schedule.t_max
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {name}={v if v.ndim else float(v)!r}")
    if v.min() < lo * (1 - tol) or v.max() > hi * (1 + tol):
        got = (f"min={float(v.min())!r}, max={float(v.max())!r}" if v.ndim
               else f"{name}={float(v)!r}")
        raise ValueError(
            f"{name} must lie in [t_min, t_max] = [{lo}, {hi}] of the {schedule.name} "
            f"schedule; got {got}. Build the schedule with another t_min/t_max to use a wider "
            "range.")


def check_grid(schedule: Schedule, ts, *, name: str = "ts"):
    """Validate a user time grid eagerly and return it as an array.

    The grid must be 1-d with at least 2 points and strictly monotone (decreasing to sample,
    increasing to encode), and stay inside ``[0, inf)`` with every point within
    ``[schedule.t_min, schedule.t_max]`` up to floating-point rounding. Traced grids (e.g. a
    learned grid under ``jit``) can only be checked for shape.
    """
    check_schedule(schedule)
    if not (hasattr(ts, "shape") and hasattr(ts, "dtype")):
        ts = np.asarray(ts)  # a list of floats
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-d array of >= 2 times, got shape {ts.shape}")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {ts.dtype}")
    if not is_concrete(ts):
        return ts
    v = np.asarray(ts, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains non-finite values: {name}={v}")
    d = np.diff(v)
    if not (np.all(d < 0) or np.all(d > 0)):
        raise ValueError(
            f"{name} must be strictly monotone (decreasing to sample, increasing to encode); "
            f"got {name}={v}"
        )
    check_time_in_range(schedule, name, v, tol=8 * np.finfo(np.asarray(ts).dtype).eps)
    return ts
