"""Replacement conditioning (deis_jax.conditioning) on a mixture that is a product of two 1-d
mixtures in a (possibly rotated) basis ``u = R x``: measuring ``u_1`` leaves ``u_2`` with its
exact marginal, so the conditional samples have a closed-form distribution.

On such a separable problem the unmeasured part evolves on its own, so these tests check that
replacement leaves it exact (also through the pseudo-inverse of a rotated measurement), that
the measured part follows the forward-noising path after every step and ends at ``y``; on
correlated data replacement is an approximation and has no closed form to test against."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, sample, schedules, testing, timesteps
from deis_jax.conditioning import inpaint, inpaint_hook, measure, measurement_hook

SCHED = schedules.vp_linear()
A_MEANS, A_W = np.array([-1.0, 1.5]), np.array([0.3, 0.7])
B_MEANS, B_W = np.array([-2.0, 1.0]), np.array([0.6, 0.4])
B_MEAN = float(B_W @ B_MEANS)
N = 2000


def _problem(theta):
    """The product mixture with isotropic components (so diagonal in any rotated basis),
    rotated by ``theta``; ``R`` maps ``x`` to ``u``."""
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    u_means = np.array([[a, b] for a in A_MEANS for b in B_MEANS])
    weights = np.array([wa * wb for wa in A_W for wb in B_W])
    gmm = testing.GaussianMixture(jnp.asarray(weights, jnp.float32),
                                  jnp.asarray(u_means @ rot, jnp.float32),
                                  jnp.full((4, 2), 0.3, jnp.float32))
    u1 = jnp.where(jax.random.uniform(jax.random.key(5), (N,)) < 0.5, -1.0, 1.5)
    x_T = SCHED.prior_sample(jax.random.key(0), (N, 2))
    return gmm, jnp.asarray(rot, jnp.float32), u1, x_T


def _check_marginal(u2, reference=None):
    """``u_2``'s mean and upper-mode weight agree with ``B``'s (or with those of the
    ``reference`` sample) within 4 standard errors."""
    stats = [(lambda v: v, B_MEAN), (lambda v: (v > -0.5).astype(jnp.float32), float(B_W[1]))]
    for stat, exact in stats:
        got = stat(u2)
        se2 = float(jnp.var(got)) / N
        if reference is not None:
            exact = float(jnp.mean(stat(reference)))
            se2 += float(jnp.var(stat(reference))) / N
        assert abs(float(jnp.mean(got)) - exact) < 4 * np.sqrt(se2), (float(jnp.mean(got)),
                                                                      exact, np.sqrt(se2))


def test_inpainting_with_a_deterministic_solver_gives_the_exact_conditional():
    gmm, _, u1, x_T = _problem(0.0)
    y = jnp.stack([u1, jnp.full((N,), 7.0)], -1)  # the unknown entries are never read
    x = inpaint(as_model(gmm.eps_fn(SCHED), SCHED), x_T, y, jnp.array([1.0, 0.0]),
                key=jax.random.key(2), solver="tab3", nfe=20, grid="log_snr")
    np.testing.assert_array_equal(x[:, 0], u1)
    _check_marginal(x[:, 1])


def test_linear_measurement_of_a_rotated_coordinate():
    """``A = R[:1]`` mixes both data coordinates: the pseudo-inverse path, exact here."""
    gmm, rot, u1, x_T = _problem(0.6)
    x = measure(as_model(gmm.eps_fn(SCHED), SCHED), x_T, u1[:, None], rot[:1],
                key=jax.random.key(2), solver="tab3", nfe=20, grid="log_snr")
    u = x @ rot.T
    np.testing.assert_allclose(u[:, 0], u1, atol=1e-5)
    _check_marginal(u[:, 1])


def test_inpainting_with_predictor_corrector_matches_unconditional_pc():
    """Score-SDE PC is itself biased on this mixture at this NFE (upper-mode weight about
    0.45 for 0.40), so the inpainted ``u_2`` is compared with PC's own unconditional ``u_2``."""
    gmm, _, u1, x_T = _problem(0.0)
    y = jnp.stack([u1, jnp.zeros(N)], -1)
    kw = dict(solver="pc", nfe=200, grid="uniform")
    model = as_model(gmm.eps_fn(SCHED), SCHED)
    x = inpaint(model, x_T, y, jnp.array([[1.0, 0.0]]), key=jax.random.key(2), **kw)
    free = sample(model, x_T, key=jax.random.key(3), **kw)
    np.testing.assert_array_equal(x[:, 0], u1)
    _check_marginal(x[:, 1], reference=free[:, 1])


def test_known_entries_follow_the_forward_noising_path():
    """After every step the known entry is ``alpha_t y + sigma_t z`` for one fixed ``z``."""
    gmm, _, u1, x_T = _problem(0.0)
    y = jnp.stack([u1, jnp.zeros(N)], -1)[:8]
    hook = inpaint_hook(jax.random.key(4), y, jnp.array([1.0, 0.0]), SCHED)
    out = sample(as_model(gmm.eps_fn(SCHED), SCHED), x_T[:8], solver="ddim", nfe=5, hook=hook,
                 full_output=True, return_trajectory=True)
    z = jax.random.normal(jax.random.key(4), y.shape, y.dtype)[:, 0]
    grid = timesteps(SCHED, 5, "quadratic")
    for i in range(1, 6):
        t = grid[i]
        np.testing.assert_allclose(out.trajectory[i, :, 0],
                                   SCHED.alpha(t) * y[:, 0] + SCHED.sigma(t) * z, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("mask, match", [
    (jnp.ones((3,)), r"mask of shape \(3,\) does not broadcast to the data's shape \(4, 2\)"),
    (jnp.ones((2, 2)), r"mask of shape \(2, 2\) does not broadcast"),
    (jnp.full((2,), 0.5), "0/1"),
])
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        inpaint_hook(jax.random.key(0), jnp.zeros((4, 2)), mask, SCHED)


@pytest.mark.parametrize("matrix, axis, match", [
    (jnp.ones((2, 2)), -1, r"m = y.shape\[-1\] = 1"),
    (jnp.ones((1, 2)), 0, "not the batch axis"),
    (jnp.zeros((1, 2)), -1, "full row rank"),
])
def test_bad_measurement(matrix, axis, match):
    with pytest.raises(ValueError, match=match):
        measurement_hook(jax.random.key(0), jnp.zeros((4, 1)), matrix, SCHED, axis=axis)


def test_colorization_and_a_broadcast_mask_on_images():
    """NHWC data: the grey level ``(1, 1, 1)/sqrt(3)`` on the channel axis, and a
    ``(H, W, 1)`` mask; both end exactly on the measurement and leave the rest free."""
    model = as_model(lambda x, t: 0.5 * x, SCHED)  # any eps-model; the measurement is exact
    x_T = SCHED.prior_sample(jax.random.key(0), (2, 4, 4, 3))
    img = jax.random.uniform(jax.random.key(1), (2, 4, 4, 3), minval=-1, maxval=1)
    grey = jnp.ones((1, 3)) / np.sqrt(3)
    x = measure(model, x_T, jnp.tensordot(img, grey.T, axes=1), grey,
                key=jax.random.key(2), solver="ddim", nfe=4)
    np.testing.assert_allclose(jnp.tensordot(x, grey.T, axes=1),
                               jnp.tensordot(img, grey.T, axes=1), atol=1e-5)
    assert float(jnp.max(jnp.abs(x - img))) > 0.1  # the colour is generated, not copied
    mask = jnp.zeros((4, 4, 1)).at[:2].set(1.0)
    x = inpaint(model, x_T, img, mask, key=jax.random.key(2), solver="ddim", nfe=4)
    np.testing.assert_array_equal(x[:, :2], img[:, :2])
    assert float(jnp.max(jnp.abs(x[:, 2:] - img[:, 2:]))) > 0.1
