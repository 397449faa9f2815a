"""Model parameterisations: every prediction type yields the same eps / x0 on an exact model
(through the :class:`deis_jax.Model` methods and :func:`deis_jax.parameterization.convert`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import parameterization as P
from deis_jax import as_model, sample, schedules, testing


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
    velocity = gmm.velocity(x, t, s)
    expected = {"eps": eps, "x0": x0, "velocity": velocity, "score": -eps / sg[:, None],
                "v": a[:, None] * eps - sg[:, None] * x0}

    models = {
        "eps": lambda x, t: gmm.eps(x, t, s),
        "x0": lambda x, t: P.x0_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t)),
        "score": lambda x, t: gmm.score(x, t, s),
        "v": lambda x, t: P.v_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t)),
        "velocity": lambda x, t: gmm.velocity(x, t, s),
        # Rectified-flow network output u = eps - x0 (any schedule).
        "flow": lambda x, t: gmm.eps(x, t, s) - P.x0_from_eps(x, gmm.eps(x, t, s), s.alpha(t),
                                                              s.sigma(t)),
        # EDM denoiser D(y; rho) with y = x / alpha: the x0 prediction at rho.
        "edm": lambda y, rho: P.x0_from_eps(
            y * s.alpha(s.t_from_rho(rho))[:, None],
            gmm.eps(y * s.alpha(s.t_from_rho(rho))[:, None], s.t_from_rho(rho), s),
            s.alpha(s.t_from_rho(rho)), s.sigma(s.t_from_rho(rho))),
    }
    for pred, fn in models.items():
        model = as_model(fn, s, prediction=pred)
        for target, want in expected.items():
            np.testing.assert_allclose(getattr(model, target)(x, t), want, rtol=1e-8,
                                       atol=1e-10, err_msg=f"{pred} -> {target}")
        if pred != "edm":  # the one conversion the methods use, called directly
            for target, want in expected.items():
                np.testing.assert_allclose(P.convert(fn(x, t), pred, target, x, t, s), want,
                                           rtol=1e-8, atol=1e-10,
                                           err_msg=f"convert {pred} -> {target}")


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


def test_index_and_discrete_timesteps_map_t_to_the_table_index():
    """``as_model(..., timestep="index")`` hands a DDPM network the step ``N t - 1`` (float),
    ``timestep="discrete"`` the integer index, on a ``vp_discrete`` table of N = 1000."""
    sched = schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 1000))
    for timestep, dtype in (("index", jnp.float32), ("discrete", jnp.int32)):
        seen = []
        model = as_model(lambda x, n: seen.append(n) or x, sched, timestep=timestep)
        model.output(jnp.zeros((2, 1)), jnp.array([0.001, 1.0]))
        assert seen[0].dtype == dtype, (timestep, seen[0].dtype)
        np.testing.assert_allclose(seen[0], [0.0, 999.0], atol=1e-4)
    with pytest.raises(ValueError, match="timestep='index'.*vp_discrete"):
        as_model(lambda x, n: x, schedules.vp_linear(), timestep="index")


def test_sampling_with_v_prediction_matches_eps(x64):
    s = schedules.vp_cosine()
    gmm = testing.gaussian_mixture(2, 3, std=0.3, seed=0)
    x_T = s.prior_sample(jax.random.key(0), (8, 2))
    v_model = lambda x, t: P.v_from_eps(x, gmm.eps(x, t, s), s.alpha(t), s.sigma(t))  # noqa: E731
    a = sample(as_model(gmm.eps_fn(s), s), x_T, solver="tab3", nfe=10)
    b = sample(as_model(v_model, s, prediction="v"), x_T, solver="tab3", nfe=10)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="prediction"):
        as_model(lambda x, t: x, schedules.vp_linear(), prediction="noise")
