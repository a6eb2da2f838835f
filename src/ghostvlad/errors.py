"""The package's error root and the one-line rendering of any error.

Every exception class ghostvlad defines (bad audio, model files, configs, galleries, metrics, windows, a full
serving queue, ...) derives from :class:`GhostvladError`, whose message is one line naming the item and the
problem (tests/test_presentation.py holds this for every module). The CLI catches it (and ``OSError`` for paths it
cannot read or write) and prints that line; a bare ``ValueError`` or any other exception is a bug.
"""
from __future__ import annotations

import os


class GhostvladError(ValueError):
    """Bad input of any kind, reported as one line (``path: reason``). A ``ValueError``, as before."""


def one_line(text: object) -> str:
    """``text`` as a single printable line: whitespace runs collapsed, undecodable file-name bytes escaped."""
    try:
        text = " ".join(str(text).split())
        try:  # bytes of a name that is not UTF-8 (surrogate escapes) shown as \xNN
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = text.encode("utf-8", "backslashreplace")
        return data.decode("utf-8", "backslashreplace")
    except Exception:  # noqa: BLE001 - formatting an error must never fail
        return repr(text)


def describe(exc: BaseException) -> str:
    """One line for ``exc`` that never fails: ``path: reason`` for OS errors, the message for ours, else
    ``Type: message`` (the type alone when the message is empty)."""
    try:
        if isinstance(exc, OSError) and exc.strerror:
            names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None]
            return one_line(f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror)
        message = one_line(exc)
        if isinstance(exc, GhostvladError) and message:
            return message
        return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    except Exception:  # noqa: BLE001
        return type(exc).__name__
