"""UniPC: a hand-computed predictor-corrector step, final steps, corrector fade, bad input
(convergence orders: ``test_solver_orders.py``)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, get_solver, sample, schedules, testing, timesteps
from deis_jax.solvers import unipc
from deis_jax.solvers.ei import FinalRule, final_weight, second_weight

unipc_module = importlib.import_module("deis_jax.solvers.unipc")  # the function shadows it


def _vp_numpy(t, b0=0.1, b1=20.0):
    log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    alpha = np.exp(log_alpha)
    sigma = np.sqrt(-np.expm1(2 * log_alpha))
    return alpha, sigma, np.log(alpha / sigma)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc1_matches_hand_computation(x64, problem, variant):
    """UniPC-1 over 3 steps: DDIM predictor, UniC-1 corrector (c_1 = 1/2) with the model
    output at the predicted point, no corrector on the last step (Zhao et al. 2023, Alg. 2)."""
    sched, gmm, x_T, _ = problem
    ts = np.array([1.0, 0.5, 0.2, 0.05])
    out = sample(as_model(gmm.eps_fn(sched), sched), x_T, solver=unipc(1, variant=variant),
                 ts=jnp.asarray(ts))
    alpha, sigma, lam = _vp_numpy(ts)

    def x0(x, i):
        eps = np.asarray(gmm.eps(jnp.asarray(x), jnp.full((x.shape[0],), ts[i]), sched))
        return (x - sigma[i] * eps) / alpha[i]

    x_c = np.asarray(x_T)
    m = x0(x_c, 0)
    for i in range(3):
        h = lam[i + 1] - lam[i]
        base = sigma[i + 1] / sigma[i] * x_c - alpha[i + 1] * np.expm1(-h) * m
        if i == 2:
            x_c = base  # last step: prediction only
            break
        m_new = x0(base, i + 1)  # model call at the predicted point, reused below
        b_h = -h if variant == "bh1" else np.expm1(-h)
        x_c = base - alpha[i + 1] * b_h * 0.5 * (m_new - m)
        m = m_new
    np.testing.assert_allclose(np.asarray(out), x_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc1_eps_matches_hand_computation(x64, problem, variant):
    """UniPC-1 with noise prediction over 4 steps: DDIM predictor, UniC-1 with the solved
    weight ``B(h) c_1 = h phi_2(h) = (e^h - 1 - h)/h`` (so bh1 and bh2 coincide), faded towards
    the predictor by ``v = clip((|h| - 1)/2, 0, 1)``; no corrector on the last step."""
    sched, gmm, x_T, _ = problem
    ts = np.array([1.0, 0.7, 0.5, 0.35, 0.05])  # |h| = 2.56, 1.24, 0.77, 2.21
    out = sample(as_model(gmm.eps_fn(sched), sched), x_T,
                 solver=unipc(1, variant=variant, prediction="eps"), ts=jnp.asarray(ts))
    alpha, sigma, lam = _vp_numpy(ts)

    def eps(x, i):
        return np.asarray(gmm.eps(jnp.asarray(x), jnp.full((x.shape[0],), ts[i]), sched))

    x_c = np.asarray(x_T)
    e = eps(x_c, 0)
    fades = []
    for i in range(4):
        h = lam[i + 1] - lam[i]
        base = alpha[i + 1] / alpha[i] * x_c - sigma[i + 1] * np.expm1(h) * e
        if i == 3:
            x_c = base
            break
        e_new = eps(base, i + 1)
        corrected = base - sigma[i + 1] * (np.expm1(h) - h) / h * (e_new - e)
        v = np.clip((abs(h) - 1.0) / 2.0, 0.0, 1.0)
        fades.append(v)
        x_c = (1.0 - v) * corrected + v * base
        e = e_new
    assert 0.0 < fades[1] < fades[0] < 1.0 and fades[2] == 0.0, fades  # partial, none
    np.testing.assert_allclose(np.asarray(out), x_c, rtol=1e-12, atol=1e-12)


def test_variants_differ_only_through_fixed_coefficients(x64, problem):
    """bh1 and bh2 differ (through UniC-1 / UniP-2's fixed 1/2) but converge together."""
    sched, gmm, x_T, gt = problem
    model = as_model(gmm.eps_fn(sched), sched)
    a = sample(model, x_T, solver="unipc2", nfe=10, grid="log_snr")
    b = sample(model, x_T, solver="unipc2_bh1", nfe=10, grid="log_snr")
    assert float(jnp.max(jnp.abs(a - b))) > 1e-6
    assert float(testing.rmse(a, gt)) < 0.1 and float(testing.rmse(b, gt)) < 0.1


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_final_steps(x64, problem, prediction):
    """The last two intervals at orders 1 and <= 2 ("reference", the reference
    implementation's rule at every N), weighted by the last step's length ("auto"): fully
    lowered on 10-step grids, full order on a 300-step log-SNR grid (last step 0.032 long in
    lambda), in between at 0.1; with data prediction the interval before the last also at
    order 1 by the second band's weight w2 (0.57 on the 10-step quadratic grid, last step 1.84;
    1 on the 12-step EDM grid, 1.53; 0 elsewhere here; never with noise prediction).
    Predictor and corrector rows are (1 - w) full + w lowered + w2 (lowered both - lowered),
    every other row untouched."""
    sched, gmm, x_T, _ = problem
    auto, full, low = (unipc(3, prediction=prediction, final_steps=r)
                       for r in ("auto", "none", "reference"))
    # A rule that always lowers both intervals fully (w = w2 = 1 on every grid).
    both = unipc(3, prediction=prediction,
                 final_steps=FinalRule(-1.0, 0.5, 0.0, (-1.0, 0.5, 1e3, 0.5)))
    lam_range = float(sched.log_snr(sched.t_min) - sched.log_snr(sched.t_max))
    for ts, expect_w, expect_w2 in ((timesteps(sched, 10, "quadratic"), 1.0, None),
                                    (timesteps(sched, 12, "edm"), 1.0, 1.0),
                                    (timesteps(sched, 10, "log_snr"), 1.0, 0.0),
                                    (timesteps(sched, 300, "log_snr"), 0.0, 0.0),
                                    (timesteps(sched, int(lam_range / 0.1), "log_snr"), None,
                                     0.0)):
        w = float(final_weight(sched, ts, unipc_module.FINAL_RULE))
        w2 = float(second_weight(sched, ts, unipc_module.FINAL_RULE))
        for value, expect in ((w, expect_w), (w2, expect_w2)):
            if expect is None:
                assert 0.0 < value < 1.0, (w, w2)
            else:
                assert value == expect, (w, w2)
        if prediction == "eps":
            w2 = 0.0
        a, b, c, d = (s.table(sched, ts) for s in (auto, full, low, both))
        for field in ("pred", "corr"):
            fa, fb, fc, fd = (np.asarray(getattr(co, field)) for co in (a, b, c, d))
            np.testing.assert_allclose(fa, (1 - w) * fb + w * fc + w2 * (fd - fc),
                                       rtol=1e-12, atol=1e-14)
            rows = slice(None, -2) if field == "pred" else slice(None, -3)  # corr: shifted
            np.testing.assert_array_equal(fa[rows], fb[rows])
        # Lowered: the last predictor is UniP-1 (DDIM: one weight), the one before UniP-2
        # (UniP-1 when both are lowered).
        used = np.sum(np.asarray(c.pred) != 0, axis=-1)
        np.testing.assert_array_equal(used[-3:], [3, 2, 1])
        np.testing.assert_array_equal(np.sum(np.asarray(d.pred) != 0, axis=-1)[-3:], [3, 1, 1])
    out = sample(as_model(gmm.eps_fn(sched), sched), x_T, solver=auto, nfe=3, grid="quadratic")
    assert bool(jnp.all(jnp.isfinite(out)))  # 3 steps: the smallest grid the rule acts on


def test_eps_corrector_fades_on_long_steps(x64):
    """Noise prediction, VE, 6-step quadratic grid (first steps 2.6, 2.1, 1.7 long in lambda):
    UniPC-3's corrector is off on steps longer than 2, partial between 1 and 2 (UniPC-1's fades
    over 1 to 3, see test_unipc1_eps_matches_hand_computation), and the samplers stay
    within 1.5x of DDIM's error at NFE 5-7 (measured 0.31-0.77x; without the fade UniPC-1 and
    UniPC-3 have RMSE 1.00 and 0.97 at NFE 5 on this ring, 9x DDIM's)."""
    sched = schedules.ve()
    ts = timesteps(sched, 6, "quadratic")
    v = np.asarray(unipc_module.corrector_damping(sched, ts,
                                                  unipc_module.EPS_CORRECTOR_RAMP[3]))
    h = np.abs(np.diff(np.asarray(sched.log_snr(ts))))
    np.testing.assert_allclose(v, np.clip(h - 1.0, 0.0, 1.0), atol=1e-12)
    assert v[0] == 1.0 and 0.0 < v[2] < 1.0 and v[-1] == 0.0, v
    co = unipc(3, prediction="eps").table(sched, ts)
    # Row 1 corrects interval 0 (v = 1): exactly the predictor's weights, shifted by one slot.
    np.testing.assert_allclose(co.corr[1], np.roll(np.asarray(co.pred[0]), 1), atol=1e-12)

    gmm = testing.ring_mixture(8, std=0.05)
    x_T = sched.prior_sample(jax.random.key(0), (200, 2))
    gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    model = as_model(gmm.eps_fn(sched), sched)
    for nfe in (5, 6, 7):
        ddim = testing.rmse(sample(model, x_T, solver="ddim", nfe=nfe, grid="quadratic"), gt)
        for name in ("unipc1_eps", "unipc3_eps"):
            err = testing.rmse(sample(model, x_T, solver=name, nfe=nfe, grid="quadratic"), gt)
            assert float(err) < 1.5 * float(ddim), (name, nfe, float(err), float(ddim))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"predictor_order must be one of \[1, 2, 3\].*=4"):
        unipc(4)
    with pytest.raises(ValueError, match=r"final_steps='yes'.*\['auto', 'none', 'reference'\]"):
        unipc(3, final_steps="yes")
    with pytest.raises(ValueError, match=r"variant='bh3'.*\['bh1', 'bh2'\]"):
        unipc(2, variant="bh3")
    with pytest.raises(ValueError, match=r"prediction='v'.*\['eps', 'x0'\]"):
        unipc(2, prediction="v")
    assert get_solver("unipc3").nfe_for_steps(10) == 10
    assert get_solver("unipc3").model == "x0" and get_solver("unipc3_eps").model == "eps"


def test_jit_vmap_float32():
    sched = schedules.vp_linear()
    model = as_model(testing.gaussian_mixture(2, 3, std=0.4, seed=2).eps_fn(sched), sched)

    @jax.jit
    def draw(key):
        return sample(model, sched.prior_sample(key, (8, 2)), solver="unipc3", nfe=8)

    out = jax.vmap(draw)(jax.random.split(jax.random.key(0), 2))
    assert out.shape == (2, 8, 2) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_bh1_second_band_is_off_on_the_uniform_grid(x64, problem):
    """UniPC-bh1's wider band (last step 1.0-2.5 long) is switched off by the step ratio where
    the last step is ~4x the one before (uniform-t grid under VP, last step 2.1-3.5), and on
    (w2 = 1) on the EDM grid at NFE 10 (last step 1.8, ratio 1.26)."""
    sched = problem[0]
    rule = unipc_module.FINAL_RULES["bh1"]
    for n in (10, 30, 50):
        assert float(second_weight(sched, timesteps(sched, n, "uniform"), rule)) == 0.0, n
    assert float(second_weight(sched, timesteps(sched, 10, "edm"), rule)) == 1.0
    no_switch = rule._replace(second_ratio=float("inf"))
    assert float(second_weight(sched, timesteps(sched, 30, "uniform"), no_switch)) == 1.0


def test_second_band_is_differentiable_in_the_grid(x64, problem):
    """Learned grids differentiate through the final-step rule: on the 10-step quadratic grid
    (0 < w2 < 1) the gradient of UniPC-3's table with respect to the grid's last interior
    time matches a central finite difference."""
    sched = problem[0]
    ts = timesteps(sched, 10, "quadratic")
    assert 0.0 < float(second_weight(sched, ts, unipc_module.FINAL_RULE)) < 1.0
    solver = unipc(3)
    probe = np.linspace(1.0, 2.0, 4)

    def f(t_last):
        co = solver.table(sched, ts.at[-2].set(t_last))
        return jnp.sum(co.pred[-2:] @ probe) + jnp.sum(co.corr[-1] * probe)

    t0, eps = ts[-2], 1e-6 * float(ts[-2])
    grad = float(jax.grad(f)(t0))
    fd = float((f(t0 + eps) - f(t0 - eps)) / (2 * eps))
    assert np.isfinite(grad) and grad != 0.0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)
