"""Sanity checks of the peer benchmark (``benchmarks/peers.py``): on the same grid, in float64,
the reference implementations (diffusers, k-diffusion) and our solvers agree to round-off
wherever they are the same method, which validates the harness (grid overwrite, VP/VE
conversions, model wrapper); where the methods differ, the difference is measured.

Skipped unless torch is installed (the rest of the suite never needs it); each check also
skips when its peer library is missing.
"""

import pathlib
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
# diffusers' DEIS applies np.log to torch scalars (a NumPy 2 deprecation warning per step).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

from deis_jax import testing  # noqa: E402
from deis_jax.solvers import dpm_fast, dpm_solver_pp, unipc  # noqa: E402

LIBS = peers.available()


def _problem(schedule, gmm=None, batch=64, ground_truth=False):
    """A benchmark-like problem with 64 start points (ground truth only when asked)."""
    with jax.enable_x64(True):
        sched = peers.SCHEDULES[schedule]()
        gmm = gmm or testing.ring_mixture(8, std=0.05)
        x_T = np.asarray(sched.prior_sample(jax.random.key(0), (batch, gmm.dim)), np.float64)
        gt = (np.asarray(testing.ode_ground_truth(gmm, sched, x_T, sched.t_max,
                                                  sched.t_min)[0]) if ground_truth else None)
        eps_fn = gmm.eps_fn(sched)
        return peers.Problem(schedule, gmm, sched, x_T, gt, eps_fn, jax.jit(eps_fn))


@pytest.fixture(scope="module", params=["vp_linear", "ve"])
def prob(request):
    return _problem(request.param)


def _need(peer):
    library = (peers.PEERS[peer] if isinstance(peer, str) else peer).library
    if not LIBS[library]:
        pytest.skip(f"{library} not installed")


def _compare(ours, peer, prob, grid, target):
    """Relative max difference ours vs peer, the peer's counted NFE and its time mismatch."""
    _need(peer)
    plan, n, nfe = peers.our_plan(ours, target)
    ts = peers._grid(prob, n, grid)
    run = peers.run_peer(peer, prob, ts, nfe)
    x = peers.run_ours(plan, prob, ts)
    assert run.nfe == nfe
    return np.abs(run.x - x).max() / np.abs(x).max(), run


def test_diffusers_ddim_equals_ours_on_log_snr_grid(x64, prob):
    """DDIM under VP and under VE (run in VP form through y = x / alpha): same to 1e-12."""
    diff, run = _compare("ddim", "diffusers/ddim", prob, "log_snr", 10)
    assert diff < 1e-12, diff
    assert run.mismatch == 0.0  # the model received our t exactly


# (ours, peer, NFEs): the reference final-step rules act below 15 steps, so the pairs that
# follow one are checked on both sides of 15; the others at 16 steps (warm-up and full order).
SAME_METHOD = [
    ("edm_euler", "diffusers/euler"),
    ("edm_euler", "k-diffusion/euler"),
    ("edm_heun", "diffusers/heun"),
    ("edm_heun", "k-diffusion/heun_edm"),
    ("rho_heun", "k-diffusion/heun"),
    ("rhoab3", "k-diffusion/lms"),  # LMS order 4 = Lagrange degree 3 in sigma = rhoAB-DEIS(3)
    ("dpmpp_2m", "k-diffusion/dpmpp_2m"),
    ("dpmpp_2m", "diffusers/dpmpp_2m_full"),
    (dpm_solver_pp(2, final_steps="reference"), "diffusers/dpmpp_2m"),
    ("logrho1", peers.diffusers_deis(2, lower_order_final=False)),
    ("logrho2", peers.diffusers_deis(3, lower_order_final=False)),
    (unipc(2, final_steps="none"), "diffusers/unipc2_full"),
    (unipc(3, final_steps="none"), "diffusers/unipc3_full"),
    (unipc(3, variant="bh1", final_steps="none"), peers.diffusers_unipc(3, "bh1", False)),
]


@pytest.mark.parametrize("ours, peer", SAME_METHOD,
                         ids=[f"{getattr(o, 'name', o)}-{getattr(p, 'description', p)[:30]}"
                              for o, p in SAME_METHOD])
def test_same_method_agrees_to_round_off(x64, prob, ours, peer):
    """On an EDM grid (uneven steps in lambda) and a log-SNR grid; the pair following the
    reference final-step rule also below 15 steps."""
    targets = (6, 16) if peer == "diffusers/dpmpp_2m" else (16,)
    for target in targets:
        for grid in ("edm", "log_snr"):
            diff, _ = _compare(ours, peer, prob, grid, target)
            assert diff < 1e-10, (grid, target, diff)


def test_k_diffusion_dpm_fast_grid_and_steps_equal_ours(x64, prob):
    """sample_dpm_fast builds its log-SNR grid from sigma_min, sigma_max and the NFE: its
    stage times agree with ours on our log-SNR grid to round-off, and so does the result
    (ours without the long-step limit h_max, which k-diffusion does not have)."""
    for target in (6, 7, 8):  # the three tails: orders (2, 1), (1,), (2,)
        diff, run = _compare(dpm_fast(h_max=None), "k-diffusion/dpm_fast", prob, "log_snr",
                             target)
        assert run.mismatch < 1e-13, (target, run.mismatch)
        assert diff < 1e-10, (target, diff)


def test_reference_3m_is_second_order(x64):
    """diffusers' and k-diffusion's DPM-Solver++(3M) are the same method (diffusers with
    solver_type="heun", full order to the end), and on a smooth problem they converge at
    order 2, ours (exact integral of the quadratic interpolant of x0 in lambda) at order 3:
    the reference third-order term weighs D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0''/2 with
    -phi_3, where the Taylor term -h^2 phi_3 x0'' needs twice that."""
    _need("k-diffusion/dpmpp_3m_sde")
    _need("diffusers/dpmpp_3m_full")
    prob = _problem("vp_linear", testing.gaussian_mixture(2, 4, std=0.3, seed=0),
                    ground_truth=True)
    same = peers.diffusers_dpmpp(3, lower_order_final=False, solver_type="heun")
    steps, errors = (40, 80, 160), {"ours": [], "peer": []}
    for n in steps:
        ts = peers._grid(prob, n, "log_snr")
        kd = peers.run_peer("k-diffusion/dpmpp_3m_sde", prob, ts, n).x
        assert np.abs(kd - peers.run_peer(same, prob, ts, n).x).max() < 1e-10
        errors["peer"].append(peers.score(prob, kd)["rmse"])
        ours = peers.run_ours(dpm_solver_pp(3, final_steps="none"), prob, ts)
        errors["ours"].append(peers.score(prob, ours)["rmse"])
    slope = {k: -np.polyfit(np.log(steps), np.log(v), 1)[0] for k, v in errors.items()}
    assert 1.8 < slope["peer"] < 2.3, slope
    assert 2.8 < slope["ours"] < 3.3, slope


def test_every_pair_makes_the_same_calls_on_both_sides():
    """Both sides of every pair take the same steps and NFE for every requested NFE."""
    for ours, peer in peers.PAIRS:
        for grid, n, nfe, plan in peers.cells(ours, peer):
            assert plan.nfe_for_steps(n) == nfe
            if peers.PEERS[peer].nfe_for_steps is not None:
                assert peers.PEERS[peer].nfe_for_steps(n) == nfe
    # DPM-Solver-fast reaches every NFE, two of them (6 and 8) in the same number of steps.
    assert {c[2] for c in peers.cells("dpm_fast", "k-diffusion/dpm_fast")} == set(peers.NFES)


def test_pair_cells_and_summary():
    """Ratios are RMSE(ours) / RMSE(peer) per cell; the summary finds the worst cell."""
    base = {"problem": "ring2d", "schedule": "ve", "grid": "edm", "flips": 0}
    ours = [{"ours": "ddim", **base, "steps": n, "nfe": n, "rmse": r, "rmse_no_flip": r}
            for n, r in ((5, 2.0), (10, 1.0))]
    peer = [{"peer": "diffusers/ddim", **base, "steps": n, "nfe": n, "rmse": r,
             "rmse_no_flip": r} for n, r in ((5, 1.0), (10, 1.0))]
    cells = peers.pair_cells(ours, peer, "ddim", "diffusers/ddim")
    assert [c["ratio"] for c in cells] == [2.0, 1.0]
    (s,) = peers.summary(ours, peer, [("ddim", "diffusers/ddim")])
    assert s["worst"]["nfe"] == 5 and s["above"] == 1 and s["cells"] == 2
