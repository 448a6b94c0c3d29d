"""Atomic file writes and guarded reads, shared by the backend's workspace and the add-on's exports."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path

# mkstemp creates files readable by the owner only; a finished file should get the permissions
# any other new file gets (an archived PLY on a shared drive, say). Read once: umask() sets it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM until the block ends (POSIX main thread): a cancel that lands between
    creating the temp file and renaming it would otherwise leave the temp file behind."""
    can_block = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    held = {signal.SIGINT, signal.SIGTERM}
    if can_block:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        if can_block:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # a held signal is delivered now


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_held():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def _require_regular_file(path: Path, error: type[Exception], what: str) -> None:
    """A FIFO or a device would block or never end: only regular files are read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{path} is not a regular file; give the path of {what}")


def open_regular_file(path, error: type[Exception], what: str):
    """Open a regular file for binary reading; anything else (missing, a folder, a FIFO, a device)
    raises `error` with one line. `what` names what was wanted ("a .ply file")."""
    path = Path(path)
    try:
        _require_regular_file(path, error, what)
        return open(path, "rb")
    except OSError as e:
        raise error(f"cannot open {path}: {e.strerror}") from None


def read_regular_file(path, error: type[Exception], what: str) -> bytes:
    """The bytes of a regular file, with the same one-line errors as `open_regular_file`."""
    path = Path(path)
    try:
        _require_regular_file(path, error, what)
        return path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
