r"""Peer benchmark: our solvers against the PyTorch reference implementations, same problems,
same time grids, exact float64 model.

For each pair "ours vs peer" of the same method (table :data:`PAIRS`) both sides integrate
the probability-flow ODE of an exact Gaussian mixture (``deis_jax.testing``) from the same
``x_T`` on the same grid ``timesteps(schedule, N, kind)``, with the same number of model
calls, and are scored against a float64 adaptive solve from that ``x_T``
(``testing.ode_ground_truth``, rtol = atol = 1e-10). Per cell: RMSE, mode flips (samples
ending nearest another mixture component than their ground truth), RMSE over the samples
that did not flip, for ours and the peer, and ``ratio = RMSE(ours) / RMSE(peer)`` (below 1:
ours is more accurate). Problems: ring2d (8 Gaussians on the unit circle, std 0.05, 1,000
samples) and gmm64 (64-d, 10 modes, std 0.3, 500 samples), as in ``accuracy.py``, each
under VP-linear (``t`` from 1 to 1e-3) and VE (``sigma`` 0.01..50, ``t`` from 1 to 1e-5).
Grids: ``log_snr``, ``uniform`` (in ``t``), ``quadratic``, ``edm`` (rho 7); NFE 5, 6, 8,
10, 12, 15, 20, 25, 50, or, for methods that cannot make exactly that many calls (EDM Heun,
``2N - 1``; Heun, ``2N``), the nearest NFE they reach (ties: more steps), the same on both
sides. DPM-Solver-fast builds its own log-SNR grid from the NFE, so it runs on ``log_snr``
only.

**The peers on our grid, in float64.** Every schedule's probability-flow ODE is one ODE in
``y = x / alpha`` against ``rho = sigma / alpha`` (DDIM eq. 14): the peers run on that ODE
and we convert at the boundaries and inside the model wrapper, so every peer runs under VP
and VE.

* k-diffusion takes a denoiser ``D(y, sigma) = y - sigma eps(alpha y, t(sigma))`` and
  ``sigmas = rho(ts)`` (float64; the grid ends at ``rho(t_min) > 0``, so no sampler takes
  its "step to sigma = 0" branch).
* diffusers' multistep schedulers (DPM-Solver++, UniPC, DEIS) work from ``self.sigmas``
  (``= rho``) and convert with ``alpha = 1/sqrt(1 + rho^2)``: after ``set_timesteps(N)`` we
  overwrite ``sigmas`` with ``rho(ts)`` (float64, ``N + 1`` values) and ``timesteps`` with
  ``ts[:-1]`` (float64), so the step math runs on our grid and the model receives our ``t``
  (the step index is found by exact equality with ``timesteps``). The sample is
  ``x_VP = y / sqrt(1 + rho^2)``. Nothing else those steps read comes from the discrete
  beta table (diffusers 0.42: ``alpha_t``, ``sigma_t``, ``lambda_t`` are not read by
  ``step``).
* ``EulerDiscreteScheduler`` / ``HeunDiscreteScheduler``: the sample is ``y``, the model
  input ``scale_model_input(y) = y / sqrt(1 + rho^2)``; we overwrite ``sigmas`` and
  ``timesteps`` (Heun: in its interleaved layout, ``[r_0, r_1, r_1, ..., r_{N-1}, r_{N-1},
  r_N]`` and ``[t_0, t_1, t_1, ..., t_{N-1}, t_{N-1}]``, so ``N`` steps make ``2N - 1`` calls
  and the last step is Euler, as in EDM Alg. 1).
* ``DDIMScheduler`` indexes ``alphas_cumprod`` by integer timestep: it is built with
  ``num_train_timesteps = N``, ``set_timesteps(N)`` (step ratio 1, timesteps ``N-1 .. 0``)
  and ``alphas_cumprod[N-1-i] = 1/(1 + rho(ts[i])^2)``, ``final_alpha_cumprod =
  1/(1 + rho(ts[N])^2)``; the step index ``j`` maps to ``t = ts[N-1-j]``. ``clip_sample``
  (on by default: it clamps x0 to [-1, 1]) is off.
* ``DPMSolverMultistepScheduler.step`` and ``EulerDiscreteScheduler.step`` cast the sample
  to float32 (``sample.to(torch.float32)``); while a peer runs, ``torch`` inside its
  scheduler module resolves ``float32`` to ``float64`` (:func:`_float64_steps`), so the
  whole step is float64 (the sanity tests agree with our solvers to ~1e-12).

Flags that change the final steps, set so that each peer runs its own documented rule on our
grid: DPM-Solver++ ``final_sigmas_type="sigma_min"`` (``"zero"``, the default, forces an
order-1 last step) and ``euler_at_final=False``; ``lower_order_final`` True (the default:
orders 1 and 2 on the last two steps when there are fewer than 15 steps) and False (full
order), both as peers. UniPC keeps its default ``lower_order_final=True``, which in
diffusers 0.42 lowers the last steps at *every* step count (``this_order = min(order,
N - i)``: the last step is UniP-1, the one before at most UniP-2), although its docstring
says "only valid for < 15 inference steps". DEIS keeps ``lower_order_final=True`` (< 15
steps, as documented). No Karras/exponential/beta/flow sigmas, no thresholding, epsilon
prediction. Every model call is checked to be at one of the times the method must visit
(grid points; DPM-Solver-fast: its stage times in ``lambda``), every such time is visited,
and the number of calls equals the method's NFE.

**Why a cell is above 1.02.** Under each pair's table the report lists every cell where ours
is more than :data:`SLACK` times the peer's RMSE, with the reasons the data give
(:func:`reasons`): which of our rules makes the difference (each solver of :data:`ABLATIONS`
is also run with one rule at a time set as the peer sets it: final steps, full order,
curvature weight), more mode flips, a trade-off with the other problem on the same grid, or a
peer whose own error rises at the next NFE; then what each such variant does over all the
pair's cells beside ours as it is.

Our side runs ``deis_jax.sample`` in float64 on the same grid. The peers' results are cached
in ``results/peers.json`` (committed): ``--ours-only`` reruns only our side, so a new
variant of ours (a final-step rule registered under a new name, added to :data:`PAIRS`) is
compared in minutes without torch installed. :func:`ours_vs_peers` does the same for a
:class:`~deis_jax.solvers.Solver` object without registering it. The ground truths are
cached in ``benchmarks/.cache`` (git-ignored).

    python benchmarks/peers.py                  # everything: 36 min on 2 shared CPU cores
    python benchmarks/peers.py --ours-only      # our side only (26 min), peers from the JSON
    python benchmarks/peers.py --ours-only --solvers dpmpp_3m,unipc3   # ~2-3 min per solver
    python benchmarks/peers.py --peers-only     # the peers only (7 min; problems changed)
    python benchmarks/peers.py --quick          # small smoke run -> results/peers_quick.*

Our side's time is almost all XLA compilation (one per solver, step count and problem; the
four grids share it); the ground truths (~10 s each) are cached after the first run.

Install the peers (CPU; torch first, exactly this version, or pip pulls a multi-GB CUDA
build)::

    pip install torch==2.13.0
    pip install '.[peers]'              # diffusers, torchsde, torchdiffeq
    pip install --no-deps k-diffusion   # only k_diffusion.sampling is used

Tested with torch 2.13.0+cpu, diffusers 0.42.1, k-diffusion 0.1.1.post1, torchsde 0.2.6,
torchdiffeq 0.2.5. k-diffusion's own dependency list (torchvision, clip, wandb, kornia,
...) is not needed, and it does not install here: a dry run of ``pip install k-diffusion``
with torch pinned would add torchvision 0.28 and downgrade numpy to 1.26, and resolving it
together with this package did not finish in 11 minutes; hence ``--no-deps``, and the extra
leaves k-diffusion out. ``import k_diffusion`` imports every submodule (torchvision, skimage,
...), so :func:`k_diffusion_sampling` loads ``k_diffusion/sampling.py`` by path with a
stand-in for its one use of ``k_diffusion.utils`` (``append_dims``). A missing peer library
is reported and skipped (``--ours-only`` needs none).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import pathlib
import sys
import time
import types
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deis_jax import as_model, get_solver, make_plan, sample, schedules, testing, timesteps
from deis_jax.solvers import Solver, dpm_solver_pp, logrho_deis, unipc
from deis_jax.solvers.dpm_solver import fast_orders

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
GRIDS = ("log_snr", "uniform", "quadratic", "edm")
QUICK_NFES = (5, 10, 20)
QUICK_GRIDS = ("log_snr", "quadratic")
SCHEDULES = {"vp_linear": schedules.vp_linear, "ve": schedules.ve}
PROBLEMS = {  # name -> (mixture factory, batch); the problems of accuracy.py
    "ring2d": (lambda: testing.ring_mixture(8, std=0.05), 1000),
    "gmm64": (lambda: testing.gaussian_mixture(64, 10, std=0.3, scale=1.0, seed=1), 500),
}
HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
INSTALL = ("pip install torch==2.13.0 && pip install '.[peers]' && "
           "pip install --no-deps k-diffusion")
SLACK = 1.02  # a cell counts as "ours worse" when the ratio exceeds this
MATCH_RTOL = 1e-9  # a peer's model call must be this close (relative) to a required time


# ------------------------------------------------------------------ problems


class Problem(NamedTuple):
    """One benchmark problem under one schedule, with its start points and ground truth."""

    name: str  # "ring2d/vp_linear"
    gmm: testing.GaussianMixture
    sched: schedules.Schedule
    x_T: np.ndarray  # (B, d) float64
    gt: np.ndarray  # (B, d) float64 solution at sched.t_min
    eps_fn: Callable  # eps_fn(x, t), one object per problem (our compiled samplers reuse it:
    #                   as_model compares a plain function by identity)
    eps_jit: Callable  # jitted eps_fn for the peers' model wrapper


def problem(name: str, schedule: str, quick: bool = False) -> Problem:
    """The problem ``name`` (a key of :data:`PROBLEMS`) under ``schedule`` (a key of
    :data:`SCHEDULES`); ``quick`` uses a quarter of the batch. Cached in memory; the ground
    truth also on disk (``benchmarks/.cache``)."""
    with jax.enable_x64(True):
        return _problem(name, schedule, quick)


@functools.lru_cache(maxsize=None)
def _problem(name, schedule, quick):
    make, batch = PROBLEMS[name]
    batch = batch // 4 if quick else batch
    gmm, sched = make(), SCHEDULES[schedule]()
    x_T = np.asarray(sched.prior_sample(jax.random.key(0), (batch, gmm.dim)), np.float64)
    eps_fn = gmm.eps_fn(sched)
    return Problem(f"{name}/{schedule}", gmm, sched, x_T, _ground_truth(gmm, sched, x_T,
                   CACHE / f"gt_{name}_{schedule}_{batch}.npz"), eps_fn, jax.jit(eps_fn))


def _ground_truth(gmm, sched, x_T, path: pathlib.Path) -> np.ndarray:
    if path.exists():
        saved = np.load(path)
        if np.array_equal(saved["x_T"], x_T):
            return saved["gt"]
    t0 = time.perf_counter()
    gt, _ = testing.ode_ground_truth(gmm, sched, x_T, sched.t_max, sched.t_min)
    gt = np.asarray(gt, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_T=x_T, gt=gt)
    print(f"ground truth {path.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return gt


def score(prob: Problem, x) -> dict:
    """RMSE against the ground truth, mode flips, and RMSE over the samples that did not
    flip (``inf`` when ``x`` is not finite)."""
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return {"rmse": float("inf"), "flips": -1, "rmse_no_flip": float("inf")}
    with jax.enable_x64(True):
        flips = np.asarray(testing.mode_flips(prob.gmm, jnp.asarray(x), jnp.asarray(prob.gt)))
    err2 = np.mean((x - prob.gt) ** 2, axis=-1)
    return {"rmse": float(np.sqrt(err2.mean())), "flips": int(flips.sum()),
            "rmse_no_flip": float(np.sqrt(err2[~flips].mean())) if (~flips).any()
            else float("inf")}


# ------------------------------------------------------------------ the exact model


class ExactModel:
    """The problem's exact ``eps`` as the peers call it: float64, counting calls, and
    checking that every call is at one of ``times`` (the times the method must visit).

    ``vp_eps(x_vp, t)`` (diffusers) takes the VP-form sample ``x_vp = y / sqrt(1 + rho^2)``
    and our ``t``; ``denoiser(y, sigma)`` (k-diffusion) returns
    ``D = y - sigma eps(alpha y, t)`` with ``sigma = rho``. Either evaluates
    ``eps(alpha_t y, t)`` at the matching time of ``times``.
    """

    def __init__(self, prob: Problem, times):
        self.eps_jit = prob.eps_jit
        self.times = np.asarray(times, np.float64)
        self.alpha = np.asarray(prob.sched.alpha(self.times), np.float64)
        self.rho = np.asarray(prob.sched.rho(self.times), np.float64)
        self.nfe = 0
        self.visited = np.zeros(self.times.shape, bool)
        self.mismatch = 0.0  # largest relative distance of a call from its time

    def _match(self, values, v, what):
        k = int(np.argmin(np.abs(values - v)))
        gap = abs(values[k] - v) / abs(v)
        if not gap <= MATCH_RTOL:
            raise AssertionError(f"peer called the model at {what}={v!r}, not one of the "
                                 f"method's times {values}")
        self.mismatch = max(self.mismatch, gap)
        return k

    def _eps(self, y, k):
        self.nfe += 1
        self.visited[k] = True
        return np.array(self.eps_jit(self.alpha[k] * y, self.times[k]), np.float64)  # writable

    def vp_eps(self, x_vp, t):
        import torch

        k = self._match(self.times, float(t), "t")
        return torch.from_numpy(self._eps(x_vp.numpy() * np.hypot(1.0, self.rho[k]), k))

    def denoiser(self, y, sigma):
        import torch

        s = sigma.numpy()
        if not np.all(s == s[0]):
            raise AssertionError(f"peer called the model at several sigmas at once: {s}")
        k = self._match(self.rho, float(s[0]), "sigma")
        return y - sigma[:, None] * torch.from_numpy(self._eps(y.numpy(), k))


# ------------------------------------------------------------------ peer libraries


def available() -> dict[str, bool]:
    """Which peer libraries can run here: ``{"diffusers": bool, "k-diffusion": bool}``."""
    torch = importlib.util.find_spec("torch") is not None
    return {"diffusers": torch and importlib.util.find_spec("diffusers") is not None,
            "k-diffusion": torch and k_diffusion_sampling() is not None}


@functools.lru_cache(maxsize=None)
def k_diffusion_sampling():
    """The module ``k_diffusion.sampling``, or None if k-diffusion is not installed.

    ``import k_diffusion`` imports every submodule (torchvision, clip, ...); when that
    fails, ``sampling.py`` is loaded by path with a stand-in ``utils`` module holding the one
    function it uses (``append_dims``).
    """
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        from k_diffusion import sampling

        return sampling
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("_k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("_k_diffusion.utils")
    utils.append_dims = lambda x, ndim: x[(...,) + (None,) * (ndim - x.ndim)]
    package.utils = utils
    sys.modules.update({"_k_diffusion": package, "_k_diffusion.utils": utils})
    spec = importlib.util.spec_from_file_location("_k_diffusion.sampling", root / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def versions() -> dict[str, str]:
    """Installed versions of the peer libraries (``"-"`` if missing)."""
    out = {}
    for dist in ("torch", "diffusers", "k-diffusion"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


@contextlib.contextmanager
def _torch_float64():
    """torch's default dtype is float64 inside (``torch.tensor(python_float)``)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _torch_threads(n):
    """torch uses ``n`` threads inside (the peers' tensors are small)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _float64_steps(scheduler):
    """Inside ``scheduler``'s module, ``torch.float32`` is float64 (its ``step`` casts the
    sample with ``sample.to(torch.float32)``); everything else is torch's."""
    import torch

    class Float64Torch:
        float32 = torch.float64

        def __getattr__(self, name):
            return getattr(torch, name)

    module = sys.modules[type(scheduler).__module__]
    old = module.torch
    module.torch = Float64Torch()
    try:
        yield
    finally:
        module.torch = old


def _vp_alpha(rho):
    """``alpha`` of the variance-preserving process with this ``rho``: ``1/sqrt(1+rho^2)``."""
    return 1.0 / np.hypot(1.0, rho)


# Every peer runner: (model: ExactModel, y0, rho (N+1,), ts (N+1,), nfe) -> y at ts[-1].


def _diffusers_multistep(cls, config, model, y0, rho, ts, nfe):
    import diffusers
    import torch

    del nfe
    scheduler = getattr(diffusers, cls)(**config)
    scheduler.set_timesteps(len(ts) - 1)
    scheduler.sigmas = torch.from_numpy(rho.copy())
    scheduler.timesteps = torch.from_numpy(ts[:-1].copy())
    x = torch.from_numpy(y0 * _vp_alpha(rho[0]))
    with _float64_steps(scheduler):
        for t in scheduler.timesteps:
            x = scheduler.step(model.vp_eps(x, t), t, x).prev_sample
    return x.numpy() / _vp_alpha(rho[-1])


def _diffusers_ddim(model, y0, rho, ts, nfe):
    import diffusers
    import torch

    del nfe
    n = len(ts) - 1
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=n, clip_sample=False,
                                        timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(n)
    a2 = _vp_alpha(rho) ** 2
    scheduler.alphas_cumprod = torch.from_numpy(a2[:-1][::-1].copy())  # index N-1-i <- ts[i]
    scheduler.final_alpha_cumprod = torch.tensor(a2[-1], dtype=torch.float64)
    assert scheduler.timesteps.tolist() == list(range(n - 1, -1, -1))
    x = torch.from_numpy(y0 * _vp_alpha(rho[0]))
    for j in scheduler.timesteps:
        eps = model.vp_eps(x, ts[n - 1 - int(j)])
        x = scheduler.step(eps, j, x, eta=0.0).prev_sample
    return x.numpy() / _vp_alpha(rho[-1])


def _diffusers_karras(cls, model, y0, rho, ts, nfe):
    import diffusers
    import torch

    del nfe
    scheduler = getattr(diffusers, cls)(prediction_type="epsilon")
    scheduler.set_timesteps(len(ts) - 1)
    if cls == "HeunDiscreteScheduler":  # its interleaved layout: stage 2 at the next point
        sig = np.concatenate([rho[:1], np.repeat(rho[1:-1], 2), rho[-1:]])
        tim = np.concatenate([ts[:1], np.repeat(ts[1:-1], 2)])
    else:
        sig, tim = rho, ts[:-1]
    scheduler.sigmas = torch.from_numpy(sig.copy())
    scheduler.timesteps = torch.from_numpy(tim.copy())
    y = torch.from_numpy(y0.copy())
    with _float64_steps(scheduler):
        for t in scheduler.timesteps:
            eps = model.vp_eps(scheduler.scale_model_input(y, t), t)
            y = scheduler.step(eps, t, y).prev_sample
    return y.numpy()


def _no_noise(sigma, sigma_next):
    raise AssertionError("a deterministic (eta = 0) peer asked for noise")


def _kdiff(name, kwargs, model, y0, rho, ts, nfe):
    import torch

    del ts, nfe
    run = getattr(k_diffusion_sampling(), name)
    y = run(model.denoiser, torch.from_numpy(y0.copy()), torch.from_numpy(rho.copy()),
            disable=True, **kwargs)
    return y.numpy()


def _kdiff_heun_edm(model, y0, rho, ts, nfe):
    """EDM Alg. 1 on our grid: k-diffusion's Heun to ``rho[-2]``, then its Euler step to
    ``rho[-1]`` (k-diffusion takes the final Euler step only when the grid ends at 0)."""
    import torch

    del ts, nfe
    kd = k_diffusion_sampling()
    sig = torch.from_numpy(rho.copy())
    y = kd.sample_heun(model.denoiser, torch.from_numpy(y0.copy()), sig[:-1], disable=True)
    return kd.sample_euler(model.denoiser, y, sig[-2:], disable=True).numpy()


def _kdiff_dpm_fast(model, y0, rho, ts, nfe):
    import torch

    del ts
    y = k_diffusion_sampling().sample_dpm_fast(
        model.denoiser, torch.from_numpy(y0.copy()), float(rho[-1]), float(rho[0]), nfe,
        disable=True)
    return y.numpy()


def _grid_times(sched, ts, nfe):
    """A step from each grid point but the last."""
    return ts[:-1]


def _all_times(sched, ts, nfe):
    """Every grid point (Heun on every step)."""
    return ts


_FAST_STAGES = {1: (0.0,), 2: (0.0, 0.5), 3: (0.0, 1 / 3, 2 / 3)}


def _fast_times(sched, ts, nfe):
    """DPM-Solver-fast's stage times: lambda-fractions of each step, orders by ``nfe % 3``."""
    lam = np.asarray(sched.log_snr(ts), np.float64)
    h = np.diff(lam)
    stages = [lam[i] + f * h[i] for i, k in enumerate(fast_orders(len(h), nfe % 3))
              for f in _FAST_STAGES[int(k)]]
    return np.asarray(sched.t_from_log_snr(jnp.asarray(stages)), np.float64)


class Peer(NamedTuple):
    """A reference implementation on our grid.

    Attributes:
      library: ``"diffusers"`` or ``"k-diffusion"``.
      run: ``(model, y0, rho, ts, nfe) -> y`` (``y = x / alpha`` at ``ts[-1]``).
      nfe_for_steps: model calls of ``N`` steps (None: fixed by the NFE, DPM-Solver-fast).
      times: ``(schedule, ts, nfe) -> times`` it must call the model at.
      description: what runs, with the options that matter.
      grids: the grid kinds it runs on.
    """

    library: str
    run: Callable
    nfe_for_steps: Callable[[int], int] | None
    times: Callable
    description: str
    grids: tuple = GRIDS


def _n(n):
    return n


def diffusers_dpmpp(order: int, lower_order_final: bool, solver_type: str = "midpoint") -> Peer:
    """diffusers' multistep DPM-Solver++(``order``M) with its final-step rule on or off."""
    config = dict(algorithm_type="dpmsolver++", solver_order=order, solver_type=solver_type,
                  lower_order_final=lower_order_final, final_sigmas_type="sigma_min",
                  euler_at_final=False)
    rule = ("orders 1, 2 on the last two steps below 15 steps" if lower_order_final
            else "full order to the end")
    return Peer("diffusers", functools.partial(_diffusers_multistep,
                                               "DPMSolverMultistepScheduler", config), _n,
                _grid_times, f"DPMSolverMultistepScheduler(dpmsolver++, solver_order={order}, "
                f"solver_type={solver_type}, lower_order_final={lower_order_final}, "
                f"final_sigmas_type='sigma_min'): {rule}")


def diffusers_unipc(order: int, variant: str, lower_order_final: bool = True) -> Peer:
    """diffusers' UniPC (UniP-``order`` + UniC, data prediction)."""
    config = dict(solver_order=order, solver_type=variant, predict_x0=True,
                  lower_order_final=lower_order_final, final_sigmas_type="sigma_min")
    rule = ("last step UniP-1, the one before at most UniP-2, at every N" if lower_order_final
            else "full order to the end")
    return Peer("diffusers", functools.partial(_diffusers_multistep, "UniPCMultistepScheduler",
                                               config), _n, _grid_times,
                f"UniPCMultistepScheduler(solver_order={order}, {variant}, predict_x0=True, "
                f"lower_order_final={lower_order_final}): {rule}")


def diffusers_deis(order: int, lower_order_final: bool = True) -> Peer:
    """diffusers' log-rho DEIS with ``order`` points (polynomial degree ``order - 1``)."""
    config = dict(solver_order=order, algorithm_type="deis", solver_type="logrho",
                  lower_order_final=lower_order_final)
    rule = ("orders 1, 2 on the last two steps below 15 steps" if lower_order_final
            else "full order to the end")
    return Peer("diffusers", functools.partial(_diffusers_multistep, "DEISMultistepScheduler",
                                               config), _n, _grid_times,
                f"DEISMultistepScheduler(solver_order={order}, logrho, lower_order_final="
                f"{lower_order_final}): Lagrange polynomial of degree {order - 1} in log rho "
                f"(noise prediction); {rule}")


PEERS: dict[str, Peer] = {
    "diffusers/ddim": Peer("diffusers", _diffusers_ddim, _n, _grid_times,
                           "DDIMScheduler(eta=0, clip_sample=False)"),
    "diffusers/dpmpp_2m": diffusers_dpmpp(2, True),
    "diffusers/dpmpp_2m_full": diffusers_dpmpp(2, False),
    "diffusers/dpmpp_3m": diffusers_dpmpp(3, True),
    "diffusers/dpmpp_3m_full": diffusers_dpmpp(3, False),
    "diffusers/unipc2": diffusers_unipc(2, "bh2"),
    "diffusers/unipc3": diffusers_unipc(3, "bh2"),
    "diffusers/unipc2_full": diffusers_unipc(2, "bh2", False),
    "diffusers/unipc3_full": diffusers_unipc(3, "bh2", False),
    "diffusers/unipc2_bh1": diffusers_unipc(2, "bh1"),
    "diffusers/unipc3_bh1": diffusers_unipc(3, "bh1"),
    "diffusers/deis2": diffusers_deis(2),
    "diffusers/deis3": diffusers_deis(3),
    "diffusers/euler": Peer("diffusers", functools.partial(_diffusers_karras,
                                                           "EulerDiscreteScheduler"), _n,
                            _grid_times, "EulerDiscreteScheduler (no churn)"),
    "diffusers/heun": Peer("diffusers", functools.partial(_diffusers_karras,
                                                          "HeunDiscreteScheduler"),
                           lambda n: 2 * n - 1, _grid_times,
                           "HeunDiscreteScheduler: Heun, last step Euler (2N - 1 NFE)"),
    "k-diffusion/dpmpp_2m": Peer("k-diffusion", functools.partial(_kdiff, "sample_dpmpp_2m", {}),
                                 _n, _grid_times, "sample_dpmpp_2m"),
    "k-diffusion/dpmpp_3m_sde": Peer(
        "k-diffusion", functools.partial(_kdiff, "sample_dpmpp_3m_sde",
                                         dict(eta=0.0, noise_sampler=_no_noise)), _n,
        _grid_times, "sample_dpmpp_3m_sde(eta=0): DPM-Solver++(3M), full order to the end"),
    "k-diffusion/lms": Peer("k-diffusion", functools.partial(_kdiff, "sample_lms",
                                                             dict(order=4)), _n, _grid_times,
                            "sample_lms(order=4): Lagrange polynomial of degree 3 in sigma "
                            "(rhoAB-DEIS), weights by scipy quad"),
    "k-diffusion/euler": Peer("k-diffusion", functools.partial(_kdiff, "sample_euler", {}), _n,
                              _grid_times, "sample_euler (no churn)"),
    "k-diffusion/heun_edm": Peer("k-diffusion", _kdiff_heun_edm, lambda n: 2 * n - 1,
                                 _grid_times, "sample_heun to the last-but-one point, then "
                                 "sample_euler (EDM Alg. 1 on a grid ending at rho_min)"),
    "k-diffusion/heun": Peer("k-diffusion", functools.partial(_kdiff, "sample_heun", {}),
                             lambda n: 2 * n, _all_times,
                             "sample_heun: Heun on every step (its final Euler step is only "
                             "taken to sigma = 0)"),
    "k-diffusion/dpm_fast": Peer("k-diffusion", _kdiff_dpm_fast, None, _fast_times,
                                 "sample_dpm_fast: its own log-SNR grid from sigma_min, "
                                 "sigma_max, NFE (checked equal to ours)", ("log_snr",)),
}

# (ours, peer): our registry name (or anything get_solver resolves) against a PEERS key.
# Add a variant of ours here and run `--ours-only --solvers NAME`.
PAIRS: tuple[tuple[str, str], ...] = (
    ("ddim", "diffusers/ddim"),
    ("dpmpp_2m", "diffusers/dpmpp_2m"),
    ("dpmpp_2m", "diffusers/dpmpp_2m_full"),
    ("dpmpp_2m", "k-diffusion/dpmpp_2m"),
    ("dpmpp_3m", "diffusers/dpmpp_3m"),
    ("dpmpp_3m", "diffusers/dpmpp_3m_full"),
    ("dpmpp_3m", "k-diffusion/dpmpp_3m_sde"),
    ("dpmpp_3m_reference", "diffusers/dpmpp_3m"),
    ("unipc2", "diffusers/unipc2"),
    ("unipc2", "diffusers/unipc2_full"),
    ("unipc3", "diffusers/unipc3"),
    ("unipc3", "diffusers/unipc3_full"),
    ("unipc2_bh1", "diffusers/unipc2_bh1"),
    ("unipc3_bh1", "diffusers/unipc3_bh1"),
    ("logrho1", "diffusers/deis2"),
    ("logrho2", "diffusers/deis3"),
    ("rhoab3", "k-diffusion/lms"),
    ("edm_euler", "diffusers/euler"),
    ("edm_euler", "k-diffusion/euler"),
    ("edm_heun", "diffusers/heun"),
    ("edm_heun", "k-diffusion/heun_edm"),
    ("rho_heun", "k-diffusion/heun"),
    ("dpm_fast", "k-diffusion/dpm_fast"),
)


# Where our solver departs from its peers on purpose, one rule at a time: the same solver with
# that rule set as the peer sets it (label: the alternative). Measured with our side
# (``--ours-only``, no torch), so every cell above SLACK can be traced to the rule behind it.
REFERENCE_FINAL = "with the reference's final steps"
FULL_ORDER = "with full order to the end"
ABLATIONS: dict[str, tuple[tuple[str, Callable[[], Solver]], ...]] = {
    "dpmpp_2m": ((REFERENCE_FINAL, lambda: dpm_solver_pp(2, final_steps="reference")),
                 (FULL_ORDER, lambda: dpm_solver_pp(2, final_steps="none"))),
    "dpmpp_3m": ((REFERENCE_FINAL, lambda: dpm_solver_pp(3, final_steps="reference")),
                 (FULL_ORDER, lambda: dpm_solver_pp(3, final_steps="none")),
                 ("with the reference's curvature weight 1/2",
                  lambda: dpm_solver_pp(3, curvature="reference"))),
    "unipc2": ((REFERENCE_FINAL, lambda: unipc(2, final_steps="reference")),
               (FULL_ORDER, lambda: unipc(2, final_steps="none"))),
    "unipc3": ((REFERENCE_FINAL, lambda: unipc(3, final_steps="reference")),
               (FULL_ORDER, lambda: unipc(3, final_steps="none"))),
    "unipc2_bh1": ((REFERENCE_FINAL,
                    lambda: unipc(2, variant="bh1", final_steps="reference")),),
    "unipc3_bh1": ((REFERENCE_FINAL,
                    lambda: unipc(3, variant="bh1", final_steps="reference")),),
    "logrho1": ((REFERENCE_FINAL, lambda: logrho_deis(1, final_steps="reference")),),
    "logrho2": ((REFERENCE_FINAL, lambda: logrho_deis(2, final_steps="reference")),),
}


def pair_key(ours: str, peer: str) -> str:
    return f"{ours} vs {peer}"


def ablations(ours: str) -> list[tuple[str, Solver]]:
    """``(label, solver)`` of every :data:`ABLATIONS` variant of our solver ``ours``."""
    return [(label, make()) for label, make in ABLATIONS.get(ours, ())]


# ------------------------------------------------------------------ step plans


def _nearest_steps(nfe_for_steps, target: int, min_steps: int = 1) -> int:
    """Steps whose NFE is nearest ``target`` (ties: more steps)."""
    return min(range(min_steps, target + 2),
               key=lambda n: (abs(nfe_for_steps(n) - target), -n))


def peer_plan(peer: Peer, target: int) -> tuple[int, int]:
    """``(steps, nfe)`` of ``peer`` for the requested NFE ``target``."""
    if peer.nfe_for_steps is None:
        return target // 3 + 1, target
    n = _nearest_steps(peer.nfe_for_steps, target)
    return n, peer.nfe_for_steps(n)


def our_plan(solver, target: int) -> tuple[Solver, int, int]:
    """``(solver, steps, nfe)`` of our solver for the requested NFE ``target``
    (DPM-Solver-fast: its plan for exactly ``target``, :func:`deis_jax.make_plan`'s)."""
    solver = get_solver(solver)
    if solver.for_nfe is not None:  # the step plan depends on the NFE, not on the schedule
        plan = make_plan(schedules.vp_linear(), solver, nfe=target)
        return plan.solver, plan.n_steps, plan.nfe
    n = _nearest_steps(solver.nfe_for_steps, target, solver.min_steps)
    return solver, n, solver.nfe_for_steps(n)


def cells(solver, peer_name: str, grids=GRIDS, nfes=NFES):
    """``(grid, steps, nfe, solver plan)`` of one pair, the plans checked equal on both
    sides."""
    peer = PEERS[peer_name]
    out = {}
    for target in nfes:
        n, nfe = peer_plan(peer, target)
        plan, n_ours, nfe_ours = our_plan(solver, target)
        if (n, nfe) != (n_ours, nfe_ours):
            raise ValueError(f"{getattr(solver, 'name', solver)} makes {nfe_ours} calls in "
                             f"{n_ours} steps for NFE {target}, {peer_name} {nfe} in {n}")
        for grid in grids:
            if grid in peer.grids:
                out[(grid, n, nfe)] = (grid, n, nfe, plan)
    return list(out.values())


# ------------------------------------------------------------------ runs


class PeerRun(NamedTuple):
    """A peer's result: final sample ``x`` (float64, our ``x`` at ``ts[-1]``), the model
    calls counted in the wrapper, and the largest relative distance between a call's time
    (or ``sigma``) and the method's time it matched (0 when the peer passes our grid's
    values)."""

    x: np.ndarray
    nfe: int
    mismatch: float


def run_peer(peer: str | Peer, prob: Problem, ts, nfe: int) -> PeerRun:
    """Run a peer (a :data:`PEERS` key or a :class:`Peer`) on grid ``ts``, checking its
    model calls: each at one of the method's times, every such time visited, and as many
    calls as the method's NFE."""
    peer = PEERS[peer] if isinstance(peer, str) else peer
    with jax.enable_x64(True), _torch_float64():
        ts = np.asarray(ts, np.float64)
        n = len(ts) - 1
        model = ExactModel(prob, peer.times(prob.sched, ts, nfe))
        a0, a1 = (float(prob.sched.alpha(t)) for t in (ts[0], ts[-1]))
        rho = np.asarray(prob.sched.rho(ts), np.float64)
        y = peer.run(model, prob.x_T / a0, rho, ts, nfe)
        expected = nfe if peer.nfe_for_steps is None else peer.nfe_for_steps(n)
        if model.nfe != expected or not model.visited.all():
            raise AssertionError(f"{peer.description}: {model.nfe} model calls (expected "
                                 f"{expected}); unvisited times "
                                 f"{model.times[~model.visited]}")
        return PeerRun(np.asarray(y, np.float64) * a1, model.nfe, model.mismatch)


def run_ours(solver, prob: Problem, ts) -> np.ndarray:
    """Final sample of our ``solver`` (a name or a :class:`Solver`) on grid ``ts``."""
    with jax.enable_x64(True):
        x = sample(as_model(prob.eps_fn, prob.sched), jnp.asarray(prob.x_T),
                   solver=get_solver(solver), ts=jnp.asarray(ts, jnp.float64),
                   check_finite=False)
        return np.asarray(x, np.float64)


def _grid(prob, n, kind):
    with jax.enable_x64(True):
        return np.asarray(timesteps(prob.sched, n, kind), np.float64)


def measure(side: str, names, quick: bool, log=print) -> list[dict]:
    """Records ``{side: name, problem, schedule, grid, steps, nfe, rmse, flips,
    rmse_no_flip, seconds}`` for ``side`` ``"peer"`` (names: PEERS keys, each on the cells
    of its pairs) or ``"ours"`` (names: our solvers, each on the cells of its pairs, and so
    is each of its :func:`ablations`, recorded under the variant's name); ``seconds`` is the
    wall time of the run (ours: compilation included)."""
    grids, nfes = (QUICK_GRIDS, QUICK_NFES) if quick else (GRIDS, NFES)
    records = []
    for pname in PROBLEMS:
        for sname in SCHEDULES:
            prob = problem(pname, sname, quick)
            t0 = time.perf_counter()
            for name in names:
                variants = [(name, None)] + ([(s.name, s) for _, s in ablations(name)]
                                             if side == "ours" else [])
                for record_name, variant in variants:
                    todo = {}
                    for ours, peer in PAIRS:
                        if name == (peer if side == "peer" else ours):
                            for cell in cells(variant or ours, peer, grids, nfes):
                                todo[cell[:3]] = cell
                    for grid, n, nfe, plan in todo.values():
                        ts = _grid(prob, n, grid)
                        t1 = time.perf_counter()
                        x = (run_peer(name, prob, ts, nfe).x if side == "peer"
                             else run_ours(plan, prob, ts))
                        records.append({side: record_name, "problem": pname, "schedule": sname,
                                        "grid": grid, "steps": n, "nfe": nfe, **score(prob, x),
                                        "seconds": time.perf_counter() - t1})
            log(f"{side} {prob.name}: {len(names)} methods, {time.perf_counter() - t0:.0f} s")
    return records


def _index(records, side):
    return {(r[side], r["problem"], r["schedule"], r["grid"], r["steps"], r["nfe"]): r
            for r in records}


def pair_cells(ours_records, peer_records, ours: str, peer: str) -> list[dict]:
    """The cells of one pair present on both sides: problem, schedule, grid, steps, nfe,
    ``ours`` and ``peer`` scores and ``ratio = RMSE(ours) / RMSE(peer)``."""
    mine, theirs = _index(ours_records, "ours"), _index(peer_records, "peer")
    out = []
    for key, p in theirs.items():
        if key[0] != peer or (ours,) + key[1:] not in mine:
            continue
        o = mine[(ours,) + key[1:]]
        keep = ("rmse", "flips", "rmse_no_flip")
        out.append({"problem": p["problem"], "schedule": p["schedule"], "grid": p["grid"],
                    "steps": p["steps"], "nfe": p["nfe"],
                    "ours": {k: o[k] for k in keep}, "peer": {k: p[k] for k in keep},
                    "ratio": _ratio(o["rmse"], p["rmse"])})
    return sorted(out, key=lambda c: (c["problem"], c["schedule"], GRIDS.index(c["grid"]),
                                      c["nfe"]))


def _ratio(a, b):
    if a == b:
        return 1.0
    return float(a / b) if b > 0 and np.isfinite(b) else float("inf")


def ours_vs_peers(solver, peer: str, *, quick: bool = False,
                  results: pathlib.Path | None = None) -> list[dict]:
    """Score ``solver`` (a registry name or a :class:`Solver`, registered or not) against
    the cached results of ``peer`` (a :data:`PEERS` key) on that peer's cells.

    Runs our side only (needs no torch); the peer's scores come from ``results`` (default
    ``results/peers.json``, or ``results/peers_quick.json`` with ``quick``). Returns the
    cells of :func:`pair_cells`, one per problem x schedule x grid x NFE.

    Example::

        from deis_jax.solvers import dpm_solver_pp
        cells = ours_vs_peers(dpm_solver_pp(3, final_steps="none"), "diffusers/dpmpp_3m_full")
        worst = max(cells, key=lambda c: c["ratio"])
    """
    results = results or RESULTS / ("peers_quick.json" if quick else "peers.json")
    data = json.loads(pathlib.Path(results).read_text())
    _check_problems(data, quick)
    grids, nfes = (QUICK_GRIDS, QUICK_NFES) if quick else (GRIDS, NFES)
    name = get_solver(solver).name
    ours = []
    for pname in PROBLEMS:
        for sname in SCHEDULES:
            prob = problem(pname, sname, quick)
            for grid, n, nfe, plan in cells(solver, peer, grids, nfes):
                x = run_ours(plan, prob, _grid(prob, n, grid))
                ours.append({"ours": name, "problem": pname, "schedule": sname, "grid": grid,
                             "steps": n, "nfe": nfe, **score(prob, x)})
    return pair_cells(ours, data["peers"], name, peer)


def _fingerprints(quick: bool) -> dict:
    out = {}
    for pname in PROBLEMS:
        for sname in SCHEDULES:
            prob = problem(pname, sname, quick)
            out[prob.name] = {"batch": int(prob.x_T.shape[0]),
                              "x_T_sum": float(prob.x_T.sum()), "gt_sum": float(prob.gt.sum())}
    return out


def _check_problems(data, quick):
    now = _fingerprints(quick)
    if data["problems"] != now:
        raise SystemExit(f"the cached peer results are for other problems ({data['problems']}"
                         f" vs {now}): rerun the peers (python benchmarks/peers.py)")


# ------------------------------------------------------------------ report


def summary(ours_records, peer_records, pairs=PAIRS) -> list[dict]:
    """Per pair: cells, worst and best ratio with where, cells with ratio > SLACK (and how
    many of them :func:`reasons` finds no reason for), and the largest ``|ratio - 1|``
    (round-off when the two are the same method)."""
    out = []
    for ours, peer in pairs:
        cs = pair_cells(ours_records, peer_records, ours, peer)
        if not cs:
            continue
        alts = ablation_cells(ours_records, peer_records, ours, peer)
        worst = max(cs, key=lambda c: c["ratio"])
        best = min(cs, key=lambda c: c["ratio"])
        out.append({"pair": pair_key(ours, peer), "cells": len(cs), "worst": worst,
                    "best": best, "above": sum(c["ratio"] > SLACK for c in cs),
                    "spread": max(abs(c["ratio"] - 1.0) for c in cs),
                    "unexplained": sum(not why for _, why in reasons(cs, alts))})
    return out


def ablation_cells(ours_records, peer_records, ours: str, peer: str):
    """``(label, cells)`` of every :func:`ablations` variant of ``ours`` against ``peer``
    (:func:`pair_cells`; variants not measured are left out)."""
    out = []
    for label, solver in ablations(ours):
        cs = pair_cells(ours_records, peer_records, solver.name, peer)
        if cs:
            out.append((label, cs))
    return out


def reasons(cs, alts=()) -> list[tuple[dict, list[str]]]:
    """Every cell of one pair above :data:`SLACK`, with the reasons the data give for it
    (an empty list: none found):

    * ``with ...``: one of our rules makes the difference: the :func:`ablations` variant with
      that rule set as the peer sets it (``alts``, from :func:`ablation_cells`) is within
      :data:`SLACK` of the peer at this cell (its ratio is given; what the variant costs
      over all cells is in the pair's table of variants);

    * ``flips``: ours ends more samples in another mode than the peer, and without those
      samples the ratio is within :data:`SLACK`;
    * ``trade-off``: the grid depends on the schedule only, so the other problem runs the
      same coefficients on it; there ours is below ``1 / SLACK`` the peer's RMSE at the same
      NFE. Copying the peer's coefficients on this grid, the sure way to match it here,
      would give that win up;
    * ``peer not monotone``: the peer's own RMSE rises more than 1.10x at the next NFE of
      the table on this problem and grid (its good value here is not kept as the NFE
      grows; our rules are chosen not to jump).
    """
    def key(c):
        return c["problem"], c["schedule"], c["grid"], c["nfe"]

    by = {key(c): c for c in cs}
    alt_by = [(label, {key(d): d for d in alt}) for label, alt in alts]
    nfes = sorted({c["nfe"] for c in cs})
    out = []
    for c in cs:
        if not c["ratio"] > SLACK:
            continue
        why = []
        for label, alt in alt_by:
            a = alt.get(key(c))
            if a is not None and a["ratio"] <= SLACK:
                why.append(f"{label}: {_r(a['ratio'])}")
        o, p = c["ours"], c["peer"]
        if o["flips"] > p["flips"] and _ratio(o["rmse_no_flip"], p["rmse_no_flip"]) <= SLACK:
            why.append(f"flips {o['flips']}/{p['flips']} (without them "
                       f"{_r(_ratio(o['rmse_no_flip'], p['rmse_no_flip']))})")
        for other in (k for k in by if k[1:] == (c["schedule"], c["grid"], c["nfe"])
                      and k[0] != c["problem"]):
            if by[other]["ratio"] < 1.0 / SLACK:
                why.append(f"trade-off: {other[0]} on the same grid and NFE "
                           f"{_r(by[other]['ratio'])}")
        later = [n for n in nfes if n > c["nfe"]]
        nxt = by.get((c["problem"], c["schedule"], c["grid"], later[0])) if later else None
        if nxt is not None and nxt["peer"]["rmse"] > 1.10 * p["rmse"]:
            why.append(f"peer not monotone: its RMSE x{nxt['peer']['rmse'] / p['rmse']:.2f} at "
                       f"NFE {nxt['nfe']}")
        out.append((c, why))
    return out


def _where(c):
    return f"{c['problem']}/{c['schedule']} {c['grid']} NFE {c['nfe']}"


def _e(v):
    return "inf" if not np.isfinite(v) else f"{v:.2e}"


def _r(v):
    return "inf" if not np.isfinite(v) else f"{v:.3f}"


def write_markdown(data, path: pathlib.Path):
    """Summary table, then one table per pair (rows grid x NFE, columns problem/schedule)."""
    ours_records, peer_records = data["ours"], data["peers"]
    meta = data["meta"]
    lines = [
        "# Ours vs the reference implementations (diffusers, k-diffusion)", "",
        "Same exact Gaussian-mixture problems, same x_T, same time grid, same NFE, float64 on "
        "both sides; RMSE against a float64 adaptive solve of the probability-flow ODE "
        "(rtol = atol = 1e-10). ratio = RMSE(ours) / RMSE(peer): below 1 ours is more "
        "accurate. Generated by `python benchmarks/peers.py` (what is overwritten in each "
        "peer, and why: its docstring).", "",
        f"Peers: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. Run time "
        f"(sum over cells, our compilation included, 2 CPU cores): peers "
        f"{sum(r['seconds'] for r in peer_records):.0f} s, ours "
        f"{sum(r['seconds'] for r in ours_records):.0f} s (with the variants of "
        "`ABLATIONS`).", "",
        "## Summary", "",
        f"| pair | cells | worst ratio | where | best ratio | where | cells > {SLACK} | "
        "of them, no reason found | max abs(ratio - 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = summary(ours_records, peer_records)
    for s in rows:
        lines.append(f"| {s['pair']} | {s['cells']} | {_r(s['worst']['ratio'])} | "
                     f"{_where(s['worst'])} | {_r(s['best']['ratio'])} | {_where(s['best'])} | "
                     f"{s['above']} | {s['unexplained']} | {s['spread']:.0e} |")
    lines += ["", "## Peers", ""]
    lines += [f"- `{k}`: {p.description}" for k, p in PEERS.items()]
    lines.append("")
    for ours, peer in PAIRS:
        cs = pair_cells(ours_records, peer_records, ours, peer)
        if not cs:
            continue
        combos = sorted({(c["problem"], c["schedule"]) for c in cs})
        lines += [f"## {pair_key(ours, peer)}", "",
                  "Each cell: ratio, RMSE ours / peer, mode flips ours / peer (when any).", "",
                  "| grid | NFE | " + " | ".join(f"{p}/{s}" for p, s in combos) + " |",
                  "|---|---|" + "---|" * len(combos)]
        by = {(c["grid"], c["nfe"], c["problem"], c["schedule"]): c for c in cs}
        for grid, nfe in sorted({(c["grid"], c["nfe"]) for c in cs},
                                key=lambda k: (GRIDS.index(k[0]), k[1])):
            row = []
            for p, s in combos:
                c = by.get((grid, nfe, p, s))
                if c is None:
                    row.append("—")
                    continue
                text = f"{_r(c['ratio'])} ({_e(c['ours']['rmse'])} / {_e(c['peer']['rmse'])})"
                if c["ours"]["flips"] or c["peer"]["flips"]:
                    text += f" f {c['ours']['flips']}/{c['peer']['flips']}"
                row.append(f"**{text}**" if c["ratio"] > SLACK else text)
            lines.append(f"| {grid} | {nfe} | " + " | ".join(row) + " |")
        lines.append("")
        lines += _reason_lines(cs, ablation_cells(ours_records, peer_records, ours, peer))
    path.write_text("\n".join(lines) + "\n")


def _reason_lines(cs, alts=()) -> list[str]:
    """The cells above :data:`SLACK` of one pair and their reasons (:func:`reasons`), then
    what each variant of ``alts`` would do over all the pair's cells."""
    bad = reasons(cs, alts)
    if not bad:
        return []
    none = sum(not why for _, why in bad)
    lines = [f"Cells above {SLACK} and why ({len(bad)}; no reason found in the data for "
             f"{none}):", "", "| cell | ratio | reason |", "|---|---|---|"]
    for c, why in sorted(bad, key=lambda b: -b[0]["ratio"]):
        lines.append(f"| {_where(c)} | {_r(c['ratio'])} | {'; '.join(why) or 'none found'} |")
    if alts:
        lines += ["", "Our solver as it is and with one rule set as the peer sets it, over all "
                  "cells of the pair (a variant at 1.000 everywhere is the peer's method):", "",
                  f"| variant | geometric mean ratio | worst ratio | where | cells > {SLACK} |",
                  "|---|---|---|---|---|"]
        for label, alt in [("ours as it is", cs), *alts]:
            r = np.array([d["ratio"] for d in alt])
            worst = max(alt, key=lambda d: d["ratio"])
            gmean = np.exp(np.mean(np.log(r))) if np.all(np.isfinite(r) & (r > 0)) else np.inf
            lines.append(f"| {label} | {_r(gmean)} | {_r(worst['ratio'])} | {_where(worst)} | "
                         f"{int(np.sum(r > SLACK))} |")
    return lines + [""]


def plot(data, path: pathlib.Path):
    """Ratio against NFE per pair, one line per grid: the geometric mean over the four
    problem/schedule combinations, shaded between their minimum and maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    pairs = [(o, p) for o, p in PAIRS if pair_cells(data["ours"], data["peers"], o, p)]
    cols = 4
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (ours, peer) in zip(axes.flat, pairs):
        cs = pair_cells(data["ours"], data["peers"], ours, peer)
        for grid in GRIDS:
            nfes = sorted({c["nfe"] for c in cs if c["grid"] == grid})
            if not nfes:
                continue
            r = [np.array([c["ratio"] for c in cs if c["grid"] == grid and c["nfe"] == n])
                 for n in nfes]
            r = [np.clip(v[np.isfinite(v)], 1e-3, 1e3) for v in r]
            mean = [np.exp(np.mean(np.log(v))) if v.size else np.nan for v in r]
            ax.plot(nfes, mean, marker="o", ms=3, label=grid)
            ax.fill_between(nfes, [v.min() if v.size else np.nan for v in r],
                            [v.max() if v.size else np.nan for v in r], alpha=0.15)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()  # at least 0.5..2, so round-off differences stay flat
        lo, hi = min(lo, 0.5), max(hi, 2.0)
        ax.set_ylim(lo, hi)
        ax.set_yticks([v for v in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                       if lo <= v <= hi])
        ax.set_xticks([5, 10, 20, 50])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.ScalarFormatter())
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(pair_key(ours, peer), fontsize=8)
        ax.set_xlabel("NFE", fontsize=8)
        ax.set_ylabel("RMSE ours / peer", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="quarter batches, grids log_snr/quadratic, NFE 5/10/20 "
                        "(results/peers_quick.*)")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--peers-only", action="store_true", help="rerun the peers only")
    side.add_argument("--ours-only", action="store_true",
                      help="rerun our side only; peers from the cached JSON")
    parser.add_argument("--solvers", help="comma-separated names of ours: only the pairs with "
                        "these (their records replace those in the JSON)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    ours_names = sorted({o for o, _ in PAIRS})
    if args.solvers:
        ours_names = args.solvers.split(",")
        unknown = set(ours_names) - {o for o, _ in PAIRS}
        if unknown:
            parser.error(f"--solvers {sorted(unknown)} are in no pair; add them to PAIRS "
                         f"({sorted({o for o, _ in PAIRS})})")
    pairs = [(o, p) for o, p in PAIRS if o in ours_names]
    for ours, peer in pairs:  # plans agree on both sides (raises otherwise)
        cells(ours, peer)
    stem = "peers_quick" if args.quick else "peers"
    path = args.out / f"{stem}.json"
    old = json.loads(path.read_text()) if path.exists() else None
    if args.ours_only:
        if old is None:
            raise SystemExit(f"no cached peer results at {path}: run without --ours-only first")
        _check_problems(old, args.quick)
    problems_now = _fingerprints(args.quick)
    if old is not None and old["problems"] != problems_now:
        print(f"{path} holds other problems: starting afresh")
        old = None
    data = {"meta": old["meta"] if old else {}, "problems": problems_now,
            "peers": old["peers"] if old else [], "ours": old["ours"] if old else []}
    if not args.ours_only:
        libs = available()
        peer_names = sorted({p for _, p in pairs})
        missing = sorted({PEERS[p].library for p in peer_names if not libs[PEERS[p].library]})
        if missing:
            print(f"peers skipped, {', '.join(missing)} not installed; to install: {INSTALL}")
        run = [p for p in peer_names if libs[PEERS[p].library]]
        if run:
            with _torch_threads(1):
                records = measure("peer", run, args.quick)
            data["peers"] = [r for r in data["peers"] if r["peer"] not in run] + records
            data["meta"] = {"versions": versions()}
    if not args.peers_only:
        records = measure("ours", ours_names, args.quick)
        produced = {r["ours"] for r in records}
        data["ours"] = [r for r in data["ours"] if r["ours"] not in produced] + records
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    write_markdown(data, args.out / f"{stem}.md")
    plot(data, args.out / f"{stem}.png")
    done = {s["pair"]: s for s in summary(data["ours"], data["peers"], pairs)}
    for ours, peer in pairs:
        s = done.get(pair_key(ours, peer))
        print(f"{pair_key(ours, peer):45s} " + (
            f"worst {_r(s['worst']['ratio'])} ({_where(s['worst'])}), {s['above']}/"
            f"{s['cells']} cells > {SLACK}" if s else "no cells: the peer's results are "
            "missing (install it and run without --ours-only)"))
    print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
