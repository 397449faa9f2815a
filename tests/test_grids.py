"""Time grids: formulas, end points, traced parameters, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import check_grid, schedules, timesteps


@pytest.mark.parametrize("kind", ["uniform", "quadratic", "power", "log_snr", "edm"])
@pytest.mark.parametrize("make", [schedules.vp_linear, schedules.ve, schedules.edm])
def test_grid_is_decreasing_with_exact_end_points(kind, make):
    s = make()
    ts = timesteps(s, 7, kind)
    assert ts.shape == (8,)
    assert float(ts[0]) == np.float32(s.t_max) and float(ts[-1]) == np.float32(s.t_min)
    assert np.all(np.diff(np.asarray(ts)) < 0)


def test_grid_formulas(x64):
    s = schedules.vp_linear()
    n, lo, hi = 10, s.t_min, s.t_max
    u = np.linspace(0, 1, n + 1)
    np.testing.assert_allclose(timesteps(s, n, "uniform"), hi + u * (lo - hi), rtol=1e-14)
    quad = (np.sqrt(hi) + u * (np.sqrt(lo) - np.sqrt(hi))) ** 2
    np.testing.assert_allclose(timesteps(s, n, "quadratic"), quad, rtol=1e-13)
    lam = np.asarray(s.log_snr(timesteps(s, n, "log_snr")))
    np.testing.assert_allclose(np.diff(lam), np.full(n, (lam[-1] - lam[0]) / n), rtol=1e-9)
    r = np.asarray(s.rho(timesteps(s, n, "edm", rho=7.0)))
    want = (r[0] ** (1 / 7) + u * (r[-1] ** (1 / 7) - r[0] ** (1 / 7))) ** 7
    np.testing.assert_allclose(r, want, rtol=1e-9)


def test_edm_exponent_can_be_vmapped():
    s = schedules.edm()
    grids = jax.jit(jax.vmap(lambda p: timesteps(s, 5, "edm", rho=p)))(jnp.array([3.0, 7.0]))
    assert grids.shape == (2, 6)
    np.testing.assert_allclose(grids[1], timesteps(s, 5, "edm", rho=7.0), rtol=1e-5)
    assert not np.allclose(grids[0], grids[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.5}, "n_steps"),
        ({"n_steps": 5, "kind": "cosine"}, "kind"),
        ({"n_steps": 5, "t_min": 0.5, "t_max": 0.1}, "t_min"),
        ({"n_steps": 5, "kind": "edm", "rho": -1.0}, "rho"),
        # Issue 10, category 4: these used to return NaN or non-monotone grids.
        ({"n_steps": 5, "t_max": float("inf")}, "t_max must be a finite time"),
        ({"n_steps": 5, "kind": "edm", "rho": float("inf")}, r"rho must be in \(0.0, inf\)"),
        ({"n_steps": 5, "kind": "power", "power": float("inf")}, "power.*got power=inf"),
        ({"n_steps": 10, "kind": "edm", "rho": 1e-6}, "not strictly decreasing in float32"),
        ({"n_steps": 5, "t_max": 5.0}, "not usable in float32: at t_max=5.0"),
        ({"n_steps": 5, "t_max": "1"}, "t_max must be a real number"),
        ({"n_steps": 5, "kind": "log_snr", "t_min": 0.0}, "needs t_min > 0.*t_min=0.0"),
    ],
)
def test_bad_grid_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        timesteps(schedules.vp_linear(), **kwargs)


@pytest.mark.parametrize(
    "ts, match",
    [
        ([1.0, 0.5, 0.7, 0.01], "strictly monotone"),
        ([1.0, 0.5, 0.5, 0.01], "strictly monotone"),
        ([1.5, 0.5, 0.01], r"\[t_min, t_max\]"),
        ([1.0, 0.5, 1e-5], r"\[t_min, t_max\]"),
        ([1.0], "shape"),
        ([[1.0, 0.5]], "shape"),
        ([1.0, float("nan"), 0.01], "non-finite"),
    ],
)
def test_check_grid_rejects_bad_user_grids(ts, match):
    with pytest.raises(ValueError, match=match):
        check_grid(schedules.vp_linear(), jnp.asarray(ts))


def test_check_grid_accepts_increasing_grids_for_encoding():
    ts = check_grid(schedules.vp_linear(), jnp.array([0.001, 0.5, 1.0]))
    assert ts.shape == (3,)
