"""The library behind the CLI: model presets, sample scores, the quality table and plots."""

import numpy as np
import pytest

from deis_jax import plots
from deis_jax.evaluate import quality_table, sample_quality_eval, score_samples
from deis_jax.training import (
    array_dataset, default_batch_size, default_spec, load_dataset, schedule_from_dict)

POINTS = load_dataset("checkerboard", n_train=64, n_test=64)
DIGITS = load_dataset("digits")
ROWS = [
    {"solver": "reference (adaptive Tsit5 tol 1e-05, NFE 121)", "nfe": None, "metric": 0.0016,
     "ratio": 1.0, "recognised": 0.954, "seconds": 2.0},
    {"solver": "tab3", "nfe": 10, "metric": 0.002437, "ratio": 1.5231, "recognised": 0.94,
     "seconds": 0.5},
]


def test_quality_table_for_points():
    rows = [{**r, "recognised": None} for r in ROWS]
    assert quality_table("two_moons", "points", rows) == "\n".join([
        "| two_moons: sampler | NFE | energy distance | / reference |",
        "|---|---:|---:|---:|",
        "| reference (adaptive Tsit5 tol 1e-05, NFE 121) | - | 0.0016 | 1.00 |",
        "| tab3 | 10 | 0.002437 | 1.52 |",
    ])


def test_quality_table_with_grids_and_the_checkerboard_fraction():
    rows = [ROWS[0], {**ROWS[1], "grid": "log_snr"}]
    assert quality_table("checkerboard", "points", rows).splitlines() == [
        "| checkerboard: sampler | grid | NFE | energy distance | / reference | in the squares |",
        "|---|---|---:|---:|---:|---:|",
        "| reference (adaptive Tsit5 tol 1e-05, NFE 121) | - | - | 0.0016 | 1.00 | 95.4% |",
        "| tab3 | log_snr | 10 | 0.002437 | 1.52 | 94.0% |",
    ]


def test_quality_table_for_images_adds_recognised_digits():
    lines = quality_table("digits", "images", ROWS).splitlines()
    assert lines[0] == ("| digits: sampler | NFE | Frechet distance (classifier features) | "
                        "/ reference | recognised digits |")
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[3] == "| tab3 | 10 | 0.002437 | 1.52 | 94.0% |"


def test_quality_table_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown kind='audio'; valid choices: \['images'"):
        quality_table("x", "audio", ROWS)


def test_score_samples():
    metric, fraction = score_samples(POINTS.test, POINTS)
    assert fraction == 1.0 and 0 <= metric < 1e-6  # a set against itself
    moons = load_dataset("two_moons", n_train=64, n_test=64)
    assert score_samples(moons.test, moons)[1] is None
    faces = array_dataset(np.zeros((10, 8, 8, 1), np.float32), name="faces")
    with pytest.raises(ValueError, match="data.name='faces'"):
        score_samples(faces.test, faces)


def test_sample_quality_eval_checks_its_arguments():
    spec = default_spec(POINTS)
    with pytest.raises(ValueError, match="solver"):
        sample_quality_eval(spec, POINTS, solver="rk45")
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_quality_eval(spec, POINTS, n=0)


@pytest.mark.parametrize("schedule,loss,time_scale", [
    ("vp_linear", "dsm", 1000.0), ("edm", "edm", 1000.0), ("vp_discrete", "ddpm", 1.0)])
def test_default_spec_loss_follows_the_schedule(schedule, loss, time_scale):
    spec = default_spec(POINTS, schedule)
    assert spec.loss == loss and spec.model["time_scale"] == time_scale
    assert spec.model["name"] == "mlp" and spec.data == {
        "name": "checkerboard", "shape": [2], "kind": "points"}
    assert schedule_from_dict(spec.schedule).name == schedule


def test_default_spec_and_batch_size_by_dataset_and_size():
    assert default_spec(DIGITS, size="base").model["channels"] == [32, 64]
    assert default_spec(POINTS, size="base").model["hidden"] == 256
    assert (default_batch_size(POINTS), default_batch_size(DIGITS)) == (512, 128)
    with pytest.raises(ValueError, match=r"unknown size='huge'"):
        default_spec(POINTS, size="huge")
    with pytest.raises(ValueError, match=r"unknown schedule='vp'"):
        default_spec(POINTS, "vp")


def test_image_grid_tiles_with_gaps():
    images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = plots.image_grid(images, cols=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
    np.testing.assert_array_equal(grid[1:3, 1:4], 0.0)   # -1 -> blank
    np.testing.assert_array_equal(grid[1:3, 5:8], 0.5)
    np.testing.assert_array_equal(grid[4:6, 1:4], 1.0)   # +1 -> ink
    assert grid[0].max() == grid[:, 4].max() == 0.0       # gaps


def test_plots_write_pngs(tmp_path):
    plots.save_samples(tmp_path / "points.png", POINTS.test, "points")
    plots.save_samples(tmp_path / "digits.png", DIGITS.test[:20], "digits")
    plots.save_comparison(tmp_path / "both.png", [
        {"held-out": POINTS.test, "again": POINTS.test}, {"digits": DIGITS.test[:64]}])
    for name in ("points", "digits", "both"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
