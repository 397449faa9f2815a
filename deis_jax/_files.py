"""Atomic file writes: a file we write is either the old one or the complete new one.

:func:`atomic_write` writes to a temporary file next to the target, flushes and ``fsync``\\ s
it, then renames it over the target with ``os.replace`` (atomic on POSIX and Windows within
one file system) and ``fsync``\\ s the directory so that the rename survives a power cut. An
exception in the middle (``KeyboardInterrupt`` included, a full disk, a failing
serialiser) removes the temporary file and leaves the old file untouched; a process killed
outright (SIGKILL) leaves the old file untouched and, at worst, a hidden ``.<name>.*.tmp``
beside it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from deis_jax._checks import check_choice

__all__ = ["atomic_write"]

_MODES = ("w", "wb")


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """Open ``path`` for writing so that it is replaced only when the ``with`` block succeeds.

    Args:
      path: the file to (re)write; its directory must exist. A symbolic link is followed
        (its target is replaced). The new file keeps the old one's permissions, or gets the
        usual ``0o666 & ~umask`` when new.
      mode: ``"w"`` (text) or ``"wb"`` (binary).
      **open_kwargs: passed to ``open`` (e.g. ``encoding``).

    Yields:
      The open temporary file.

    Example::

        with atomic_write("grid.json") as f:
            f.write(text)
    """
    check_choice("mode", mode, _MODES)
    path = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _file_mode(path: str) -> int:
    """The permissions of the existing ``path``, else those ``open`` would give a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (not possible everywhere: e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
