"""Small file helpers shared by everything that writes results: atomic writes."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The temporary file lives in the same directory (same filesystem, so the rename is atomic) and is
    removed if ``write`` fails or the process is interrupted before the rename. The file gets the mode an
    ordinary ``open`` would give it (0666 less the umask), not the temporary's private 0600. An ``OSError``
    (read-only folder, full disk, a file where a folder is expected) is raised naming ``path``, not the temporary.
    A symbolic link is written through (its target is replaced); a device, FIFO or socket at ``path`` is refused.
    """
    path = Path(os.path.realpath(path))
    tmp = None
    try:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a folder fails at the rename
            raise OSError(errno.EEXIST, "exists and is not a regular file (a device, FIFO or socket)", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8; file names that are not UTF-8 (surrogate escapes) are written as their own bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))
