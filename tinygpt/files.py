"""Atomic file writes: a crash mid-write never leaves a half-written file behind.

A write goes to a temporary ``.NAME.XXXXXXXX.tmp`` beside the file, is fsynced, then renamed
over the file. A write that fails (disk full, permission, a file where a folder should be)
removes its temporary file and raises WriteError, whose message names the file and the
reason. Only SIGKILL or a power cut can leave a temporary file behind: ``remove_stale_temps``
clears those.
"""
import contextlib
import errno
import os
import tempfile
from pathlib import Path


_PROBE = "write-check"  # check_writable's test file: .write-check.XXXXXXXX.tmp


class WriteError(OSError):
    """A file that could not be written; ``str()`` is ``cannot write PATH: REASON``.

    An OSError (``errno``, ``strerror``, ``filename`` as usual), so ``except OSError`` catches it.
    """

    def __init__(self, path, reason, code=None):
        super().__init__(code, reason, str(path))

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def _blocking_file(path):
    """The nearest existing ancestor of ``path`` (or path itself) that is not a folder, or None."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _write_error(path, err):
    """An OSError met while writing ``path`` -> WriteError with a reason a user can act on."""
    if isinstance(err, WriteError):
        return err
    reason = err.strerror or str(err)
    blocking = _blocking_file(Path(path).parent)
    if blocking is not None and err.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = f"{blocking} is a file, not a folder"
    elif err.errno == errno.EISDIR and Path(path).is_dir():
        reason = "it is a folder"
    return WriteError(path, reason, err.errno)


def make_dirs(folder):
    """Create ``folder`` and its parents (if missing); WriteError naming it when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocking = _blocking_file(folder)
        reason = (err.strerror or str(err) if blocking is None else
                  "it is a file, not a folder" if blocking == folder else
                  f"{blocking} is a file, not a folder")
        raise WriteError(folder, reason, err.errno) from None


def check_writable(folder, names=()):
    """Fail early, before any work is done: create ``folder`` if needed, create and remove a
    file in it, and check that none of ``names`` (the files that will be written there) is a
    folder. Raises WriteError naming the folder or the file."""
    folder = Path(folder)
    make_dirs(folder)
    for name in names:
        if (folder / name).is_dir():
            raise WriteError(folder / name, "it is a folder", errno.EISDIR)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{_PROBE}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(folder, err.strerror or str(err), err.errno) from None
    os.close(fd)
    os.unlink(probe)


def temp_files(path):
    """The temporary files that atomic writes of ``path`` leave behind when killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def remove_stale_temps(folder, names):
    """Remove what writes of ``folder/NAME`` (for each of ``names``) and check_writable left
    when killed mid-write. Only for a folder no other process is writing to. Returns the
    paths removed."""
    removed = []
    for name in (*names, _PROBE):
        for tmp in temp_files(Path(folder) / name):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _file_mode():
    """The mode open() gives a new file: 0o666 less the process's umask (which can only be read
    by setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync_folder(folder):
    """fsync a folder so that a rename in it survives a power cut (where the OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write data to path through a temporary file in the same folder, fsync, then rename.

    The file gets the permissions a plain open() would give it (the user's umask). On any
    failure, KeyboardInterrupt included, the temporary file is removed and the file at path is
    left as it was; an OSError comes out as WriteError (``cannot write PATH: REASON``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(f.fileno(), _file_mode())  # mkstemp makes 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _sync_folder(path.parent)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))
