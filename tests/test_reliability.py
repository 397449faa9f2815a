"""No silent wrong answer on a path the docs show (issue 31): each case failed silently
before, with the reason in its docstring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deis_jax import as_model, sample, schedules, testing, timesteps
from deis_jax.conditioning import inpaint, measure
from deis_jax.guidance import classifier_guidance
from deis_jax.inversion import slerp

VP = schedules.vp_linear()
MODEL = as_model(testing.ring_mixture().eps_fn(VP), VP)


def test_classifier_guidance_with_a_label_past_the_logits_raises():
    """The gather of an out-of-range label was clipped or filled with a constant, whose
    gradient is 0: the "guided" samples were bitwise the unguided ones."""
    logits = lambda p, x, t: jnp.stack([x[:, 0], -x[:, 0]], -1)  # noqa: E731 -- 2 classes
    x_T = VP.prior_sample(jax.random.key(0), (4, 2))
    guided = sample(classifier_guidance(MODEL, logits, 1.0, label=1), x_T, nfe=5)
    assert not np.allclose(guided, sample(MODEL, x_T, nfe=5))
    with pytest.raises(FloatingPointError, match="non-finite"):
        sample(classifier_guidance(MODEL, logits, 1.0, label=2), x_T, nfe=5)


def test_unchecked_sampling_does_not_report_no_nonfinite_step():
    """With check_finite=False nothing was checked, yet nonfinite_step read -1 ("none") while
    the output was NaN."""
    bad = as_model(lambda x, t: x * jnp.nan, VP)
    out = sample(bad, jnp.ones((2, 2)), nfe=4, full_output=True, check_finite=False)
    assert out.nonfinite_step is None and not np.all(np.isfinite(out.x))
    checked = sample(MODEL, jnp.ones((2, 2)), nfe=4, full_output=True)
    assert int(checked.nonfinite_step) == -1


def test_slerp_of_a_zero_latent_is_linear_not_nan():
    """The angle was 0/0 for a zero latent."""
    z = slerp(jnp.zeros((2, 3)), jnp.ones((2, 3)), 0.25)
    np.testing.assert_allclose(z, 0.25 * np.ones((2, 3)))


def test_shifted_grid_on_a_shifted_flow_schedule_is_not_shifted_twice():
    """flow(shift=3) already shifts its time; the "shifted" grid (default shift 3) shifted it
    again, so its noise levels were SD3's shift 9."""
    f3 = schedules.flow(shift=3.0)
    np.testing.assert_allclose(timesteps(f3, 8, "shifted"), timesteps(f3, 8, "uniform"),
                               rtol=1e-6)
    f1 = schedules.flow()
    # the noise levels of flow(3)'s "shifted" grid with shift 6: SD3's shift 6 of uniform t
    np.testing.assert_allclose(f3.sigma(timesteps(f3, 8, "shifted", shift=6.0)),
                               f1.sigma(timesteps(f1, 8, "shifted", shift=6.0,
                                                  t_min=float(f3.sigma(f3.t_min)),
                                                  t_max=float(f3.sigma(f3.t_max)))),
                               rtol=1e-5)


def test_conditioning_inputs_are_compared_with_x_T_before_tracing():
    """A y of another batch, or a matrix for another channel count, failed inside the traced
    hook with a shape error that named the hook, not y or matrix."""
    x_T = VP.prior_sample(jax.random.key(0), (4, 2, 3))
    key = jax.random.key(1)
    model = as_model(lambda x, t: 0.5 * x, VP)
    with pytest.raises(ValueError, match=r"y must have x_T's shape \(4, 2, 3\).*\(3, 2, 3\)"):
        inpaint(model, x_T, jnp.ones((3, 2, 3)), jnp.ones((2, 3)), key=key, nfe=5)
    with pytest.raises(ValueError, match=r"matrix of shape \(1, 2\).*must have 3 columns"):
        measure(model, x_T, jnp.ones((4, 2, 1)), jnp.ones((1, 2)) / 2, key=key, nfe=5)
    with pytest.raises(ValueError, match=r"y must have x_T's shape .* i.e. \(4, 2, 1\)"):
        measure(model, x_T, jnp.ones((4, 1, 1)), jnp.ones((1, 3)) / 3, key=key, nfe=5)
    assert measure(model, x_T, jnp.ones((4, 2, 1)), jnp.ones((1, 3)) / 3, key=key,
                   nfe=5).shape == x_T.shape


def test_unclear_inputs_get_one_line_naming_them(tmp_path):
    """Raw errors from inside msgpack, the solver or the metrics before."""
    import shutil

    from deis_jax import pretrained
    from deis_jax.inversion import encode, reconstruction_error
    from deis_jax.learned_grids import teacher_samples

    with pytest.raises(ValueError, match="n_modes must be an int >= 1"):
        testing.ring_mixture(0)
    with pytest.raises(ValueError, match="at least 2 samples on each side"):
        testing.energy_distance(jnp.zeros((0, 2)), jnp.ones((5, 2)))
    x = jnp.ones((2, 2)).at[0, 0].set(jnp.nan)
    for call in (lambda: encode(MODEL, x, nfe=4), lambda: reconstruction_error(MODEL, x, nfe=4)):
        with pytest.raises(ValueError, match=r"^x contains 1 non-finite"):
            call()
    with pytest.raises(ValueError, match=r"a teacher is a deterministic solve.*'ddpm'"):
        teacher_samples(MODEL, jnp.ones((2, 2)), teacher=("ddpm", 20))
    for name in ("two_moons.json", "two_moons.msgpack"):
        shutil.copy(f"{pretrained.ASSET_DIR}/{name}", tmp_path / name)
    data = (tmp_path / "two_moons.msgpack").read_bytes()
    (tmp_path / "two_moons.msgpack").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"two_moons.msgpack is not a readable parameter file"):
        pretrained.load("two_moons", directory=str(tmp_path))
    shutil.copy(f"{pretrained.ASSET_DIR}/pinwheel.msgpack", tmp_path / "two_moons.msgpack")
    pretrained.load("two_moons", directory=str(tmp_path))  # same network: loads
    shutil.copy(f"{pretrained.ASSET_DIR}/digits.msgpack", tmp_path / "two_moons.msgpack")
    with pytest.raises(ValueError, match=r"two_moons.msgpack holds parameters of another "
                                         r"network than its record's spec"):
        pretrained.load("two_moons", directory=str(tmp_path))


def test_checkpoint_fallback_reasons_carry_no_python_reprs():
    """TensorStore's messages quote bound-method reprs, which filled every fallback warning."""
    from deis_jax.training.checkpoint import _reason

    err = ValueError("OUT_OF_RANGE: Error reading 'a.zarray' <bound method pybind11_detail_"
                     "function_record.f of <tensorstore.Spec object at 0x7f3a2b>> in OCDBT")
    assert _reason(err) == "ValueError: OUT_OF_RANGE: Error reading 'a.zarray' in OCDBT"
