"""No file lost: atomic writes (a failure or a kill mid-write leaves the old file whole) and one
writer per checkpoint directory (a second training run is refused; no save replaces a step it
did not write)."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import deis_jax._files
from deis_jax import schedules
from deis_jax._files import atomic_write
from deis_jax.cli import main
from deis_jax.grid_files import load_grid, save_grid
from deis_jax.training import (
    DiffusionSpec, TrainConfig, array_dataset, checkpoint_manager, fit, latest_step, load_model,
    save_checkpoint, schedule_to_dict)
from deis_jax.training.checkpoint import LOCK, LockedError, writer_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = "the old content\n"


class Boom(Exception):
    pass


def _raise(err):
    def fail(*args, **kwargs):
        raise err

    return fail


def _old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text(OLD)
    os.chmod(path, 0o640)
    return path


def test_atomic_write_replaces_the_file(tmp_path):
    path = _old_file(tmp_path)
    with atomic_write(path) as f:
        f.write("new")
        assert path.read_text() == OLD  # nothing visible until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)  # permissions kept
    with atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"), atomic_write(path, "a"):
        pass


@pytest.mark.parametrize("where", ["body", "interrupt", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch, where):
    path = _old_file(tmp_path)
    err = KeyboardInterrupt if where == "interrupt" else Boom
    if where in ("fsync", "replace"):
        monkeypatch.setattr(deis_jax._files.os, where, _raise(Boom("disk full")))
    with pytest.raises(err), atomic_write(path) as f:
        f.write("half of the new")
        if where in ("body", "interrupt"):
            raise err()
        f.write(" content")
    monkeypatch.undo()
    assert path.read_text() == OLD and os.listdir(tmp_path) == ["f.txt"]  # no temporary file
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.txt") as f:
        f.write("x")  # a new file is not created either
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["f.txt"]


def _grid(path, ts):
    return save_grid(path, np.asarray(ts), schedule=schedules.vp_linear(), solver="tab3", nfe=5)


OLD_TS = [1.0, 0.5, 0.2, 0.05, 0.01, 0.001]
NEW_TS = [1.0, 0.6, 0.3, 0.1, 0.02, 0.001]


def test_an_interrupted_save_grid_keeps_the_old_grid(tmp_path, monkeypatch):
    path = tmp_path / "grid.json"
    _grid(path, OLD_TS)

    class HalfThenInterrupt:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(deis_jax._files, "open",
                        lambda *args, **kwargs: HalfThenInterrupt(open(*args, **kwargs)),
                        raising=False)
    with pytest.raises(KeyboardInterrupt):
        _grid(path, NEW_TS)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_grid(path).ts, OLD_TS)
    assert os.listdir(tmp_path) == ["grid.json"]


# The child writes half of the grid file, says so, and sleeps: the parent kills it there. It
# patches the builtin ``open`` (not deis_jax's writer), so the test also catches a writer that
# truncates the file in place.
_SLOW_WRITER = """
import builtins, sys, time
import numpy as np
from deis_jax import schedules
from deis_jax.grid_files import save_grid

real_open = builtins.open

class Slow:
    def __init__(self, f):
        self.f = f
    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        print("mid-write", flush=True)
        time.sleep(120)
        return self.f.write(text[len(text) // 2:])
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

def slow_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Slow(f) if "w" in mode else f

builtins.open = slow_open
save_grid(sys.argv[1], np.asarray({ts!r}), schedule=schedules.vp_linear(), solver="tab3",
          nfe=5)
""".replace("{ts!r}", repr(NEW_TS))


def _readline(proc, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the child said nothing in {timeout}s"
    return proc.stdout.readline()


def test_a_killed_grid_write_leaves_the_previous_file_readable(tmp_path):
    path = tmp_path / "grid.json"
    _grid(path, OLD_TS)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert _readline(proc, 120).strip() == "mid-write"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(timeout=30)
    grid = load_grid(path)
    np.testing.assert_array_equal(grid.ts, OLD_TS)
    assert grid.metadata["solver"] == "tab3"


def test_one_writer_per_checkpoint_directory(tmp_path):
    ckpt = tmp_path / "run"
    with writer_lock(ckpt) as held:
        record = json.loads((ckpt / LOCK).read_text())
        assert held == str(ckpt) and record["pid"] == os.getpid()
        refused = re.escape(f"ckpt_dir='{ckpt}'") + rf" .*\(pid {os.getpid()} on "
        with pytest.raises(LockedError, match=refused), writer_lock(ckpt):
            pass
    assert not (ckpt / LOCK).exists()  # removed on release
    # A lock file left by a dead process (SIGKILL) holds no flock: it is taken over.
    (ckpt / LOCK).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with writer_lock(ckpt):
        assert json.loads((ckpt / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(LockedError), writer_lock(ckpt), writer_lock(ckpt):
        pass  # the first lock is released when the run raises, too
    with writer_lock(ckpt):
        pass


SPEC = DiffusionSpec(model={"name": "mlp", "hidden": 16, "depth": 1},
                     schedule=schedule_to_dict(schedules.vp_linear()),
                     data={"name": "blob", "shape": [2], "kind": "points"})


def test_a_save_never_replaces_a_step_it_did_not_write(tmp_path):
    rng = np.random.default_rng(0)
    data = array_dataset(rng.standard_normal((64, 2)), test_fraction=0.25)
    state = fit(SPEC, data, TrainConfig(steps=3, batch_size=8), ckpt_dir=tmp_path,
                progress="none").state
    assert latest_step(tmp_path) == 3  # the lock file is not a step
    manager = checkpoint_manager(tmp_path)
    try:
        # Step 4 written by another run after this manager was opened: orbax would delete it.
        os.makedirs(tmp_path / "4")
        (tmp_path / "4" / "theirs").write_text("x")
        with pytest.raises(ValueError, match="already holds that step"):
            save_checkpoint(manager, state._replace(step=jnp.int32(4)), SPEC)
        assert (tmp_path / "4" / "theirs").read_text() == "x"
        with pytest.raises(ValueError, match="already holds that step"):
            save_checkpoint(manager, state, SPEC)  # step 3, known to the manager
        with pytest.raises(ValueError, match="declined"):  # older than its newest: not silent
            save_checkpoint(manager, state._replace(step=jnp.int32(2)), SPEC)
    finally:
        manager.close()
    assert load_model(tmp_path, step=3).info["step"] == 3


def _holds_lock(directory) -> bool:
    try:
        return bool((directory / LOCK).read_text())  # written once the flock is taken
    except FileNotFoundError:
        return False


def test_a_second_training_run_on_one_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "cb"
    argv = ["train", "--data", "checkerboard", "--steps", "500", "--out", str(out),
            "--batch-size", "8", "--log-every", "100", "--progress", "none"]
    first = subprocess.Popen([sys.executable, "-m", "deis_jax.cli", *argv], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _holds_lock(out):
            assert first.poll() is None, first.communicate(timeout=30)
            assert time.monotonic() < deadline, "the first run took no lock in 120 s"
            time.sleep(0.05)
        assert main(argv) == 2
        assert first.poll() is None  # refused while the first one trains
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("deis-jax train: error:")
        assert f"ckpt_dir='{out}'" in err and f"pid {first.pid} on" in err
        stdout, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == 0, stderr
    assert "to step 500" in stdout
    assert sorted(os.listdir(out)) == ["500", "deis_jax_checkpoint.json"]
    model = load_model(out)
    assert model.info["step"] == 500 and model.info["meta"]["config"]["batch_size"] == 8
