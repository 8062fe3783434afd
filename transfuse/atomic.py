"""The one way transfuse writes a file: to a temporary name beside it, then a rename.

A crash, a kill or a full disk never leaves a half-written file under the real name, and a failed
write removes its temporary. Every writer in the package goes through :func:`atomic_write`
(checkpoints, predictions, reports, exports, stored run files), so the leftover-file checks
(``transfuse runs check``, the run's clean-up) need to know one pattern: ``*.tmp``.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "write_bytes", "write_text", "promote"]


def atomic_write(path: str | Path, write: Callable[[Path], None], *, suffix: str = ".tmp",
                 unique: bool = False, fsync: bool = False) -> Path:
    """``write(tmp)``, then rename ``tmp`` onto ``path``; returns ``path``.

    Args:
        path: the file to write (its folder is created).
        write: writes the whole content to the path it is given.
        suffix: the temporary's suffix after ``path``'s name (``model.onnx.tmp``); a writer that
            picks its format from the extension asks for one that keeps it (``.tmp.nii.gz``).
        unique: a temporary name of its own (``name.XXXX.tmp``) for files that several processes
            may write at once; the last rename wins and each is whole.
        fsync: flush the temporary to disk before the rename (the run store's files).

    Raises:
        OSError: the write failed; the temporary is gone. torch reports a full disk as a
            ``RuntimeError``: it becomes the ``OSError`` (``ENOSPC``) it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unique:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(path.name + suffix)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if unique:
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
        return path
    except BaseException as e:
        if not isinstance(e, RuntimeError):
            tmp.unlink(missing_ok=True)
            raise
        full = tmp.exists() and shutil.disk_usage(tmp.parent).free < 1 << 20
    # Outside the except block: torch's half-closed writer (referenced by the RuntimeError's
    # traceback) is released first, so unlinking really frees the space.
    gc.collect()
    tmp.unlink(missing_ok=True)
    code = errno.ENOSPC if full else errno.EIO
    raise OSError(code, os.strerror(code), str(path))


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def promote(pending: str | Path, path: str | Path) -> Path:
    """Rename ``pending``, a whole file that :func:`atomic_write` wrote under a name of its own,
    onto ``path``: the second half of a commit of several files (each written first, then each
    promoted; :func:`transfuse.train.resume.save_cohort_resume`)."""
    os.replace(pending, path)
    return Path(path)
