"""Schedules: closed forms, inverses, SDE coefficients, discrete tables, tracing, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from deis_jax import schedules
from schedule_cases import ALL_SCHEDULES as ALL


def _times(s, n=101):
    return jnp.asarray(np.geomspace(s.t_min, s.t_max, n))


@pytest.mark.parametrize("name", sorted(ALL))
def test_log_snr_inverse_round_trips(x64, name):
    s = ALL[name]()
    t = _times(s)
    np.testing.assert_allclose(s.t_from_log_snr(s.log_snr(t)), t, rtol=1e-10)
    np.testing.assert_allclose(s.t_from_rho(s.rho(t)), t, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(ALL))
def test_log_snr_is_strictly_decreasing(x64, name):
    s = ALL[name]()
    assert np.all(np.diff(np.asarray(s.log_snr(_times(s, 2001)))) < 0)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete"])
def test_variance_preserving(x64, name):
    s = ALL[name]()
    t = _times(s)
    np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-12)


def test_vp_linear_closed_forms(x64):
    s = schedules.vp_linear(0.1, 20.0)
    t = _times(s)
    beta = 0.1 + t * 19.9
    np.testing.assert_allclose(s.alpha(t), np.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1), rtol=1e-13)
    np.testing.assert_allclose(s.f(t), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(s.g2(t), beta, rtol=1e-10)
    # sigma is accurate near t = 0 (no cancellation in 1 - alpha^2).
    t_small = 1e-9
    np.testing.assert_allclose(float(s.sigma(t_small)), np.sqrt(0.1 * t_small), rtol=1e-6)


def test_sub_vp_closed_forms(x64):
    s = schedules.sub_vp(0.1, 20.0)
    t = _times(s)
    alpha = np.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    beta = 0.1 + t * 19.9
    np.testing.assert_allclose(s.sigma(t), 1 - alpha**2, rtol=1e-12)
    np.testing.assert_allclose(s.g2(t), beta * (1 - alpha**4), rtol=1e-9)


def test_ve_and_edm_closed_forms(x64):
    s = schedules.ve(0.01, 50.0)
    t = _times(s)
    sigma = 0.01 * 5000.0**t
    np.testing.assert_allclose(s.sigma(t), sigma, rtol=1e-12)
    np.testing.assert_allclose(s.alpha(t), 1.0)
    np.testing.assert_allclose(s.g2(t), 2 * sigma**2 * np.log(5000.0), rtol=1e-10)
    e = schedules.edm()
    t = _times(e)
    np.testing.assert_allclose(e.rho(t), t, rtol=1e-13)
    np.testing.assert_allclose(e.g2(t), 2 * t, rtol=1e-12)
    assert float(e.prior_std()) == 80.0 and float(s.prior_std()) == pytest.approx(50.0)


def test_vp_cosine_matches_improved_ddpm(x64):
    s = schedules.vp_cosine(0.008)
    t = _times(s)
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(s.alpha(t) ** 2, f / np.cos(0.008 / 1.008 * np.pi / 2) ** 2,
                               rtol=1e-12)


def test_vp_discrete_interpolates_the_table(x64):
    betas = np.linspace(1e-4, 0.02, 1000)
    acp = np.cumprod(1 - betas)
    s = schedules.vp_discrete(betas=betas)
    s2 = schedules.vp_discrete(alphas_cumprod=acp)
    tn = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(s.alpha(tn) ** 2, acp, rtol=1e-10)
    np.testing.assert_allclose(s2.alpha(tn) ** 2, acp, rtol=1e-10)
    # Piecewise linear in log alpha between table entries.
    mid = 0.5 * (tn[:-1] + tn[1:])
    np.testing.assert_allclose(s.log_alpha(mid), 0.25 * (np.log(acp[:-1]) + np.log(acp[1:])),
                               rtol=1e-10)
    assert s.t_min == pytest.approx(1e-3) and s.t_max == 1.0


def test_discrete_table_validation():
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedules.vp_discrete(alphas_cumprod=[0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match=r"betas\[1\]=1.5 is outside \(0, 1\)"):
        schedules.vp_discrete(betas=[0.1, 1.5])
    with pytest.raises(ValueError, match=r"betas\[1\]=nan"):
        schedules.vp_discrete(betas=[0.1, float("nan"), 0.2])
    with pytest.raises(ValueError, match="exactly one"):
        schedules.vp_discrete()
    with pytest.raises(ValueError, match=r"alphas_cumprod\[2\]=0.0 .*zero terminal SNR"):
        schedules.vp_discrete(alphas_cumprod=[0.9, 0.5, 0.0])
    with pytest.raises(TypeError, match="betas must be a 1-d array of real numbers"):
        schedules.vp_discrete(betas="0.1")
    # Distinct in float64, equal once stored in float32: refused, naming the entries.
    with pytest.raises(ValueError, match="entries 0 and 1 .* equal in float32"):
        schedules.vp_discrete(betas=np.r_[0.5, np.full(9, 1e-9)])
    # The terminal rho = sigma/alpha (about 1e40) overflows float32.
    with pytest.raises(ValueError, match="vp_discrete.*not usable in float32: at t_max=1.0"):
        schedules.vp_discrete(alphas_cumprod=np.geomspace(0.99, 1e-80, 50))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: schedules.vp_linear(beta_min=-1.0), "beta_min"),
        (lambda: schedules.vp_linear(t_min=1.0, t_max=0.5), "t_min"),
        (lambda: schedules.vp_linear(t_min=0.0), "t_min"),
        (lambda: schedules.ve(sigma_min=10.0, sigma_max=1.0), "sigma_min"),
        (lambda: schedules.vp_cosine(t_max=1.0), "t_max"),
        (lambda: schedules.edm(sigma_min=80.0, sigma_max=1.0), "sigma_min"),
        # Issue 10, category 4: infinite and unrepresentable parameters.
        (lambda: schedules.vp_linear(beta_max=float("inf")), r"beta_max must be in \(0.0, "
                                                             r"inf\), got beta_max=inf"),
        (lambda: schedules.ve(sigma_max=float("inf")), "sigma_max.*inf"),
        (lambda: schedules.vp_linear(t_max=float("inf")), "t_max must be a finite time"),
        (lambda: schedules.vp_linear(beta_max=1e300), "beta_max=1e[+]300 is stored as float32"),
        (lambda: schedules.ve(sigma_min=1e-300), "sigma_min=1e-300 is stored as float32"),
        (lambda: schedules.vp_cosine(s=1e10), r"vp_cosine\(s=10000000000.0.*not usable"),
        (lambda: schedules.vp_linear(beta_max=1e3), r"beta_max=1000.0.*log alpha = -250"),
        (lambda: schedules.edm(sigma_max=1e30), "sigma_max=1e[+]30.*not usable in float32"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: schedules.vp_linear(beta_max="20"), "beta_max must be a real number"),
    (lambda: schedules.ve(sigma_max=None), "sigma_max must be a real number"),
    (lambda: schedules.vp_linear(beta_max=[10.0, 20.0]), "beta_max must be a real number"),
    (lambda: schedules.vp_linear().prior_sample(0, (2, 2)), "key must be a PRNG key"),
])
def test_bad_parameter_types_raise(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_constructors_check_inside_jit_and_pass_tracers():
    """Constant parameters are checked even inside jit; traced ones are left to the caller."""
    with pytest.raises(ValueError, match="beta_max"):
        jax.jit(lambda x: schedules.vp_linear(beta_max=float("inf")).alpha(x))(0.5)
    alpha = jax.jit(lambda b: schedules.vp_linear(beta_max=b).alpha(0.5))(jnp.inf)
    assert not np.isfinite(float(alpha)) or float(alpha) == 0.0


def test_parameters_can_be_traced_and_vmapped():
    def alpha_at_half(beta_max):
        return schedules.vp_linear(0.1, beta_max).alpha(0.5)

    betas = jnp.array([10.0, 20.0, 30.0])
    got = jax.jit(jax.vmap(alpha_at_half))(betas)
    want = np.exp(-0.25 * 0.25 * (betas - 0.1) - 0.025)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_schedule_is_a_pytree_with_static_range():
    s = schedules.vp_linear()
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 2
    s2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert s2.t_min == s.t_min and s2.name == "vp_linear"


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm"])
def test_prior_logp_matches_scipy(x64, name):
    s = ALL[name]()
    x = s.prior_sample(jax.random.key(0), (5, 3))
    want = stats.norm(scale=float(s.prior_std())).logpdf(np.asarray(x)).sum(-1)
    np.testing.assert_allclose(s.prior_logp(x), want, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(lam=st.floats(-8.0, 8.0), beta_max=st.floats(5.0, 40.0))
def test_vp_linear_inverse_property(lam, beta_max):
    with jax.enable_x64(True):
        s = schedules.vp_linear(0.1, beta_max, t_min=1e-6, t_max=3.0)  # lambda(3) < -8
        t = s.t_from_log_snr(lam)
        assert float(s.log_snr(t)) == pytest.approx(lam, abs=1e-9)


@pytest.mark.parametrize("name", sorted(schedules.FAMILIES))
def test_from_name_builds_each_family_default(name):
    assert schedules.from_name(name).family is schedules.FAMILIES[name]


def test_from_name_vp_discrete_is_the_ddpm_table():
    sched = schedules.from_name("vp_discrete")
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(sched.alpha(1.0) ** 2, alpha_bar[-1], rtol=1e-5)
    assert sched.t_min == 1e-3


def test_from_name_names_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown schedule='vp_quadratic'; valid choices: "
                                         r"\['edm', 'flow', 'sub_vp', 've', 'vp_cosine'"):
        schedules.from_name("vp_quadratic")
