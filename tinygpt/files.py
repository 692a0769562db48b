"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""
import os
import tempfile
from pathlib import Path


def _file_mode():
    """The mode open() gives a new file: 0o666 less the process's umask (which can only be read
    by setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path, data):
    """Write data to path through a temporary file in the same folder, fsync, then rename.
    The file gets the permissions a plain open() would give it (the user's umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, _file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))
