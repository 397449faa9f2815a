"""The ``deis-jax`` command line, in-process through ``main(argv)``."""

import os

import numpy as np
import pytest

from deis_jax.cli import main
from deis_jax.demo import DEMO_GRIDS
from deis_jax.sampling import _run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cb"
    assert main(["train", "--data", "checkerboard", "--steps", "20", "--out", str(out),
                 "--batch-size", "64", "--progress", "none"]) == 0
    return out


def test_train_writes_a_resumable_checkpoint(ckpt, capsys):
    assert sorted(os.listdir(ckpt)) == ["20", "deis_jax_checkpoint.json"]  # + the marker
    # Running again with more steps resumes from step 20.
    compiled = _run._cache_size()
    assert main(["train", "--data", "checkerboard", "--steps", "25", "--out", str(ckpt),
                 "--batch-size", "64", "--progress", "log", "--log-every", "5",
                 "--eval-every", "4"]) == 0
    text = capsys.readouterr().out
    assert "step 25/25" in text and "step 20/25" not in text and "to step 25" in text
    # Periodic evaluation: held-out loss and the energy distance of tab3 samples, at steps 24
    # and 25 with one compiled sampler (the parameters are data).
    assert "eval step=24 test_loss=" in text and "tab3_energy=" in text
    assert "eval step=25 test_loss=" in text and _run._cache_size() - compiled <= 1
    assert main(["train", "--data", "checkerboard", "--steps", "25", "--out", str(ckpt),
                 "--schedule", "ve", "--progress", "none"]) == 2
    assert "different model/schedule/loss" in capsys.readouterr().err


def test_sample_png_and_npz(ckpt, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(ckpt), "--solver", "ddim", "--nfe", "5", "--n", "32",
                 "--out", str(out), "--seed", "3"]) == 0
    assert out.exists() and out.stat().st_size > 1000
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (32, 2) and np.all(np.isfinite(z["samples"]))
        assert str(z["solver"]) == "ddim" and int(z["nfe"]) == 5
    assert main(["sample", "--ckpt", str(ckpt), "--solver", "ddim", "--nfe", "5", "--n", "32",
                 "--out", str(tmp_path / "t.npz"), "--seed", "3"]) == 0
    with np.load(tmp_path / "s.npz") as a, np.load(tmp_path / "t.npz") as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])  # same seed, same samples
    assert "32 samples (ddim, NFE 5" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["demo"], ["bench"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: deis-jax" in capsys.readouterr().out


def test_train_bf16_records_the_precision(tmp_path):
    from deis_jax.training import load_model

    out = tmp_path / "bf16"
    assert main(["train", "--data", "checkerboard", "--steps", "3", "--out", str(out),
                 "--batch-size", "32", "--progress", "none", "--precision", "bf16"]) == 0
    loaded = load_model(out)
    assert loaded.info["spec"].model["dtype"] == "bfloat16"
    assert loaded.network.__self__.dtype == np.dtype("bfloat16")  # rebuilt computing in bf16
    assert main(["sample", "--ckpt", str(out), "--solver", "ddim", "--nfe", "5", "--n", "8",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].dtype == np.float32 and np.all(np.isfinite(z["samples"]))


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "mnist", "--steps", "3", "--out", "x"], "invalid choice: 'mnist'"),
    (["train", "--data", "digits", "--steps", "-3", "--out", "x"], "must be >= 1, got -3"),
    (["train", "--data", "digits", "--steps", "ten", "--out", "x"], "expected an integer"),
    (["train", "--data", "digits", "--steps", "3", "--out", "x", "--lr", "nan"], "finite"),
    (["train", "--data", "digits", "--steps", "3", "--out", "x", "--schedule", "vp"],
     "invalid choice: 'vp'"),
    (["train", "--data", "digits", "--steps", "3", "--out", "x", "--precision", "fp8"],
     "invalid choice: 'fp8'"),
    (["sample", "--ckpt", "x", "--solver", "rk45"], "invalid choice: 'rk45'"),
    (["sample", "--ckpt", "x", "--n", "0"], "must be >= 1"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_runtime_errors(ckpt, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "nope")]) == 2
    assert "no checkpoint directory" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "a.jpg")]) == 2
    assert "must end in .png or .npz" in capsys.readouterr().err
    assert main(["bench", "--root", str(tmp_path)]) == 2
    assert "benchmarks/accuracy.py not found" in capsys.readouterr().err


def test_bench_runs_the_script(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "accuracy.py").write_text(
        "import sys, pathlib; pathlib.Path('ran.txt').write_text(' '.join(sys.argv[1:]))\n")
    assert main(["bench", "--root", str(tmp_path), "--quick"]) == 0
    assert (tmp_path / "ran.txt").read_text() == "--quick"


def test_quick_demo(tmp_path, capsys):
    """``demo --quick``: the shipped models with the five demo solvers at NFE 10, a model
    trained from scratch, both figures and the report with its quality bars."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--train-steps", "30",
                 "--progress", "none"]) == 0
    report = (out / "quality.md").read_text()
    assert "| digits: sampler | grid | NFE |" in report
    assert "| checkerboard: sampler | grid | NFE |" in report
    for name, grid in DEMO_GRIDS.items():
        assert f"| {name} | {grid} | 10 |" in report
    assert "from scratch, 30 steps" in report
    assert report.count("(bar ") == 4
    assert "- digits, tab3 NFE 10: recognised " in report
    assert "- checkerboard, reference: in the squares " in report
    for figure in ("digits.png", "checkerboard.png"):
        assert (out / figure).stat().st_size > 10_000
    assert report.strip() in capsys.readouterr().out


# ------------------------------------------------------------ issue 10, category 3


def _one_error_line(err: str, *needles) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("deis-jax "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("command, out, message", [
    ("train", "{file}/run", "cannot be created: '{file}' is a file"),
    ("train", "{file}", "is a file, not a directory"),
    ("train", "/proc/deis-jax-test/run", "is not writable"),
    ("sample", "{file}/s.png", "cannot be created: '{file}' is a file"),
    ("sample", "{dir}", "is a directory, not a file"),
    ("demo", "{file}", "is a file, not a directory"),
])
def test_output_paths_are_checked_before_any_work(ckpt, tmp_path, capsys, command, out,
                                                  message):
    """A bad --out used to give a traceback (exit 1) -- for train after every step was
    trained, for sample after sampling."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "d.png").mkdir()
    fill = {"file": str(tmp_path / "f"), "dir": str(tmp_path / "d.png")}
    argv = {"train": ["train", "--data", "checkerboard", "--steps", "100000", "--progress",
                      "none"],
            "sample": ["sample", "--ckpt", str(ckpt), "--n", "4", "--nfe", "4"],
            "demo": ["demo", "--train-steps", "100000", "--progress", "none"]}[command]
    assert main([*argv, "--out", out.format(**fill)]) == 2  # in seconds: nothing trained
    captured = capsys.readouterr()
    _one_error_line(captured.err, "--out=", message.format(**fill))
    assert captured.out == ""


@pytest.mark.parametrize("extra, message", [
    (["--loss", "edm", "--prediction", "x0"], "prediction='x0' applies to loss='dsm' only"),
    (["--schedule", "edm", "--weighting", "native"],
     "weighting='native' applies to loss='dsm' only; loss='edm' ignores it"),
    (["--schedule", "flow", "--loss", "flow_matching", "--prediction", "eps"],
     "prediction='eps' applies to loss='dsm' only; loss='flow_matching' ignores it (leave "
     "prediction='velocity'"),
    (["--time-sampling", "logit_normal"],
     "time_sampling='logit_normal' applies to loss='flow_matching' only"),
])
def test_flags_the_loss_ignores_are_refused(tmp_path, capsys, extra, message):
    assert main(["train", "--data", "checkerboard", "--steps", "3", "--progress", "none",
                 "--out", str(tmp_path / "run"), *extra]) == 2
    _one_error_line(capsys.readouterr().err, message)


def test_flow_matching_train_and_sample(tmp_path, capsys):
    """``--schedule flow`` trains a velocity network with the flow-matching loss (the default
    for flow) and records it, so ``sample`` runs it with ``prediction="velocity"``."""
    from deis_jax import training

    out = tmp_path / "flow"
    assert main(["train", "--data", "checkerboard", "--steps", "3", "--out", str(out),
                 "--schedule", "flow", "--time-sampling", "logit_normal", "--batch-size", "32",
                 "--progress", "none"]) == 0
    spec = training.load_model(out).info["spec"]
    assert (spec.loss, spec.prediction, spec.time_sampling) == (
        "flow_matching", "velocity", "logit_normal")
    assert spec.schedule["name"] == "flow"
    assert main(["sample", "--ckpt", str(out), "--solver", "heun", "--nfe", "5", "--n", "8",
                 "--grid", "shifted", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (8, 2) and np.all(np.isfinite(z["samples"]))


def test_resume_below_or_at_the_checkpoint_step_says_so(ckpt, capsys):
    from deis_jax.training import latest_step

    at = latest_step(ckpt)  # 20 or 25, depending on which tests ran before on this worker
    common = ["train", "--data", "checkerboard", "--batch-size", "64", "--progress", "none",
              "--out", str(ckpt)]
    assert main([*common, "--steps", "10"]) == 2
    _one_error_line(capsys.readouterr().err, f"already holds step {at}, beyond steps=10")
    assert main([*common, "--steps", str(at)]) == 0
    assert f"already holds step {at} = --steps: nothing to train" in capsys.readouterr().out
    assert main([*common, "--steps", str(at + 5), "--lr", "1e-3"]) == 2
    _one_error_line(capsys.readouterr().err, "lr: 0.002 in the checkpoint, 0.001 now")


def test_conditional_train_and_guided_sample(ckpt, tmp_path, capsys):
    """``train --conditional`` records the classes and the label dropout; ``sample --label
    --guidance`` runs classifier-free guidance and records both; bad uses exit 2 naming the
    argument."""
    from deis_jax import training

    out = tmp_path / "cond"
    assert main(["train", "--data", "digits", "--conditional", "--label-dropout", "0.2",
                 "--steps", "3", "--batch-size", "16", "--out", str(out),
                 "--progress", "none"]) == 0
    spec = training.load_model(out).info["spec"]
    assert spec.model["num_classes"] == 10 and spec.label_dropout == 0.2
    common = ["sample", "--ckpt", str(out), "--solver", "ddim", "--nfe", "3", "--n", "4"]
    assert main([*common, "--label", "3", "--guidance", "2.0",
                 "--out", str(tmp_path / "g.npz")]) == 0
    assert "label 3, guidance 2" in capsys.readouterr().out
    assert main([*common, "--label", "3", "--out", str(tmp_path / "c.npz")]) == 0
    assert main([*common, "--out", str(tmp_path / "u.npz")]) == 0
    with np.load(tmp_path / "g.npz") as g, np.load(tmp_path / "c.npz") as c, \
            np.load(tmp_path / "u.npz") as u:
        assert int(g["label"]) == 3 and float(g["guidance"]) == 2.0 and "label" not in u
        assert np.all(np.isfinite(g["samples"]))
        # Same x_T: guidance, the label and no label each change the samples.
        assert np.abs(g["samples"] - c["samples"]).max() > 1e-6
        assert np.abs(c["samples"] - u["samples"]).max() > 1e-6
    capsys.readouterr()
    for argv, message in (
            ([*common, "--label", "10"], "label must lie in [0, n_classes) = [0, 10), got "
                                         "label=10"),
            ([*common, "--label", "1", "--guidance", "nan"], "guidance"),
            ([*common, "--guidance", "2"], "guidance=2.0 needs a label"),
            (["sample", "--ckpt", str(ckpt), "--label", "1", "--n", "4", "--nfe", "3"],
             "the model is unconditional"),
            (["train", "--data", "checkerboard", "--conditional", "--steps", "3",
              "--out", str(tmp_path / "cb")], "--data checkerboard has no labels")):
        assert main([*argv, "--out", str(tmp_path / "bad.npz")] if argv[0] == "sample"
                    else argv) == 2
        _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "bad.npz").exists() and not os.listdir(tmp_path / "cb")
    with pytest.raises(SystemExit):
        main(["train", "--data", "digits", "--conditional", "--label-dropout", "1",
              "--steps", "3", "--out", str(tmp_path / "x")])
    assert "must be in [0, 1)" in capsys.readouterr().err
