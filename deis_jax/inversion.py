r"""Inversion and interpolation: encode data into noise with a deterministic solver, decode
it back, and interpolate between latents.

The probability-flow ODE is a bijection between ``p_{t_min}`` and ``p_{t_max}``; any
deterministic solver of :func:`deis_jax.sample` integrates it in either direction of time, so
the *encoding* of ``x`` is the same solver run on the increasing grid ``ts[::-1]`` (DDIM,
Song et al. 2021a, Sec. 5.4 and eq. 14 read backwards; DEIS, DPM-Solver++ alike), and
*decoding* is ordinary sampling from the latent. With exact solves, ``decode(encode(x)) = x``;
a solver of global order ``p`` reconstructs with an error ``O(h^p)`` (each direction
contributes one), which :func:`reconstruction_error` measures.

The grid matters more for encoding than for sampling: a multistep solver's warm-up (its
lower-order first steps) now runs at ``t_min``, where the default quadratic grid takes its
largest steps in ``lambda``. Measured on a 2-d mixture (float64,
``benchmarks/results/applications.md``): tAB3's encoding error stalls at ``5.4e-6`` and
``4.9e-6`` at 80 and 160 steps on the quadratic grid while its decoding keeps converging
(``6.5e-6``, ``6.3e-7``); on the log-SNR grid (``grid="log_snr"``) encoding converges too
(``4.8e-5``, ``2.4e-6``).

Latents of a VP model are (nearly) standard Gaussian vectors, which concentrate on the sphere
of radius ``sqrt(d)``: a straight line between two of them passes through low-density
points of smaller norm, so latents are interpolated on the great circle instead
(:func:`slerp`; Shoemake 1985, as in DDIM's Sec. 5.3 and App. D.5).

References: J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021;
K. Shoemake, *Animating rotation with quaternion curves*, SIGGRAPH 1985.
"""

from __future__ import annotations

import jax.numpy as jnp

from deis_jax._checks import check_all_finite, check_batch, is_concrete
from deis_jax.model import Model, takes_model
from deis_jax.plan import Plan, make_plan
from deis_jax.sampling import sample

__all__ = ["encode", "decode", "reconstruction_error", "slerp"]


def sampling_plan(schedule, solver, ts, nfe, grid) -> Plan:
    """The plan on the decreasing (sampling) grid, for a deterministic solver; the encoding
    runs it reversed (:func:`reversed_plan`)."""
    if (ts is None) == (nfe is None):
        raise ValueError("pass exactly one of ts= (a decreasing time grid) and nfe=")
    plan = make_plan(schedule, solver, ts=ts, nfe=nfe, grid=grid)
    if plan.solver.stochastic:
        raise ValueError(f"solver {plan.solver.name!r} is stochastic: inversion needs a "
                         "deterministic solver (e.g. 'ddim', 'tab3', 'dpmpp_2m')")
    if is_concrete(plan.ts) and not bool(jnp.all(jnp.diff(plan.ts) < 0)):
        raise ValueError(f"ts must be the decreasing (sampling) grid; inversion runs it "
                         f"backwards itself, got ts={plan.ts}")
    return plan


def reversed_plan(plan: Plan) -> Plan:
    """The same solver on the reversed grid (data to noise)."""
    return Plan(plan.solver, plan.ts[::-1], plan.nfe)


@takes_model
def encode(model: Model, x, *, solver="ddim", ts=None, nfe=None, grid: str = "quadratic",
           **sample_kwargs):
    r"""Encode data ``x`` (at ``ts[-1]``, usually ``t_min``) into its latent at ``ts[0]``.

    Runs ``solver`` on the reversed grid ``ts[::-1]`` (data to noise): the DDIM step read from
    ``s < t`` is ``x_t = (alpha_t/alpha_s) x_s + alpha_t (rho_t - rho_s) eps(x_s, s)``.

    Args:
      model: a :class:`~deis_jax.Model` (:func:`deis_jax.as_model`).
      x: data, shape ``(batch, ...)``.
      solver: a deterministic solver (name or ``Solver``).
      ts: the *sampling* grid (decreasing), as for :func:`decode`; or
      nfe: model calls, with the grid of kind ``grid`` (as in ``sample(nfe=)``).
      **sample_kwargs: ``full_output``, ``check_finite``, ``hook``, ... passed to
        :func:`deis_jax.sample`.

    Returns:
      The latent, shape of ``x`` (or ``sample``'s full output).

    Example:
      >>> import jax
      >>> from deis_jax import as_model, schedules, testing
      >>> from deis_jax.inversion import decode, encode
      >>> sched = schedules.vp_linear()
      >>> gmm = testing.gaussian_mixture(dim=2, n_modes=3, seed=0)
      >>> model = as_model(gmm.eps_fn(sched), sched)
      >>> x, _ = gmm.sample(jax.random.key(0), 8)
      >>> z = encode(model, x, solver="tab3", nfe=20)
      >>> x_rec = decode(model, z, solver="tab3", nfe=20)
      >>> bool(testing.rmse(x_rec, x) < 0.05)
      True
    """
    x = check_batch("x", x)
    check_all_finite("x", x)  # named as this call names it (sample would say x_T)
    plan = sampling_plan(model.schedule, solver, ts, nfe, grid)
    return sample(model, x, reversed_plan(plan), **sample_kwargs)


@takes_model
def decode(model: Model, z, *, solver="ddim", ts=None, nfe=None, grid: str = "quadratic",
           **sample_kwargs):
    """Decode a latent ``z`` (at ``ts[0]``) back to data: :func:`deis_jax.sample` on the
    decreasing grid (same arguments as :func:`encode`)."""
    plan = sampling_plan(model.schedule, solver, ts, nfe, grid)
    return sample(model, z, plan, **sample_kwargs)


@takes_model
def reconstruction_error(model: Model, x, *, solver="ddim", ts=None, nfe=None,
                         grid: str = "quadratic", **sample_kwargs):
    """``(x_rec, rmse)``: ``decode(encode(x))`` with the same solver and grid, and its
    root-mean-square error per sample (shape ``(batch,)``). Zero for exact solves; a solver of
    order ``p`` reaches ``O(h^p)``."""
    x = check_batch("x", x)
    check_all_finite("x", x)  # named as this call names it (sample would say x_T)
    plan = sampling_plan(model.schedule, solver, ts, nfe, grid)
    z = sample(model, x, reversed_plan(plan), **sample_kwargs)
    x_rec = sample(model, z, plan, **sample_kwargs)
    err = jnp.sqrt(jnp.mean(jnp.reshape((x_rec - x) ** 2, (x.shape[0], -1)), axis=-1))
    return x_rec, err


def slerp(z0, z1, w):
    r"""Spherical linear interpolation between latents, per sample:

    .. math::
       \mathrm{slerp}(z_0, z_1; w) = \frac{\sin((1-w)\theta)}{\sin\theta} z_0
           + \frac{\sin(w\theta)}{\sin\theta} z_1,
       \qquad \cos\theta = \frac{\langle z_0, z_1\rangle}{|z_0|\,|z_1|},

    the angle taken over all but the leading (batch) axis; linear interpolation where
    ``theta`` is too small for the ratio (parallel latents) or undefined (a zero latent). Jittable; ``jax.vmap`` over ``w``
    for a path.

    Args:
      z0, z1: latents of equal shape ``(batch, ...)``.
      w: interpolation weight (``0 -> z0``, ``1 -> z1``), a scalar or ``(batch,)``.

    Example:
      >>> import jax.numpy as jnp
      >>> z = slerp(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]), 0.5)
      >>> [round(float(v), 4) for v in z[0]]
      [0.7071, 0.7071]
    """
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    if z0.shape != z1.shape or z0.ndim < 2:
        raise ValueError(f"z0 and z1 must have the same shape (batch, ...), got {z0.shape} "
                         f"and {z1.shape}")
    w = jnp.asarray(w, z0.dtype)
    if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != z0.shape[0]):
        raise ValueError(f"w must be a scalar or of shape (batch,) = ({z0.shape[0]},), got "
                         f"shape {w.shape}")
    axes = tuple(range(1, z0.ndim))
    norms = jnp.sqrt(jnp.sum(z0**2, axis=axes) * jnp.sum(z1**2, axis=axes))
    # a zero latent has no direction: interpolate linearly (cos = 1) instead of 0/0 = NaN
    cos = jnp.clip(jnp.sum(z0 * z1, axis=axes) / jnp.where(norms > 0, norms, 1.0), -1.0, 1.0)
    cos = jnp.where(norms > 0, cos, 1.0)
    theta = jnp.arccos(cos)
    small = theta < 1e-4
    sin = jnp.where(small, 1.0, jnp.sin(theta))
    a = jnp.where(small, 1.0 - w, jnp.sin((1.0 - w) * theta) / sin)
    b = jnp.where(small, w, jnp.sin(w * theta) / sin)
    shape = (z0.shape[0],) + (1,) * (z0.ndim - 1)
    return jnp.reshape(a, shape) * z0 + jnp.reshape(b, shape) * z1
