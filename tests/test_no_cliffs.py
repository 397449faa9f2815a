"""More NFE must not make a multistep solver worse: RMSE(n + 2) <= 1.10 RMSE(n).

A cheap subset of ``benchmarks/cliffs.py`` (which sweeps every multistep solver, three grids,
two problems, two schedules and n = 5..48): the sharp 2-d ring mixture under VP-linear,
n = 5..16, for the solvers whose final-step rule matters (log-SNR, quadratic and EDM grids;
and UniPC-1 with noise prediction, whose RMSE rose 1.3x from NFE 6 to 8 here with the reference corrector weight 1/2), and
UniPC-3 on the 64-d mixture with and without its lowered final steps. The reference rule
(``dpmpp_3m_reference``: lower order on the last two steps only when there are fewer than 15
steps, as in diffusers' DPM-Solver++) and UniPC-3 at full order to the end are checked to
*fail* the same criterion, so the test can fail.
Also: the sweep helper equals :func:`deis_jax.sample`, and every solver of this module makes
exactly the NFE it reports.
"""

import jax
import numpy as np
import pytest

from deis_jax import as_model, get_solver, sample, schedules, testing, timesteps
from deis_jax.solvers import unipc
from sweep_helpers import ratio_bounds, sweep

RATIO = 1.10
NS = tuple(range(5, 17))


@pytest.fixture(scope="module")
def ring():
    with jax.enable_x64(True):
        sched = schedules.vp_linear()
        gmm = testing.ring_mixture(8, std=0.05)
        x_T = sched.prior_sample(jax.random.key(0), (200, 2))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    return sched, as_model(gmm.eps_fn(sched), sched), x_T, np.asarray(gt)


def _errors(solver, ring, grid="log_snr", ns=NS):
    sched, model, x_T, gt = ring
    s = get_solver(solver)
    xs = sweep(s, model, x_T, [timesteps(sched, s.steps_for_nfe(n), grid) for n in ns])
    return np.sqrt(np.mean((np.asarray(xs) - gt[None]) ** 2, axis=(1, 2)))


def _cliffs(err):
    return [(n, err[i], err[i + 2]) for i, n in enumerate(NS[:-2])
            if not err[i + 2] <= RATIO * err[i]]


@pytest.mark.parametrize("name,grid", [("dpmpp_2m", "log_snr"), ("dpmpp_3m", "log_snr"),
                                       ("dpmpp_3m", "quadratic"), ("unipc3", "log_snr"),
                                       ("logrho2", "quadratic"), ("logrho3", "quadratic"),
                                       ("unipc1_eps", "log_snr"), ("dpmpp_2m", "edm"),
                                       ("unipc3", "edm")])
def test_no_cliff(x64, ring, name, grid):
    err = _errors(name, ring, grid)
    assert not _cliffs(err), (name, _cliffs(err), err)


@pytest.fixture(scope="module")
def gmm64():
    """The 64-d 10-mode mixture of the benchmarks under VP-linear, 1,000 starting points (with
    100 the RMSE is decided by whether one boundary sample flips mode; see cliffs.py)."""
    with jax.enable_x64(True):
        sched = schedules.vp_linear()
        gmm = testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1)
        x_T = sched.prior_sample(jax.random.key(0), (1000, 64))
        gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    return sched, as_model(gmm.eps_fn(sched), sched), x_T, np.asarray(gt)


def test_unipc3_final_steps_remove_cliff(x64, gmm64):
    """UniPC-3 on the quadratic grid: with the plain UniP-3 last step RMSE(12) is ~1.4x
    RMSE(10) (measured 5.0e-2 -> 7.0e-2); with the lowered final steps there is no cliff
    over 8..14."""
    sched, model, x_T, gt = gmm64
    ns = (8, 9, 10, 11, 12, 13, 14)
    grids = [timesteps(sched, n, "quadratic") for n in ns]

    def errors(solver):
        xs = np.asarray(sweep(solver, model, x_T, grids))
        return np.sqrt(np.mean((xs - gt[None]) ** 2, axis=(1, 2)))

    auto, plain = errors(unipc(3)), errors(unipc(3, final_steps="none"))
    assert np.all(auto[2:] <= RATIO * auto[:-2]), auto
    assert np.any(plain[2:] > 1.25 * plain[:-2]), plain


def test_one_lowered_step_has_the_edm_bump(x64, ring):
    """Without the second band (the reference's two lowered intervals only), UniPC-3's error on
    the EDM grid rises from NFE 8 to 10 (1.25x with 1,000 samples, cliffs.md): the band is what
    removes it (test_no_cliff[unipc3-edm])."""
    cliffs = _cliffs(_errors(unipc(3, final_steps="reference"), ring, "edm"))
    assert any(n in (7, 8, 9) for n, _, _ in cliffs), cliffs


def test_reference_rule_has_a_cliff(x64, ring):
    """The reference rule switches the last steps to full order at 15 steps: on this
    problem's quadratic grid RMSE(15) is ~2.6x RMSE(13) (measured 2.8e-2 -> 7.3e-2)."""
    cliffs = _cliffs(_errors("dpmpp_3m_reference", ring, "quadratic"))
    assert any(n in (13, 14) for n, _, _ in cliffs), cliffs


@pytest.mark.parametrize("name", ["dpmpp_3m", "dpm3", "unipc2"])
def test_sweep_helper_equals_sample(x64, ring, name):
    sched, model, x_T, _ = ring
    s = get_solver(name)
    grids = [timesteps(sched, s.steps_for_nfe(n), "quadratic") for n in (9, 15)]
    xs = sweep(s, model, x_T, grids)
    for x, ts in zip(xs, grids):
        ref = sample(model, x_T, solver=s, ts=ts)
        np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=0, atol=1e-12)


NFE_CASES = [("dpm3", 9), ("dpm_fast", 10), ("dpmpp_2s", 6), ("dpmpp_3m", 7), ("unipc3", 7),
             ("logrho3", 6), ("edm_heun", 7)]


@pytest.mark.parametrize("name,nfe", NFE_CASES, ids=[c[0] for c in NFE_CASES])
def test_exact_nfe(name, nfe):
    """Count the model calls at run time (a host callback per call)."""
    sched = schedules.vp_linear()
    fn = testing.gaussian_mixture(2, 2, seed=0).eps_fn(sched)
    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return fn(x, t)

    out = sample(as_model(counted, sched), sched.prior_sample(jax.random.key(0), (4, 2)),
                 solver=name, nfe=nfe, full_output=True)
    jax.block_until_ready(out.x)
    assert len(calls) == nfe == out.nfe


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc3", "edm_heun"])
def test_encode_decode_and_grid_gradient(x64, name):
    """Increasing ts encodes data into noise and back; d(sample)/d(ts) is finite (learned
    grids), including through the warm-up rows' masked nodes."""
    sched = schedules.vp_linear()
    gmm = testing.gaussian_mixture(2, 3, std=0.4, seed=1)
    x0 = gmm.sample(jax.random.key(1), 16)[0]
    model = as_model(gmm.eps_fn(sched), sched)
    ts = timesteps(sched, 33, "log_snr")
    z = sample(model, x0, solver=name, ts=ts[::-1])
    back = sample(model, z, solver=name, ts=ts)
    assert float(np.max(np.abs(back - x0))) < 5e-2  # edm_heun (17 steps): 2.2e-2
    grad = jax.grad(lambda ts: sample(model, z, solver=name, ts=ts,
                                      check_finite=False).sum())(ts)
    assert bool(np.all(np.isfinite(np.asarray(grad)))) and float(np.abs(grad).max()) > 0


def test_ratio_bounds_separate_one_sample_from_a_grid_wide_rise():
    """The bootstrap interval of benchmarks/cliffs.py: a 1.2x rise of every sample's error is a
    narrow interval at 1.2 (significant); the same point ratio carried by one sample of 1,000
    (a mode flip) has an interval reaching below 1.1; a diverged run is an infinite ratio."""
    rng = np.random.default_rng(0)
    base = rng.exponential(1e-4, size=1000)
    everywhere = np.stack([base, base, 1.44 * base])
    b = ratio_bounds(everywhere)
    np.testing.assert_allclose([b["ratio_lo"][0], b["ratio_hi"][0]], 1.2, rtol=1e-12)
    one = base.copy()
    one[17] += 0.44 * base.sum()  # same total: point ratio 1.2
    flip = np.stack([base, base, one])
    assert np.sqrt(flip[2].mean() / flip[0].mean()) > RATIO
    b = ratio_bounds(flip)
    assert b["ratio_lo"][0] < RATIO < b["ratio_hi"][0], b
    diverged = np.stack([base, base, np.where(np.arange(1000) == 3, np.nan, base)])
    assert ratio_bounds(diverged)["ratio_lo"] == [np.inf]
