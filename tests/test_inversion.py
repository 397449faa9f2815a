"""Inversion (deis_jax.inversion): encode-then-decode on an exact mixture converges at the
solver's order; slerp's closed forms; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, get_solver, schedules, testing, timesteps
from deis_jax.inversion import decode, encode, reconstruction_error, slerp

SCHED = schedules.vp_linear()
GMM = testing.gaussian_mixture(2, 4, std=0.5, seed=0)
MODEL = as_model(GMM.eps_fn(SCHED), SCHED)


def _x():
    return GMM.sample_marginal(jax.random.key(0), 64, SCHED.t_min, SCHED)


@pytest.mark.parametrize("solver, steps", [("ddim", (20, 40)), ("tab3", (20, 40))])
def test_reconstruction_error_falls_at_the_solver_order(solver, steps):
    """log-SNR grids; the round trip's RMSE halves ``2^order`` times per doubling (measured
    slopes: DDIM 0.92, tAB3 4.72 -- tAB3 is order 4 here, ``get_solver('tab3').order``)."""
    x = _x()
    errs = [float(jnp.mean(reconstruction_error(MODEL, x, solver=solver,
                                                ts=timesteps(SCHED, n, "log_snr"))[1]))
            for n in steps]
    slope = np.log2(errs[0] / errs[1])
    order = get_solver(solver).order
    assert order - 0.3 <= slope <= order + 1.3, (solver, errs, slope)


def test_encode_decode_are_the_reversed_grid():
    """encode = sample on ts[::-1]; decode inverts it up to the solver's error; the latent
    has the prior's scale."""
    x = _x()
    z = encode(MODEL, x, solver="tab3", nfe=30, grid="log_snr")
    assert 0.7 < float(jnp.std(z)) < 1.3
    x_rec = decode(MODEL, z, solver="tab3", nfe=30, grid="log_snr")
    assert float(testing.rmse(x_rec, x)) < 0.01


def test_slerp_closed_forms():
    z0 = jnp.array([[2.0, 0.0], [1.0, 1.0]])
    z1 = jnp.array([[0.0, 2.0], [2.0, 2.0]])  # orthogonal; parallel (linear fallback)
    for w in (0.0, 0.25, 1.0):
        out = slerp(z0, z1, w)
        np.testing.assert_allclose(out[0], 2 * jnp.array([jnp.cos(w * jnp.pi / 2),
                                                          jnp.sin(w * jnp.pi / 2)]), atol=1e-6)
        np.testing.assert_allclose(out[1], (1 - w) * z0[1] + w * z1[1], atol=1e-6)
    path = jax.vmap(lambda w: slerp(z0, z1, w))(jnp.linspace(0, 1, 5))
    np.testing.assert_allclose(jnp.linalg.norm(path[:, 0], axis=-1), 2.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="euler_maruyama", nfe=10), "stochastic: inversion needs a deterministic"),
    (dict(), "exactly one of ts= .* and nfe="),
    (dict(ts=jnp.linspace(1e-3, 1.0, 5)), "ts must be the decreasing"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode(MODEL, jnp.zeros((2, 2)), **kwargs)


def test_slerp_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        slerp(jnp.zeros((2, 3)), jnp.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match=r"w must be a scalar or of shape \(batch,\)"):
        slerp(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(3))
