r"""Analytic test problems: Gaussian mixtures with exact scores under any schedule.

If ``x_0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` then under ``q(x_t|x_0) = N(alpha x_0, sigma^2)``

.. math::
   p_t(x) = \sum_k w_k\, \mathcal N\big(x;\ \alpha\mu_k,\ \mathrm{diag}(\alpha^2 s_k^2 + \sigma^2)\big),

so the exact noise prediction is ``eps(x, t) = -sigma grad log p_t(x)``, computed with a
log-sum-exp over components, and the exact velocity (flow matching's ``dx/dt``) is
``alpha' E[x_0 | x] + sigma' E[eps | x]`` with the closed-form posterior means. The probability-flow ODE of this model has no closed form;
:func:`ode_ground_truth` integrates it in float64 with diffrax at tight tolerance.

Shared by the tests and the benchmarks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix

from deis_jax.parameterization import velocity_from
from deis_jax.schedules import Schedule

__all__ = [
    "GaussianMixture",
    "gaussian_mixture",
    "ring_mixture",
    "ode_ground_truth",
    "mode_flips",
    "rmse",
    "energy_distance",
]


class GaussianMixture(NamedTuple):
    """Diagonal Gaussian mixture: ``weights (K,)``, ``means (K, d)``, ``stds (K, d)``."""

    weights: Any
    means: Any
    stds: Any

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def _component_logpdf(self, x, alpha, sigma):
        # x: (B, d); alpha, sigma: (B,). Returns (B, K) log N(x; alpha mu_k, var_k) and var.
        a = alpha[:, None, None]
        var = a**2 * self.stds[None] ** 2 + sigma[:, None, None] ** 2  # (B, K, d)
        diff = x[:, None, :] - a * self.means[None]
        logpdf = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return logpdf, diff, var

    def marginal_logp(self, x, t, schedule: Schedule):
        """``log p_t(x)`` for ``x: (B, d)``, ``t: (B,)`` or scalar."""
        t = jnp.broadcast_to(t, x.shape[:1])
        lp, _, _ = self._component_logpdf(x, schedule.alpha(t), schedule.sigma(t))
        return jax.nn.logsumexp(lp + jnp.log(self.weights)[None], axis=-1)

    def score(self, x, t, schedule: Schedule):
        """Exact ``grad_x log p_t(x)``."""
        t = jnp.broadcast_to(t, x.shape[:1])
        lp, diff, var = self._component_logpdf(x, schedule.alpha(t), schedule.sigma(t))
        resp = jax.nn.softmax(lp + jnp.log(self.weights)[None], axis=-1)  # (B, K)
        return -jnp.sum(resp[..., None] * diff / var, axis=1)

    def eps(self, x, t, schedule: Schedule):
        """Exact noise prediction ``-sigma_t grad log p_t(x)``."""
        t = jnp.broadcast_to(t, x.shape[:1])
        return -schedule.sigma(t)[:, None] * self.score(x, t, schedule)

    def eps_fn(self, schedule: Schedule):
        """``eps_fn(x, t)`` closure, the shape of a trained eps-model."""
        return lambda x, t: self.eps(x, t, schedule)

    def velocity(self, x, t, schedule: Schedule):
        r"""Exact velocity ``E[alpha' x_0 + sigma' eps | x_t = x]`` (prediction
        ``"velocity"``), from the per-component posterior means
        ``E[x_0 | x, k] = mu_k + alpha s_k^2 (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2)``
        and ``E[eps | x, k] = sigma (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2)``."""
        t = jnp.broadcast_to(t, x.shape[:1])
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        lp, diff, var = self._component_logpdf(x, alpha, sigma)
        resp = jax.nn.softmax(lp + jnp.log(self.weights)[None], axis=-1)[..., None]
        x0 = jnp.sum(resp * (self.means[None] + alpha[:, None, None] * self.stds[None] ** 2
                             * diff / var), axis=1)
        eps = sigma[:, None] * jnp.sum(resp * diff / var, axis=1)
        return velocity_from(x0, eps, schedule.d_alpha(t), schedule.d_sigma(t))

    def velocity_fn(self, schedule: Schedule):
        """``velocity_fn(x, t)`` closure, the shape of a trained flow-matching model."""
        return lambda x, t: self.velocity(x, t, schedule)

    def component_logits(self, x, t, schedule: Schedule):
        """``log w_k + log N_k,t(x)``, shape ``(B, K)``: the logits of the exact
        noise-conditional posterior ``p_t(component k | x)`` (a classifier whose classes are
        the components)."""
        t = jnp.broadcast_to(t, x.shape[:1])
        lp, _, _ = self._component_logpdf(x, schedule.alpha(t), schedule.sigma(t))
        return lp + jnp.log(self.weights)[None]

    def conditional_eps(self, x, t, label, schedule: Schedule):
        """Exact noise prediction of component ``label`` alone (``(B,)`` integers; the value
        ``K`` selects the whole mixture): the class-conditional model whose classes are the
        components, with ``K`` as the null label of classifier-free guidance."""
        t = jnp.broadcast_to(t, x.shape[:1])
        a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
        var = a**2 * self.stds[None] ** 2 + s**2  # (B, K, d)
        per = s * (x[:, None, :] - a * self.means[None]) / var  # eps of each component
        k = self.weights.shape[0]
        pick = jnp.take_along_axis(per, jnp.minimum(label, k - 1)[:, None, None], axis=1)[:, 0]
        return jnp.where((label == k)[:, None], self.eps(x, t, schedule), pick)

    def log_prob(self, x):
        """Log-density of the data distribution at ``t = 0``."""
        return jax.nn.logsumexp(self._log_joint(x), axis=-1)

    def _log_joint(self, x):
        ones = jnp.ones(x.shape[:1], x.dtype)
        lp, _, _ = self._component_logpdf(x, ones, 0 * ones)
        return lp + jnp.log(self.weights)[None]

    def component(self, x):
        """Most probable mixture component of each data point, shape ``(B,)``."""
        return jnp.argmax(self._log_joint(x), axis=-1)

    def sample(self, key, n: int):
        """Exact samples ``(x (n, d), labels (n,))``."""
        k1, k2 = jax.random.split(key)
        labels = jax.random.categorical(k1, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(k2, (n, self.dim), self.means.dtype)
        return self.means[labels] + self.stds[labels] * z, labels

    def sample_marginal(self, key, n: int, t, schedule: Schedule):
        """Exact draws of ``p_t``: ``alpha_t x_0 + sigma_t z`` with ``x_0`` from :meth:`sample`
        (e.g. at ``t_min``, the distribution a likelihood or an encoding starts from)."""
        k1, k2 = jax.random.split(key)
        x0, _ = self.sample(k1, n)
        z = jax.random.normal(k2, x0.shape, x0.dtype)
        return schedule.alpha(t) * x0 + schedule.sigma(t) * z


def gaussian_mixture(dim: int, n_modes: int, *, std=0.5, scale=1.0, seed: int = 0,
                     dtype=None) -> GaussianMixture:
    """A mixture with means drawn from ``N(0, scale^2 I)``, unequal weights and isotropic
    per-component ``std`` (a float or per-mode array). Deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    means = scale * rng.standard_normal((n_modes, dim))
    weights = rng.uniform(0.5, 1.5, n_modes)
    weights /= weights.sum()
    stds = np.broadcast_to(np.asarray(std, np.float64).reshape(-1, 1), (n_modes, dim))
    dtype = dtype or jnp.result_type(float)
    return GaussianMixture(jnp.asarray(weights, dtype), jnp.asarray(means, dtype),
                           jnp.asarray(stds, dtype))


def ring_mixture(n_modes: int = 8, *, radius=1.0, std=0.05, dtype=None) -> GaussianMixture:
    """``n_modes`` equal-weight 2-d Gaussians on a circle (the "8 Gaussians" problem)."""
    if isinstance(n_modes, bool) or not isinstance(n_modes, (int, np.integer)) or n_modes < 1:
        raise ValueError(f"n_modes must be an int >= 1, got n_modes={n_modes!r}")
    angles = 2 * np.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    dtype = dtype or jnp.result_type(float)
    return GaussianMixture(jnp.full((n_modes,), 1.0 / n_modes, dtype), jnp.asarray(means, dtype),
                           jnp.full((n_modes, 2), std, dtype))


def ode_ground_truth(gmm: GaussianMixture, schedule: Schedule, x_T, t_start, t_end, *,
                     rtol=1e-10, atol=1e-10, max_steps=200_000):
    r"""Float64 solution of the probability-flow ODE from ``x_T`` at ``t_start`` to ``t_end``.

    Solved per sample (own adaptive steps; diffrax Dopri8, PID controller, max-norm error)
    in the variables ``y = x / alpha`` and ``lambda = log(alpha/sigma)``, where the ODE reads
    ``dy/d lambda = -e^{-lambda} eps(alpha y, t(lambda))`` and is smooth up to ``t_min``.

    Returns:
      ``(x_end, n_steps)``: the solution ``(B, d)`` and the accepted steps per sample.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("ode_ground_truth needs float64: enable jax_enable_x64 first")
    x_T = jnp.asarray(x_T, jnp.float64)
    lam0 = schedule.log_snr(jnp.float64(t_start))
    lam1 = schedule.log_snr(jnp.float64(t_end))

    def vector_field(lam, y, args):
        del args
        t = schedule.t_from_log_snr(lam)
        x = schedule.alpha(t) * y
        return -jnp.exp(-lam) * gmm.eps(x[None], t, schedule)[0]

    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=optimistix.max_norm)

    def solve_one(x0):
        y0 = x0 / schedule.alpha(jnp.float64(t_start))
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), diffrax.Dopri8(), lam0, lam1, (lam1 - lam0) / 1000.0, y0,
            stepsize_controller=controller, max_steps=max_steps,
        )
        return sol.ys[-1] * schedule.alpha(jnp.float64(t_end)), sol.stats["num_accepted_steps"]

    return jax.jit(jax.vmap(solve_one))(x_T)


def mode_flips(gmm: GaussianMixture, x, x_ref):
    """Boolean ``(B,)``: sample ended nearest a different component than its reference."""
    return gmm.component(x) != gmm.component(x_ref)


def rmse(x, x_ref, axis=None):
    """Root-mean-square error over all entries (or per sample with ``axis=-1``)."""
    return jnp.sqrt(jnp.mean((jnp.asarray(x) - jnp.asarray(x_ref)) ** 2, axis=axis))


def energy_distance(x, y, *, unbiased: bool = True):
    r"""Squared energy distance between the samples ``x (n, d)`` and ``y (m, d)``.

    ``D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo 2013), with unbiased
    (off-diagonal) averages for the within-sample terms: zero in expectation when both samples
    come from the same distribution, positive otherwise. ``unbiased=False`` gives the
    V-statistic (averages over all pairs, never negative). Costs ``O((n + m)^2 d)``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"energy_distance needs at least 2 samples on each side, got x of "
                         f"shape {x.shape} and y of shape {y.shape}")
    x, y = jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(y, (y.shape[0], -1))

    def mean_dist(a, b, same):
        # Rows in blocks of 128 (memory O(128 m)); direct differences avoid the cancellation
        # of |a|^2 + |b|^2 - 2 a.b.
        row_sums = jax.lax.map(lambda r: jnp.sum(jnp.linalg.norm(r[None] - b, axis=-1)), a,
                               batch_size=128)
        n = a.shape[0]
        return jnp.sum(row_sums) / (n * (n - 1) if same and unbiased else n * b.shape[0])

    return 2.0 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True)
