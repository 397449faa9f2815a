"""Model parameterisations: every prediction type yields the same eps / x0 on an exact model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import parameterization as P
from deis_jax import sample, schedules, testing


@pytest.mark.parametrize("make", [schedules.vp_linear, schedules.ve, schedules.edm,
                                  schedules.sub_vp, lambda: schedules.flow(3.0)])
def test_all_predictions_agree(x64, make):
    s = make()
    gmm = testing.gaussian_mixture(3, 4, std=0.4, seed=2)
    key = jax.random.key(1)
    x = 2.0 * jax.random.normal(key, (16, 3))
    t = jnp.asarray(np.geomspace(s.t_min * 10, s.t_max * 0.9, 16))
    eps = gmm.eps(x, t, s)
    a, sg = s.alpha(t), s.sigma(t)
    x0 = P.x0_from_eps(x, eps, a, sg)

    models = {
        "eps": lambda x, t: gmm.eps(x, t, s),
        "x0": lambda x, t: P.x0_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t)),
        "score": lambda x, t: gmm.score(x, t, s),
        "v": lambda x, t: P.v_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t)),
        "velocity": lambda x, t: gmm.velocity(x, t, s),
        # EDM denoiser D(y; rho) with y = x / alpha: the x0 prediction at rho.
        "edm": lambda y, rho: P.x0_from_eps(
            y * s.alpha(s.t_from_rho(rho))[:, None],
            gmm.eps(y * s.alpha(s.t_from_rho(rho))[:, None], s.t_from_rho(rho), s),
            s.alpha(s.t_from_rho(rho)), s.sigma(s.t_from_rho(rho))),
    }
    for pred, fn in models.items():
        np.testing.assert_allclose(P.as_eps_fn(fn, s, pred)(x, t), eps, rtol=1e-8, atol=1e-10,
                                   err_msg=pred)
        np.testing.assert_allclose(P.as_x0_fn(fn, s, pred)(x, t), x0, rtol=1e-8, atol=1e-10,
                                   err_msg=pred)
        np.testing.assert_allclose(P.as_velocity_fn(fn, s, pred)(x, t), gmm.velocity(x, t, s),
                                   rtol=1e-8, atol=1e-10, err_msg=pred)


def test_edm_preconditioning_is_exact_for_the_ideal_network(x64):
    """If F is the ideal residual network, D(y; rho) = x0 exactly (Karras et al. eq. 7-8)."""
    s = schedules.edm()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    sd = 0.5
    rho = jnp.asarray(np.geomspace(0.01, 50, 8))
    y = 3.0 * jax.random.normal(jax.random.key(0), (8, 2))
    x0 = P.x0_from_eps(y, gmm.eps(y, rho, s), 1.0, rho)

    def ideal_net(x_in, c_noise):
        r = jnp.exp(4 * c_noise)[:, None]
        c = r**2 + sd**2
        yy = x_in * jnp.sqrt(c)
        target = P.x0_from_eps(yy, gmm.eps(yy, r[:, 0], s), 1.0, r[:, 0])
        return (target - sd**2 / c * yy) / (r * sd / jnp.sqrt(c))

    d = P.edm_precondition(ideal_net, sd)
    np.testing.assert_allclose(d(y, rho), x0, rtol=1e-9, atol=1e-12)


def test_discrete_time_model_maps_t_to_table_index():
    seen = []
    fn = P.discrete_time_model(lambda x, n: seen.append(n) or x, 1000)
    fn(jnp.zeros((2, 1)), jnp.array([0.001, 1.0]))
    np.testing.assert_allclose(seen[0], [0.0, 999.0], atol=1e-4)


def test_sampling_with_v_prediction_matches_eps(x64):
    s = schedules.vp_cosine()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = s.prior_sample(jax.random.key(0), (8, 2))
    v_model = lambda x, t: P.v_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t))  # noqa: E731
    a = sample(gmm.eps_fn(s), s, x_T, solver="tab3", nfe=10)
    b = sample(v_model, s, x_T, solver="tab3", nfe=10, prediction="v")
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="prediction"):
        P.as_eps_fn(lambda x, t: x, schedules.vp_linear(), "noise")
