"""libespeak-ng through ctypes: waveform synthesis and IPA, each call with the library loaded afresh.

The C library keeps state between calls (random generator, voice, phoneme buffers), so every call loads,
initialises, terminates and unloads it: the result of a call then depends on its arguments alone. Not thread-safe.

The library comes from the ``espeakng-loader`` package (the ``synth`` extra); without it every call raises
:class:`EspeakUnavailable`, and the rest of ghostvlad works as usual.
"""

from __future__ import annotations

import _ctypes
import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import GhostvladError

RATE = 22050  # espeak-ng's fixed output rate

_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []
_LIBC = ctypes.CDLL(None)
_LIBC.srand.argtypes = [ctypes.c_uint]


class EspeakUnavailable(GhostvladError):
    """espeak-ng is not installed (the ``espeakng-loader`` package)."""


def _loader() -> ModuleType:
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakUnavailable("espeak-ng is not installed: pip install 'ghostvlad[synth]' "
                                "(the espeakng-loader package)") from None
    return espeakng_loader


def library_version() -> str:
    """The installed ``espeakng-loader`` version (:class:`EspeakUnavailable` without it)."""
    _loader()
    return version("espeakng-loader")


@_CALLBACK_TYPE
def _collect(wav: Any, n: int, _events: Any) -> int:
    if n > 0:
        _chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
    return 0


@contextmanager
def _library() -> Iterator[ctypes.CDLL]:
    """libespeak-ng loaded and initialised (synchronous output); terminated and unloaded on exit."""
    espeakng_loader = _loader()
    path = espeakng_loader.get_library_path()
    lib = ctypes.CDLL(path)
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if rate != RATE:
            raise RuntimeError(f"{path}: espeak_Initialize returned {rate}, expected {RATE} Hz")
        try:
            yield lib
        finally:
            lib.espeak_Terminate()
    finally:
        _ctypes.dlclose(lib._handle)


def synthesize(text: str, voice: str, pitch: int, pitch_range: int, rate: int, seed: int) -> np.ndarray:
    """int16 samples at :data:`RATE` of ``text`` in espeak-ng voice ``voice`` (e.g. ``en+m3``) with espeak's
    pitch and range (0-100) and rate (words/min); ``seed`` seeds espeak's and libc's generators."""
    with _library() as lib:
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        try:
            lib.espeak_SetSynthCallback(_collect)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice!r}")
            for key, value in ((3, pitch), (4, pitch_range), (1, rate)):  # espeakPITCH, espeakRANGE, espeakRATE
                lib.espeak_SetParameter(key, value, 0)
            lib.espeak_ng_SetRandSeed(seed)
            _LIBC.srand(seed)  # klatt voices draw their noise from libc's rand(), outside espeak's own state
            data = text.encode() + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for voice {voice!r}")
            return np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        finally:
            _chunks.clear()


def phonemes(clauses: list[str], language: str) -> list[str]:
    """espeak-ng IPA of each clause in ``language`` (an espeak-ng voice name such as ``en-us``)."""
    with _library() as lib:
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if lib.espeak_SetVoiceByName(language.encode()) != 0:
            raise ValueError(f"espeak-ng has no language {language!r}")
        out = []
        for clause in clauses:
            buffer = ctypes.create_string_buffer(clause.encode())
            pointer = ctypes.c_void_p(ctypes.addressof(buffer))
            parts = []
            while pointer.value:  # espeak consumes one clause per call and advances the pointer
                parts.append(lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, 2).decode())  # UTF8, IPA
            out.append(" ".join(parts))
        return out
