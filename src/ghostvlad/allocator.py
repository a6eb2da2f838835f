"""glibc malloc settings for CPU inference, set in-process with ``mallopt``.

By default glibc serves blocks over a dynamic threshold with ``mmap`` and gives freed memory at the top of the
heap back to the OS, so every layer of a forward pass maps, faults in and unmaps its large activation buffers
again. Raising the mmap threshold to its maximum (32 MiB) and the trim threshold to 2 GiB keeps that memory in
the process instead (measured in bench/embed.py; README "Speed"). Only CPU inference sets this (it is
process-wide): training ranks and their data workers keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process (Linux with glibc; not when ``GHOSTVLAD_NO_MALLOPT`` is set).

    Returns whether they are in effect.
    """
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("GHOSTVLAD_NO_MALLOPT"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
